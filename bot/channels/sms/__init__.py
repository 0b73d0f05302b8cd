"""SMS channel: Kannel's smsbox or a Twilio-compatible REST API, chosen by configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr

from bot.channels.checks import CheckResult
from bot.channels.sms.kannel import KannelChannel
from bot.channels.sms.twilio import TwilioChannel
from bot.channels.spec import ChannelSpec, RateLimits
from bot.config_base import ConfigError, Strict
from bot.domain.masking import mask_phone
from bot.domain.models import ChannelName, StatementKind
from bot.ports import Channel

if TYPE_CHECKING:
    import aiohttp

    from bot.channels.spec import Settings

__all__ = ["SPEC", "KannelChannel", "SmsChannelSettings", "TwilioChannel", "from_settings"]


class SmsChannelSettings(Strict):
    """``channels.sms``: Kannel's smsbox or a Twilio-compatible API."""

    provider: Literal["kannel", "twilio"] = "kannel"
    url: str = "http://127.0.0.1:13013/cgi-bin/sendsms"
    username_env: str = "KANNEL_USER"
    password_env: str = "KANNEL_PASSWORD"  # noqa: S105 (a variable name)
    account_sid_env: str = "TWILIO_ACCOUNT_SID"
    auth_token_env: str = "TWILIO_AUTH_TOKEN"  # noqa: S105 (a variable name)
    api_url: str = "https://api.twilio.com"
    sender: str | None = None
    max_segments: int = Field(default=2, ge=1, le=10)
    limits: RateLimits = RateLimits()
    # Kannel's ``get-url`` must carry ``secret=<this variable's value>``; without it inbound
    # SMS are refused (Kannel does not authenticate the calls it makes).
    inbound_secret_env: str | None = None


def _secret(settings: Settings, env_name: str) -> SecretStr:
    secret = settings.secret(env_name)
    if secret is None:  # only with an empty variable name: required=True raises otherwise
        raise ConfigError("channels.sms: a credential's environment variable name is empty")
    return secret


MIN_INBOUND_SECRET = 16


def inbound_secret(settings: Settings) -> bytes | None:
    """Kannel's inbound secret, or None when ``channels.sms.inbound_secret_env`` is not set
    (inbound SMS are then refused). A set key whose variable is missing, empty or shorter
    than 16 characters is a :class:`~bot.config.ConfigError` naming the key."""
    cfg = settings.channels.get(SPEC)
    if cfg is None or cfg.inbound_secret_env is None:
        return None
    secret = settings.secret(cfg.inbound_secret_env, required=False)
    value = secret.get_secret_value() if secret is not None else ""
    if len(value) < MIN_INBOUND_SECRET:
        raise ConfigError(
            f"channels.sms.inbound_secret_env: {cfg.inbound_secret_env} must be set to at least "
            f"{MIN_INBOUND_SECRET} characters"
        )
    return value.encode()


def from_settings(settings: Settings, session: aiohttp.ClientSession) -> Channel:
    """The SMS adapter of ``settings.channels.sms.provider``, over the shared ``session``.

    Credentials come from the environment variables the configuration names; a missing one is
    a :class:`~bot.config.ConfigError` naming the variable.
    """
    cfg = settings.channels.get(SPEC)
    if cfg is None:
        raise ConfigError("channels.sms is not configured")
    if cfg.provider == "kannel":
        inbound_secret(settings)
        return KannelChannel(
            session,
            url=cfg.url,
            username=_secret(settings, cfg.username_env),
            password=_secret(settings, cfg.password_env),
            sender=cfg.sender,
            max_segments=cfg.max_segments,
        )
    return TwilioChannel(
        session,
        api_url=cfg.api_url,
        account_sid=_secret(settings, cfg.account_sid_env).get_secret_value(),
        auth_token=_secret(settings, cfg.auth_token_env),
        sender=cfg.sender,
        max_segments=cfg.max_segments,
    )


async def check(settings: Settings, session: aiohttp.ClientSession) -> CheckResult:
    """The provider's cheapest authenticated request (none sends a message)."""
    channel = from_settings(settings, session)
    assert isinstance(channel, KannelChannel | TwilioChannel)
    return await channel.check()


def member_address(value: Any) -> Any:
    """A member's phone number (already normalised to E.164 when the settings were read)."""
    return value


SPEC = ChannelSpec(
    name=ChannelName.SMS,
    settings_model=SmsChannelSettings,
    from_settings=from_settings,
    formats=("sms",),
    member_key="phone",
    mask=mask_phone,
    statement_kind=StatementKind.SMS,
    member_address=member_address,
    check=check,
    check_label=lambda cfg: f"sms ({cfg.provider})",
)
