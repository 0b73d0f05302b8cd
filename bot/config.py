"""Settings: ``tocsin.yaml`` validated with pydantic; secrets only from the environment.

Loaded once in ``main`` (or a test) and passed down; nothing reads configuration at import time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.config_base import ConfigError, Duration, Strict, parse_duration
from bot.config_channels import (
    Channels,
    EmailChannelSettings,
    RateLimits,
    SlackChannelSettings,
    SmsChannelSettings,
    TelegramChannelSettings,
    WebhookChannelSettings,
)
from bot.domain.models import ChannelName, DeliveryPolicy, Role, Severity, StatementKind
from bot.domain.phone import normalise_phone

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


DESTINATION_KINDS: dict[str, ChannelName] = {
    "slack_channel": ChannelName.SLACK,
    "telegram_chat": ChannelName.TELEGRAM,
    "email_list": ChannelName.EMAIL,
    "webhook": ChannelName.WEBHOOK,
}


class Destination(Strict):
    """A channel, group or list reached as one delivery."""

    slack_channel: str | None = None
    telegram_chat: str | None = None
    email_list: str | None = None
    webhook: str | None = None
    name: str | None = None
    locale: str | None = None

    @field_validator("telegram_chat", "slack_channel", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> Destination:
        given = [key for key in DESTINATION_KINDS if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "a destination needs exactly one of "
                + ", ".join(DESTINATION_KINDS)
                + f" (got {', '.join(given) or 'none'})"
            )
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise ValueError("webhook must be an http:// or https:// URL")
        return self

    @property
    def channel(self) -> ChannelName:
        return next(DESTINATION_KINDS[k] for k in DESTINATION_KINDS if getattr(self, k))

    @property
    def address(self) -> str:
        return next(str(getattr(self, k)) for k in DESTINATION_KINDS if getattr(self, k))


class Member(Strict):
    """A person, reached on the first channel of the audience policy that works for them."""

    name: str
    site: str | None = None
    locale: str | None = None
    telegram: str | None = None
    phone: str | None = None
    email: str | None = None
    slack: str | None = None
    deputy: bool = False

    @field_validator("telegram", mode="before")
    @classmethod
    def _telegram_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError("not an e-mail address")
        return value

    def contacts(self) -> dict[str, str]:
        """Addresses by channel name."""
        pairs = {
            ChannelName.TELEGRAM: self.telegram,
            ChannelName.SMS: self.phone,
            ChannelName.EMAIL: self.email,
            ChannelName.SLACK: self.slack,
        }
        return {k.value: v for k, v in pairs.items() if v}


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
