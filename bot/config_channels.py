"""The ``channels:`` section of ``tocsin.yaml`` and the channel keys of destinations and
members, all read from the channel registry (``bot/channels/registry.py``): each channel's
module declares its settings model, its destination key and its member key."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from bot.channels.email import EmailChannelSettings
from bot.channels.registry import spec_for, specs
from bot.channels.slack import SlackChannelSettings
from bot.channels.sms import SmsChannelSettings
from bot.channels.spec import ChannelSpec, RateLimits
from bot.channels.telegram_spec import TelegramChannelSettings
from bot.channels.webhook import WebhookChannelSettings
from bot.domain.models import ChannelName

__all__ = [
    "Channels",
    "EmailChannelSettings",
    "RateLimits",
    "SlackChannelSettings",
    "SmsChannelSettings",
    "TelegramChannelSettings",
    "WebhookChannelSettings",
    "channel_keys",
]

S = TypeVar("S", bound=BaseModel)


def _error(kind: str, loc: tuple[str | int, ...], value: Any, **ctx: Any) -> InitErrorDetails:
    details = InitErrorDetails(type=kind, loc=loc, input=value)
    if ctx:
        details["ctx"] = ctx
    return details


def _nested(exc: ValidationError, prefix: tuple[str | int, ...]) -> list[InitErrorDetails]:
    """``exc``'s errors, located under ``prefix`` (so that messages keep their key path)."""
    found = []
    for err in exc.errors():
        details = _error(err["type"], (*prefix, *err["loc"]), err["input"])
        if "ctx" in err:
            details["ctx"] = err["ctx"]
        found.append(details)
    return found


def _raise(title: str, errors: list[InitErrorDetails]) -> None:
    if errors:
        raise ValidationError.from_exception_data(title, errors)


class Channels(BaseModel):
    """``channels:``: one optional section per registered channel (its module's settings
    model); a key no channel declares is an error, as in every other section."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        sections: dict[str, Any] = {}
        errors: list[InitErrorDetails] = []
        for key, value in data.items():
            spec = spec_for(key)
            if spec is None:
                errors.append(_error("extra_forbidden", (key,), value))
            elif value is None and not spec.always_on:
                sections[key] = None
            elif isinstance(value, spec.settings_model):
                sections[key] = value
            else:
                try:
                    sections[key] = spec.settings_model.model_validate(value)
                except ValidationError as exc:
                    errors += _nested(exc, (key,))
        _raise("Channels", errors)
        for spec in specs():
            default = spec.settings_model() if spec.always_on else None
            sections.setdefault(str(spec.name), default)
        return sections

    def section(self, name: str) -> BaseModel | None:
        """A channel's settings, None when it is not configured."""
        value = (self.model_extra or {}).get(str(name))
        return value if isinstance(value, BaseModel) else None

    def get(self, spec: ChannelSpec[S]) -> S | None:
        """A channel's settings as its own model, None when it is not configured."""
        value = self.section(spec.name)
        return value if isinstance(value, spec.settings_model) else None

    def configured(self) -> set[ChannelName]:
        return {spec.name for spec in specs() if self.section(spec.name) is not None}

    if TYPE_CHECKING:
        # ``channels.slack``: a section by its channel's name (None when not configured).
        def __getattr__(self, name: str) -> Any: ...


def channel_keys(
    data: Any,
    *,
    fixed: Iterable[str],
    key_of: Callable[[ChannelSpec[Any]], str | None],
    read: Callable[[ChannelSpec[Any]], Callable[[Any], Any]],
    title: str,
    defer_refusals: bool,
) -> tuple[dict[str, Any], dict[str, ChannelSpec[Any]], list[str]]:
    """Split a destination or member mapping into its own keys (``fixed``) and its channel
    keys, each read by its channel; every registered channel key is present (None when not
    given). Returns the values and the channel of each given key; an address its channel
    refuses is an error at its key, or, with ``defer_refusals``, a reason returned for the
    caller to report once the keys are known to fit."""
    by_key = {key: spec for spec in specs() if (key := key_of(spec)) is not None}
    fixed = set(fixed)
    values: dict[str, Any] = dict.fromkeys(by_key)
    given: dict[str, ChannelSpec[Any]] = {}
    refused: list[str] = []
    errors: list[InitErrorDetails] = []
    for key, value in data.items():
        spec = by_key.get(key)
        if key in fixed:
            values[key] = value
            continue
        if spec is None:
            errors.append(_error("extra_forbidden", (key,), value))
            continue
        if value is None:
            continue
        try:
            value = read(spec)(value)
        except ValueError as exc:
            if not defer_refusals:
                errors.append(_error("value_error", (key,), value, error=exc))
                continue
            refused.append(str(exc))
        if not isinstance(value, str):
            errors.append(_error("string_type", (key,), value))
            continue
        values[key] = value
        given[key] = spec
    _raise(title, errors)
    return values, given, refused
