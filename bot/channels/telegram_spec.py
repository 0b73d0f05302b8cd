"""The Telegram channel's declaration; the adapter (``telegram.py``, with python-telegram-bot,
slow to import) is imported only when the channel is configured."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.channels.spec import ChannelSpec, RateLimits, built_check
from bot.config_base import Duration, Strict
from bot.domain.models import ChannelName

if TYPE_CHECKING:
    import aiohttp

    from bot.channels.spec import Settings
    from bot.ports import Channel


class TelegramChannelSettings(Strict):
    """``channels.telegram``: the bot's token and the Bot API."""

    token_env: str = "TELEGRAM_BOT_TOKEN"  # noqa: S105 (a variable name)
    webhook_secret_env: str = "TELEGRAM_WEBHOOK_SECRET"  # noqa: S105 (a variable name)
    api_url: str = "https://api.telegram.org"
    # Seconds to wait for the Bot API's answer to one request.
    timeout: Duration = 10.0
    limits: RateLimits = RateLimits()


def from_settings(settings: Settings, session: aiohttp.ClientSession) -> Channel:
    from bot.channels.telegram import from_settings as telegram_channel

    return telegram_channel(settings, session)


SPEC = ChannelSpec(
    name=ChannelName.TELEGRAM,
    settings_model=TelegramChannelSettings,
    from_settings=from_settings,
    formats=("telegram",),
    destination_key="telegram_chat",
    member_key="telegram",
    check=built_check(from_settings),
)
