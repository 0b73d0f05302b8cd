"""SMS channel: Kannel's smsbox or a Twilio-compatible REST API, chosen by configuration."""

from __future__ import annotations

import aiohttp
from pydantic import SecretStr

from bot.channels.sms.kannel import KannelChannel
from bot.channels.sms.twilio import TwilioChannel
from bot.config import ConfigError, Settings
from bot.ports import Channel

__all__ = ["KannelChannel", "TwilioChannel", "from_settings"]


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
    cfg = settings.channels.sms
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
    cfg = settings.channels.sms
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
