"""What the domain knows of each outbound channel, as plain data: how its addresses are shown,
which statement it carries and which rendered bodies it reads.

Each channel module declares these facts with its adapter (``bot/channels/spec.py``); the
channel registry (``bot/channels/registry.py``) registers them here when it is imported, which
the configuration does before anything is planned, masked or rendered. The domain reads the
facts through this table and never imports an adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from bot.domain.models import ChannelName, StatementKind, note_channel, registered_names

__all__ = [
    "BASE_FORMATS",
    "ChannelFacts",
    "all_facts",
    "facts_for",
    "message_formats",
    "register_facts",
    "registered_names",
    "unregister_facts",
]

# The bodies every statement (but the short ``sms`` one) is rendered in, whatever the
# channels: a subject line, plain text and HTML. Channels may add their own (``slack``…).
BASE_FORMATS = ("subject", "text", "html")


@dataclass(frozen=True)
class ChannelFacts:
    """One channel as the domain sees it.

    ``mask`` shows a member's personal address of this channel (None: shown as is);
    ``mask_always`` masks every address, not only members' (a webhook URL's path is a
    secret); ``statement_kind`` is the statement every delivery on this channel carries
    whatever the audience's (SMS: the short ``sms`` one); ``formats`` are the rendered bodies
    the adapter reads, so the templates folder must offer them."""

    name: ChannelName
    formats: tuple[str, ...]
    mask: Callable[[str], str] | None = None
    mask_always: bool = False
    statement_kind: StatementKind | None = None


_FACTS: dict[str, ChannelFacts] = {}


def register_facts(facts: ChannelFacts) -> None:
    """Make a channel known to the domain (again: the newer declaration wins)."""
    _FACTS[str(facts.name)] = facts
    note_channel(facts.name)


def unregister_facts(name: str) -> None:
    """Forget a channel (a test's own channel, once the test is over)."""
    _FACTS.pop(str(name), None)
    note_channel(name, known=False)


def _table() -> Mapping[str, ChannelFacts]:
    if not _FACTS:
        raise LookupError("no channel is registered: import bot.channels.registry first")
    return _FACTS


def facts_for(name: str) -> ChannelFacts:
    """The facts of a registered channel; LookupError names an unknown one."""
    facts = _table().get(str(name))
    if facts is None:
        raise LookupError(f"unknown channel {name!r}")
    return facts


def all_facts() -> Iterator[ChannelFacts]:
    return iter(tuple(_table().values()))


def message_formats() -> tuple[str, ...]:
    """The bodies a statement other than ``sms`` is rendered in: the base ones, then each
    channel's own, in registration order."""
    found = list(BASE_FORMATS)
    for facts in all_facts():
        if facts.statement_kind is None:
            found += [fmt for fmt in facts.formats if fmt not in found]
    return tuple(found)
