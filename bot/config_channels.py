"""Settings of each outbound channel (``channels:`` in ``tocsin.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from bot.config_base import Duration, Strict
from bot.domain.models import ChannelName


class RateLimits(Strict):
    """Overrides of a channel's built-in limits (messages per second, burst sizes)."""

    rate: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    destination_rate: float | None = Field(default=None, gt=0)
    destination_burst: int | None = Field(default=None, ge=1)
    unlimited_destinations: bool = False


class SlackChannelSettings(Strict):
    bot_token_env: str = "SLACK_BOT_TOKEN"
    signing_secret_env: str = "SLACK_SIGNING_SECRET"
    api_url: str = "https://slack.com/api/"
    incident_channel: str | None = None
    press_channel: str | None = None
    # Seconds to wait for Slack's answer; past it the post's outcome is unknown and the next
    # attempt first looks for the message in the conversation's history.
    timeout: Duration = 10.0
    limits: RateLimits = RateLimits()


class TelegramChannelSettings(Strict):
    token_env: str = "TELEGRAM_BOT_TOKEN"
    webhook_secret_env: str = "TELEGRAM_WEBHOOK_SECRET"
    api_url: str = "https://api.telegram.org"
    # Seconds to wait for the Bot API's answer to one request.
    timeout: Duration = 10.0
    limits: RateLimits = RateLimits()


class SmsChannelSettings(Strict):
    provider: Literal["kannel", "twilio"] = "kannel"
    url: str = "http://127.0.0.1:13013/cgi-bin/sendsms"
    username_env: str = "KANNEL_USER"
    password_env: str = "KANNEL_PASSWORD"
    account_sid_env: str = "TWILIO_ACCOUNT_SID"
    auth_token_env: str = "TWILIO_AUTH_TOKEN"
    api_url: str = "https://api.twilio.com"
    sender: str | None = None
    max_segments: int = Field(default=2, ge=1, le=10)
    limits: RateLimits = RateLimits()
    # Kannel's ``get-url`` must carry ``secret=<this variable's value>``; without it inbound
    # SMS are refused (Kannel does not authenticate the calls it makes).
    inbound_secret_env: str | None = None


class EmailChannelSettings(Strict):
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    use_tls: bool = False
    username_env: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    from_: str = Field(default="tocsin@example.org", alias="from")
    timeout: Duration = 10.0
    limits: RateLimits = RateLimits()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WebhookChannelSettings(Strict):
    timeout: Duration = 10.0
    limits: RateLimits = RateLimits()


class Channels(Strict):
    slack: SlackChannelSettings | None = None
    telegram: TelegramChannelSettings | None = None
    sms: SmsChannelSettings | None = None
    email: EmailChannelSettings | None = None
    webhook: WebhookChannelSettings = WebhookChannelSettings()

    def configured(self) -> set[ChannelName]:
        names = {ChannelName.WEBHOOK}
        for name in (ChannelName.SLACK, ChannelName.TELEGRAM, ChannelName.SMS, ChannelName.EMAIL):
            if getattr(self, name.value) is not None:
                names.add(name)
        return names
