"""The demo's channel stand-ins beyond e-mail and webhooks: Slack, Telegram, SMS gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
from rich.console import Console

from bot.domain.models import ChannelName, DeliveryState
from tocsin_sandbox.slack_api import SlackSandbox
from tocsin_sandbox.sms_gateway import SmsGateway
from tocsin_sandbox.telegram_api import TelegramSandbox

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from tocsin_sandbox.demo import Sandboxes

FACTORIES: list[tuple[str, Any]] = [
    ("slack", lambda boxes: SlackSandbox(token=boxes.secrets["SLACK_BOT_TOKEN"])),
    ("telegram", lambda boxes: TelegramSandbox(token=boxes.secrets["TELEGRAM_BOT_TOKEN"])),
    (
        "sms",
        lambda boxes: SmsGateway(
            username=boxes.secrets["KANNEL_USER"], password=boxes.secrets["KANNEL_PASSWORD"]
        ),
    ),
]
# Department heads who answer in the demo, by how they were reached.
TELEGRAM_NAMES = {1001: ("A.", "Martin"), 1004: ("C.", "Diallo"), 1005: ("E.", "Rossi")}
ANSWER_ON_TELEGRAM = (1001, 1004)


def configure(config: dict[str, Any], boxes: Sandboxes) -> None:
    """Point the configuration's channels at the running stand-ins."""
    channels = config["channels"]
    channels["slack"]["api_url"] = boxes.extra["slack"].api_url
    channels["telegram"]["api_url"] = boxes.extra["telegram"].url
    channels["sms"]["url"] = boxes.extra["sms"].url
    boxes.extra["sms"].inbound_url = (
        config["server"]["public_url"]
        + "/sms/kannel/inbound?secret="
        + boxes.secrets["TOCSIN_SMS_INBOUND_SECRET"]
    )
    for user_id, (first, last) in TELEGRAM_NAMES.items():
        boxes.extra["telegram"].register(user_id, first, last)


async def acknowledge(
    runtime: Runtime, boxes: Sandboxes, incident_id: str, console: Console
) -> None:
    """Department heads press "Pris en compte" in Telegram and answer "OK" by SMS."""
    telegram: TelegramSandbox = boxes.extra["telegram"]
    gateway: SmsGateway = boxes.extra["sms"]
    url = runtime.settings.server.public_url
    secret = boxes.secrets["TELEGRAM_WEBHOOK_SECRET"]
    async with aiohttp.ClientSession() as session:
        pressed = [
            await telegram.press_ack(f"{url}/telegram/webhook", secret, chat, session=session)
            for chat in ANSWER_ON_TELEGRAM
        ]
    await gateway.reports_sent()
    replied = 0
    for delivery in await runtime.store.deliveries(incident_id):
        if (
            delivery.channel == ChannelName.SMS
            and delivery.audience == "department-heads"
            and delivery.state in (DeliveryState.SENT, DeliveryState.DELIVERED)
        ):
            replied += await gateway.reply(delivery.address, "Ok !") == 200
    console.print(
        f"   {pressed.count(200)} department head(s) pressed « Pris en compte » in "
        f"Telegram, {replied} answered OK by SMS"
    )
