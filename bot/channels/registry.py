"""The channels Tocsin knows: one line per channel module, plus any another package declares
under the ``tocsin.channels`` entry point group (its value: a :class:`ChannelSpec`).

Importing this module makes the channels known to the domain (masking, audiences,
rendering), and the configuration reads it for the ``channels:`` section, destination keys and
member keys. ``build_channels`` builds one adapter per configured channel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from bot.channels import email, slack, sms, telegram_spec, webhook
from bot.channels.spec import ChannelSpec, RateLimits
from bot.domain.channel_facts import register_facts, unregister_facts
from bot.domain.models import ChannelName
from bot.ports import Channel

if TYPE_CHECKING:
    import aiohttp

    from bot.channels.spec import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tocsin.channels"

BUILT_IN: tuple[ChannelSpec[Any], ...] = (
    slack.SPEC,
    telegram_spec.SPEC,
    sms.SPEC,
    email.SPEC,
    webhook.SPEC,
)

_SPECS: dict[str, ChannelSpec[Any]] = {}


def register(spec: ChannelSpec[Any]) -> None:
    """Add a channel (or replace the one of the same name)."""
    _SPECS[str(spec.name)] = spec
    register_facts(spec.facts)


def unregister(name: str) -> None:
    """Remove a channel added by :func:`register`."""
    _SPECS.pop(str(name), None)
    unregister_facts(name)


@contextmanager
def registered(spec: ChannelSpec[Any]) -> Iterator[ChannelSpec[Any]]:
    """``spec`` registered for the duration of a ``with`` block."""
    previous = _SPECS.get(str(spec.name))
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)
        if previous is not None:
            register(previous)


def specs() -> tuple[ChannelSpec[Any], ...]:
    """Every registered channel, in registration order."""
    return tuple(_SPECS.values())


def spec_for(name: str) -> ChannelSpec[Any] | None:
    return _SPECS.get(str(name))


def load_entry_points() -> None:
    """Register the channels other installed packages declare (``tocsin.channels``)."""
    for point in entry_points(group=ENTRY_POINT_GROUP):
        spec = point.load()
        if not isinstance(spec, ChannelSpec):
            log.warning("entry point %s is not a ChannelSpec; ignored", point.name)
            continue
        register(spec)


for _spec in BUILT_IN:
    register(_spec)
load_entry_points()


def build_channels(
    settings: Settings, session: aiohttp.ClientSession
) -> dict[ChannelName, Channel]:
    """One adapter per configured channel, all over the one shared HTTP session."""
    channels: dict[ChannelName, Channel] = {}
    for spec in specs():
        section = settings.channels.section(spec.name)
        if section is None:
            continue
        channel = spec.from_settings(settings, session)
        apply_limits(channel, getattr(section, "limits", RateLimits()))
        channels[spec.name] = channel
    return channels


def apply_limits(channel: Channel, limits: RateLimits) -> None:
    """Let the configuration tighten or loosen a channel's built-in limits."""
    if limits.rate is not None:
        channel.rate = limits.rate
    if limits.burst is not None:
        channel.burst = limits.burst
    if limits.destination_rate is not None:
        channel.destination_rate = limits.destination_rate
    if limits.destination_burst is not None:
        channel.destination_burst = limits.destination_burst
    if limits.unlimited_destinations:
        channel.destination_rate = None
