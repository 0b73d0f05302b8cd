"""Settings: ``tocsin.yaml`` validated with pydantic; secrets only from the environment.

Loaded once in ``main`` (or a test) and passed down; nothing reads configuration at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from bot.channels.registry import specs
from bot.collector import CollectorMode
from bot.config_base import ConfigError, Duration, Strict, parse_duration
from bot.config_channels import (
    Channels,
    EmailChannelSettings,
    RateLimits,
    SlackChannelSettings,
    SmsChannelSettings,
    TelegramChannelSettings,
    WebhookChannelSettings,
    channel_keys,
)
from bot.domain.models import ChannelName, DeliveryPolicy, Role, Severity, StatementKind
from bot.domain.phone import normalise_phone
from bot.event_loop import EventLoopName

__all__ = [
    "Channels",
    "ConfigError",
    "Duration",
    "EmailChannelSettings",
    "RateLimits",
    "Settings",
    "SlackChannelSettings",
    "SmsChannelSettings",
    "Strict",
    "TelegramChannelSettings",
    "WebhookChannelSettings",
    "load_settings",
    "parse_duration",
    "settings_from_dict",
]


class Organisation(Strict):
    name: str = "Tocsin"
    locale: str = "fr"
    locales: tuple[str, ...] = ("fr", "en")
    timezone: str = "Europe/Paris"
    region: str | None = None  # default phone region; derived from the locale when absent

    @property
    def phone_region(self) -> str:
        return self.region or {"fr": "FR", "en": "GB"}.get(self.locale, "FR")


class Storage(Strict):
    url: str = "sqlite:///tocsin.db"


class Server(Strict):
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    # /metrics needs a token (viewer or metrics role) unless this is true.
    metrics_public: bool = False
    # The event loop of `serve` and `worker`: uvloop (faster: see README, Performance), or
    # the standard library's.
    event_loop: EventLoopName = "uvloop"
    # The garbage collector of `serve` and `worker`: tuned for a stream of short-lived
    # objects (see bot/collector.py and README, Performance), or CPython's default.
    gc: CollectorMode = "tuned"


class ApiToken(Strict):
    name: str
    token_env: str
    role: Role
    # The person this token belongs to: four-eyes compares people, whatever the interface.
    person: str | None = None


class ChatUser(Strict):
    """A chat user allowed to act: their role and, optionally, the person they are."""

    role: Role
    person: str | None = None


def _member(value: Any) -> Any:
    # A bare role (``U0CRISIS1: responder``) still works.
    return {"role": value} if isinstance(value, str | Role) else value


ChatUsers = dict[str, Annotated[ChatUser, BeforeValidator(_member)]]


class Auth(Strict):
    tokens: tuple[ApiToken, ...] = ()
    slack_users: ChatUsers = Field(default_factory=dict)
    telegram_users: ChatUsers = Field(default_factory=dict)
    secret_key_env: str = "TOCSIN_SECRET_KEY"

    def persons(self) -> dict[str, set[Role]]:
        """Each configured person and the roles their credentials give them."""
        found: dict[str, set[Role]] = {}
        entries: list[tuple[str | None, Role]] = [(t.person, t.role) for t in self.tokens]
        for users in (self.slack_users, self.telegram_users):
            entries += [(u.person, u.role) for u in users.values()]
        for person, role in entries:
            if person:
                found.setdefault(person, set()).add(role)
        return found


class DeliverySettings(Strict):
    lease_seconds: float = 60.0
    concurrency: int = Field(default=50, ge=1, le=1000)
    batch_size: int = Field(default=200, ge=1, le=5000)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base: Duration = 2.0
    backoff_max: Duration = 300.0
    poll_interval: Duration = 0.5
    shutdown_timeout: Duration = 10.0
    # How long an acknowledgement link keeps working after its incident's resolution.
    ack_ttl: Duration = 7 * 86400.0


class Destination(Strict):
    """A channel, group or list reached as one delivery: exactly one channel's destination
    key (``slack_channel``, ``telegram_chat``, ``email_list``, ``webhook``… as each channel
    declares) with its address."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str | None = None
    locale: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        values, given, refused = channel_keys(
            data,
            fixed=("name", "locale"),
            key_of=lambda spec: spec.destination_key,
            read=lambda spec: spec.destination_address,
            title="Destination",
            defer_refusals=True,
        )
        if len(given) != 1:
            keys = [key for key in values if key not in ("name", "locale")]
            raise ValueError(
                "a destination needs exactly one of "
                + ", ".join(keys)
                + f" (got {', '.join(given) or 'none'})"
            )
        if refused:
            raise ValueError(refused[0])
        return values

    def _given(self) -> tuple[ChannelName, str]:
        for spec in specs():
            key = spec.destination_key
            if key is not None and (address := (self.model_extra or {}).get(key)):
                return spec.name, str(address)
        raise LookupError("a destination without a channel")  # the validator forbids it

    @property
    def channel(self) -> ChannelName:
        return self._given()[0]

    @property
    def address(self) -> str:
        return self._given()[1]

    if TYPE_CHECKING:
        # A channel's destination key (``destination.slack_channel``): its address or None.
        def __getattr__(self, name: str) -> Any: ...


