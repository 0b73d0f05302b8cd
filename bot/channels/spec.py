"""A channel's declaration: everything the rest of Tocsin needs to know of one channel.

Each channel module declares a :class:`ChannelSpec` next to its adapter; the registry
(``bot/channels/registry.py``) is the list of them. Configuration (the ``channels:`` section,
destination and member keys), audiences, masking, rendering, ``build_channels`` and
``tocsin check`` all read the spec, so that a new channel is its module, one registration line,
its templates and its tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, Field, SecretStr

from bot.config_base import Strict
from bot.domain.channel_facts import ChannelFacts
from bot.domain.models import ChannelName, StatementKind

if TYPE_CHECKING:
    import aiohttp

    from bot.channels.checks import CheckResult
    from bot.ports import Channel


class RateLimits(Strict):
    """Overrides of a channel's built-in limits (messages per second, burst sizes)."""

    rate: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    destination_rate: float | None = Field(default=None, gt=0)
    destination_burst: int | None = Field(default=None, ge=1)
    unlimited_destinations: bool = False


S = TypeVar("S", bound=BaseModel)


class ChannelSections(Protocol):
    """The ``channels:`` section as a channel reads it (``bot.config.Channels``)."""

    def section(self, name: str) -> BaseModel | None: ...

    def get(self, spec: ChannelSpec[S]) -> S | None: ...


class Settings(Protocol):
    """What a channel reads of the settings (``bot.config.Settings`` is one): its section,
    secrets from the environment, paths relative to the configuration file. The channels
    never import the configuration, which reads the channel registry."""

    @property
    def channels(self) -> ChannelSections: ...

    def secret(self, env_name: str | None, *, required: bool = True) -> SecretStr | None: ...

    def resolve_path(self, relative: str) -> Path: ...


Build = Callable[[Settings, "aiohttp.ClientSession"], "Channel"]
Check = Callable[[Settings, "aiohttp.ClientSession"], Awaitable["CheckResult"]]


def as_text(value: Any) -> Any:
    """A chat or channel id written as a number in YAML is read as its text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


@dataclass(frozen=True)
class ChannelSpec(Generic[S]):
    """One channel.

    - ``name``: its name, also its key under ``channels:`` in ``tocsin.yaml``;
    - ``settings_model``: that section's pydantic model (it has a ``limits:`` key);
    - ``from_settings``: the adapter, built from the settings over the shared HTTP session;
    - ``formats``: the rendered bodies the adapter reads (``text``, ``slack``, ``sms``…);
    - ``destination_key``: the key of an audience destination on this channel
      (``slack_channel``), None when it has none;
    - ``member_key``: the key of a member's address on this channel (``phone``), None when
      members are not reached on it;
    - ``mask`` / ``mask_always``: how an address is shown to viewers and in logs (members'
      only, unless always);
    - ``statement_kind``: the statement every delivery on it carries (SMS: ``sms``);
    - ``destination_address`` / ``member_address``: read and check an address as written in
      the configuration (a number read as text; raises ValueError with the reason);
    - ``always_on``: configured even without a section (the webhook);
    - ``check`` / ``check_label``: ``tocsin check``'s cheapest authenticated request.
    """

    name: ChannelName
    settings_model: type[S]
    from_settings: Build
    formats: tuple[str, ...]
    destination_key: str | None = None
    member_key: str | None = None
    mask: Callable[[str], str] | None = None
    mask_always: bool = False
    statement_kind: StatementKind | None = None
    destination_address: Callable[[Any], Any] = as_text
    member_address: Callable[[Any], Any] = as_text
    always_on: bool = False
    check: Check | None = None
    check_label: Callable[[S], str] | None = None

    @property
    def facts(self) -> ChannelFacts:
        """What the domain needs of this channel."""
        return ChannelFacts(
            name=self.name,
            formats=self.formats,
            mask=self.mask,
            mask_always=self.mask_always,
            statement_kind=self.statement_kind,
        )

    def label(self, section: BaseModel) -> str:
        """This channel's line in ``tocsin check`` (``sms (kannel)``)."""
        if self.check_label is not None and isinstance(section, self.settings_model):
            return self.check_label(section)
        return str(self.name)


def built_check(spec_build: Build) -> Check:
    """A check that builds the adapter and calls its ``check()``."""

    async def check(settings: Settings, session: aiohttp.ClientSession) -> CheckResult:
        channel: Any = spec_build(settings, session)
        result: CheckResult = await channel.check()
        return result

    return check
