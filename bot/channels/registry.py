"""Builds the configured channels; each adapter module offers ``from_settings``."""

from __future__ import annotations

import aiohttp

from bot.channels.email import EmailChannel
from bot.channels.webhook import WebhookChannel
from bot.config import RateLimits, Settings
from bot.domain.models import ChannelName
from bot.ports import Channel


def build_channels(
    settings: Settings, session: aiohttp.ClientSession
) -> dict[ChannelName, Channel]:
    """One adapter per configured channel, all over the one shared HTTP session."""
    cfg = settings.channels
    channels: dict[ChannelName, Channel] = {
        ChannelName.WEBHOOK: WebhookChannel(session, cfg.webhook),
    }
    if cfg.email is not None:
        channels[ChannelName.EMAIL] = EmailChannel(
            cfg.email,
            username=settings.secret(cfg.email.username_env, required=False),
            password=settings.secret(cfg.email.password_env, required=False),
            ca_file=str(settings.resolve_path(cfg.email.ca_file)) if cfg.email.ca_file else None,
        )
    # Each SDK is imported only when its channel is configured (slack-sdk, telegram…).
    if cfg.slack is not None:
        from bot.channels.slack import from_settings as slack_channel

        channels[ChannelName.SLACK] = slack_channel(settings, session)
    if cfg.telegram is not None:
        from bot.channels.telegram import from_settings as telegram_channel

        channels[ChannelName.TELEGRAM] = telegram_channel(settings, session)
    if cfg.sms is not None:
        from bot.channels.sms import from_settings as sms_channel

        channels[ChannelName.SMS] = sms_channel(settings, session)
    for name, channel in channels.items():
        section = getattr(cfg, name.value)
        if section is not None:
            apply_limits(channel, section.limits)
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