class Member(Strict):
    """A person, reached on the first channel of the audience policy that works for them;
    their address on a channel is under the key that channel declares (``phone``, ``email``,
    ``telegram``, ``slack``…)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    site: str | None = None
    locale: str | None = None
    deputy: bool = False

    @model_validator(mode="before")
    @classmethod
    def _addresses(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        values, _, _ = channel_keys(
            data,
            fixed=("name", "site", "locale", "deputy"),
            key_of=lambda spec: spec.member_key,
            read=lambda spec: spec.member_address,
            title="Member",
            defer_refusals=False,
        )
        return values

    def contacts(self) -> dict[str, str]:
        """Addresses by channel name."""
        extra = self.model_extra or {}
        found = {}
        for spec in specs():
            address = extra.get(spec.member_key) if spec.member_key else None
            if address:
                found[str(spec.name)] = str(address)
        return found

    if TYPE_CHECKING:
        # A channel's member key (``member.phone``): the address, or None.
        def __getattr__(self, name: str) -> Any: ...


class Policy(Strict):
    channels: tuple[ChannelName, ...] = ()
    require_ack: bool = False
    escalate_after: Duration | None = None
    escalate_via: ChannelName | None = None
    confirm_per_site: int = Field(default=0, ge=0)

    def to_domain(self, kind: StatementKind) -> DeliveryPolicy:
        return DeliveryPolicy(
            kind=kind,
            channels=self.channels,
            require_ack=self.require_ack,
            escalate_after_s=self.escalate_after,
            escalate_via=self.escalate_via,
            confirm_per_site=self.confirm_per_site,
        )


class AudienceSettings(Strict):
    statement: StatementKind
    destinations: tuple[Destination, ...] = ()
    members: tuple[Member, ...] = ()
    policy: Policy = Policy()
    # Queue lane: urgent deliveries are claimed before normal ones due at the same moment.
    # Unset: urgent when the policy requires acknowledgement or the audience gets the
    # update-cadence reminders (the crisis cell); normal otherwise.
    priority: Literal["urgent", "normal"] | None = None

    @model_validator(mode="after")
    def _policy_fits(self) -> AudienceSettings:
        if self.members and not self.policy.channels:
            raise ValueError("an audience with members needs policy.channels")
        for member in self.members:
            if not any(member.contacts().get(c.value) for c in self.policy.channels):
                raise ValueError(
                    f"member {member.name!r} has no address for any of the policy's channels"
                )
        return self


class Reminders(Strict):
    """Update cadence per severity; the crisis cell is reminded when an incident is overdue."""

    cadence: dict[Severity, Duration] = Field(
        default_factory=lambda: {Severity.CRITICAL: 1800.0, Severity.MAJOR: 3600.0}
    )
    audience: str = "crisis-cell"
    check_every: Duration = 30.0


class AlertRuleSettings(Strict):
    """Alert labels that all match → this system (and severity)."""

    match: dict[str, str]
    system: str
    severity: Severity | None = None


class AlertsSettings(Strict):
    """How Alertmanager notifications become draft incidents."""

    default_severity: Severity = Severity.MAJOR
    audiences: tuple[str, ...] | None = None
    rules: tuple[AlertRuleSettings, ...] = ()


class Settings(Strict):
    """The whole of ``tocsin.yaml``."""

    organisation: Organisation = Organisation()
    storage: Storage = Storage()
    server: Server = Server()
    auth: Auth = Auth()
    delivery: DeliverySettings = DeliverySettings()
    channels: Channels = Channels()
    audiences: dict[str, AudienceSettings] = Field(default_factory=dict)
    default_audiences: tuple[str, ...] = ()
    reminders: Reminders = Reminders()
    alerts: AlertsSettings = AlertsSettings()
    templates_dir: str | None = None
    base_dir: str = "."

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        for name in self.default_audiences:
            if name not in self.audiences:
                raise ValueError(f"default_audiences: unknown audience {name!r}")
        for name in self.alerts.audiences or ():
            if name not in self.audiences:
                raise ValueError(f"alerts.audiences: unknown audience {name!r}")
        configured = self.channels.configured()
        for aname, audience in self.audiences.items():
            used = {d.channel for d in audience.destinations} | set(audience.policy.channels)
            if audience.policy.escalate_via:
                used.add(audience.policy.escalate_via)
            missing = sorted(c.value for c in used - configured)
            if missing:
                raise ValueError(
                    f"audiences.{aname}: channel(s) {', '.join(missing)} not configured "
                    "under channels"
                )
        return self

    def secret(self, env_name: str | None, *, required: bool = True) -> SecretStr | None:
        """Read a secret from the environment (never from the file)."""
        if not env_name:
            return None
        value = os.environ.get(env_name)
        if value is None:
            if required:
                raise ConfigError(f"environment variable {env_name} is not set")
            return None
        return SecretStr(value)

    def resolve_path(self, relative: str) -> Path:
        """Paths in the config are relative to the config file's folder."""
        path = Path(relative)
        return path if path.is_absolute() else Path(self.base_dir) / path

    @property
    def database_url(self) -> str:
        url = self.storage.url
        if url.startswith("sqlite:///"):
            raw = url.removeprefix("sqlite:///")
            if raw != ":memory:":
                return "sqlite:///" + str(self.resolve_path(raw))
        return url


def _normalise_phones(data: dict[str, Any]) -> None:
    region = (data.get("organisation") or {}).get("region") or {"fr": "FR", "en": "GB"}.get(
        (data.get("organisation") or {}).get("locale", "fr"), "FR"
    )
    audiences = data.get("audiences") or {}
    if not isinstance(audiences, dict):
        return
    for aname, audience in audiences.items():
        members = (audience or {}).get("members") if isinstance(audience, dict) else None
        if not isinstance(members, list):
            continue
        for index, member in enumerate(members):
            if isinstance(member, dict) and member.get("phone") is not None:
                try:
                    member["phone"] = normalise_phone(str(member["phone"]), region)
                except ValueError as exc:
                    raise ConfigError(f"audiences.{aname}.members.{index}.phone: {exc}") from None


def settings_from_dict(data: dict[str, Any], *, source: str = "<config>") -> Settings:
    """Validate a configuration mapping; errors name the source, the key path and why."""
    data = dict(data)
    try:
        _normalise_phones(data)
        return Settings.model_validate(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"]) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {path}: {message}")
        raise ConfigError("\n".join(lines)) from None


def load_settings(path: str | Path) -> Settings:
    """Load and validate a ``tocsin.yaml``."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such configuration file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}{where}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping")
    raw.setdefault("base_dir", str(file.resolve().parent))
    return settings_from_dict(raw, source=str(file))
