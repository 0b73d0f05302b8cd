"""Telegram inbound: the real aiohttp app with python-telegram-bot inside, fed real Update JSON
over HTTP, talking to the shipped Bot API stand-in."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.app import RUNTIME, Runtime, build_app, build_dispatcher
from bot.channels import telegram
from bot.config import ConfigError, Settings, settings_from_dict
from bot.domain.clock import FakeClock
from bot.domain.models import ChannelName, Delivery, DeliveryPolicy, DeliveryState, StatementKind
from bot.interfaces.telegram_bot import REFUSAL, UNKNOWN_ACK, WEBHOOK_PATH
from bot.ports import ALL_KEYS, Changes, Channel, OutboundMessage, Receipt
from bot.store.memory import MemoryStore
from tests.factories import T0, incident, new_delivery, statement
from tocsin_sandbox.telegram_api import SECRET_HEADER, TelegramSandbox

TOKEN = "123456:TEST-inbound-token"
SECRET = "webhook-secret-0123456789"
CRISIS_USER = 4242
HEADS = {1001: ("Dr A. Martin", "fr"), 1002: ("Dr B. Durand", "en")}
POLICY = DeliveryPolicy(
    channels=(ChannelName.TELEGRAM, ChannelName.EMAIL),
    require_ack=True,
    escalate_after_s=600,
    escalate_via=ChannelName.EMAIL,
    kind=StatementKind.DEPARTMENT_HEADS,
)
BODIES = {
    "fr": "<b>Panne Orbis</b>\nAppliquez les procédures dégradées (papier).",
    "en": "<b>Orbis outage</b>\nUse the downgraded (paper) procedures.",
}


class Recording:
    """The e-mail gateway is not under test: accept and keep."""

    name = ChannelName.EMAIL
    rate, burst, destination_rate, destination_burst = 1000.0, 1000, None, 1
    keys = ALL_KEYS

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    def provider_key(self, address: str) -> str:
        return "email"

    async def send(self, message: OutboundMessage) -> Receipt:
        self.sent.append(message)
        return Receipt(f"<{len(self.sent)}@example.org>")

    async def close(self) -> None:
        return None


def config(api_url: str) -> Settings:
    return settings_from_dict(
        {
            "organisation": {"name": "AP-HP", "locale": "fr", "timezone": "Europe/Paris"},
            "server": {"public_url": "https://tocsin.example.org"},
            "auth": {"telegram_users": {str(CRISIS_USER): "responder"}},
            "channels": {
                "telegram": {"api_url": api_url},
                "email": {"host": "127.0.0.1", "port": 2525},
            },
            "audiences": {
                "department-heads": {
                    "statement": "department_heads",
                    "policy": {
                        "channels": ["telegram", "email"],
                        "require_ack": True,
                        "escalate_after": "10m",
                        "escalate_via": "email",
                    },
                    "members": [
                        {
                            "name": name,
                            "locale": locale,
                            "telegram": chat,
                            "email": f"head{chat}@example.org",
                        }
                        for chat, (name, locale) in HEADS.items()
                    ],
                }
            },
            "default_audiences": ["department-heads"],
        }
    )


@dataclass
class Tocsin:
    """The running app, its stand-ins and what the tests drive."""

    url: str
    runtime: Runtime
    store: MemoryStore
    clock: FakeClock
    api: TelegramSandbox
    email: Recording
    session: aiohttp.ClientSession

    @property
    def webhook(self) -> str:
        return self.url + WEBHOOK_PATH

    async def post(self, update: dict[str, Any], secret: str | None = SECRET) -> int:
        return await self.api.post_update(self.webhook, update, secret, self.session)

    async def command(self, text: str, user: int = CRISIS_USER) -> list[str]:
        """Send a command from ``user`` in their private chat; the bot's replies."""
        before = len(self.api.messages(user))
        assert await self.post(self.api.message_update(user, user, text)) == 200
        return [m.text for m in self.api.messages(user)[before:]]

    def delivery(self, chat: int, channel: ChannelName = ChannelName.TELEGRAM) -> Delivery:
        return next(
            d for d in self.store.rows.values() if d.channel == channel and d.address == str(chat)
        )


@asynccontextmanager
async def running(
    monkeypatch: pytest.MonkeyPatch, api_url: str | None = None
) -> AsyncIterator[Tocsin]:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", SECRET)
    store, clock, email = MemoryStore(), FakeClock(T0), Recording()

    def channels(settings: Settings, session: aiohttp.ClientSession) -> dict[ChannelName, Channel]:
        return {
            ChannelName.TELEGRAM: telegram.from_settings(settings, session),
            ChannelName.EMAIL: email,
        }

    async with TelegramSandbox(token=TOKEN) as api, aiohttp.ClientSession() as session:
        for chat, (name, _) in HEADS.items():
            first, last = name.rsplit(" ", 1)
            api.register(chat, first, last)
        app = build_app(
            config(api_url or api.url),
            store=store,
            clock=clock,
            with_worker=False,
            channel_factory=channels,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port = runner.addresses[0][1]
            yield Tocsin(
                f"http://127.0.0.1:{port}", app[RUNTIME], store, clock, api, email, session
            )
        finally:
            await runner.cleanup()


@pytest.fixture
async def tocsin(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Tocsin]:
    async with running(monkeypatch) as running_tocsin:
        yield running_tocsin


async def broadcast_to_heads(tocsin: Tocsin) -> None:
    """Commit a declaration's department-head deliveries and let the worker send them."""
    statements = {
        locale: statement(
            kind=StatementKind.DEPARTMENT_HEADS,
            locale=locale,
            bodies={"subject": "Orbis", "text": "Orbis", "telegram": body},
        )
        for locale, body in BODIES.items()
    }
    await tocsin.store.commit(
        Changes(
            incident=incident(audiences=("department-heads",)),
            new_incident=True,
            statements=list(statements.values()),
            deliveries=[
                new_delivery(
                    statements[locale],
                    str(chat),
                    ChannelName.TELEGRAM,
                    audience="department-heads",
                    recipient=name,
                    locale=locale,
                    contacts={"telegram": str(chat), "email": f"head{chat}@example.org"},
                    policy=POLICY,
                )
                for chat, (name, locale) in HEADS.items()
            ],
        )
    )
    await build_dispatcher(tocsin.runtime).drain()


# --- start-up ------------------------------------------------------------------------------
async def test_registers_its_webhook_with_the_secret(tocsin: Tocsin) -> None:
    assert tocsin.api.calls_to("getMe")
    assert tocsin.api.webhook is not None
    assert tocsin.api.webhook["url"] == "https://tocsin.example.org/telegram/webhook"
    assert tocsin.api.webhook["secret_token"] == SECRET
    assert tocsin.api.webhook["allowed_updates"] == ["message", "callback_query"]


async def test_an_unreachable_bot_api_does_not_stop_tocsin(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async with running(monkeypatch, api_url=f"http://127.0.0.1:{port}") as tocsin:
        status = await tocsin.post(tocsin.api.message_update(CRISIS_USER, CRISIS_USER, "/help"))
        async with tocsin.session.get(tocsin.url + "/healthz") as health:
            assert health.status == 200

    assert status == 503  # Telegram will deliver the update again later
    assert "Telegram Bot API unavailable" in caplog.text
    assert TOKEN not in caplog.text


async def test_a_webhook_secret_telegram_would_refuse_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "pass word!")
    async with TelegramSandbox(token=TOKEN) as api:
        runner = web.AppRunner(build_app(config(api.url), store=MemoryStore(), with_worker=False))
        try:
            with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_SECRET: a Telegram webhook"):
                await runner.setup()
        finally:
            await runner.cleanup()

    assert api.webhook is None
    assert "pass word!" not in str(api.calls)


# --- the acknowledgement button ------------------------------------------------------------
async def test_the_button_acknowledges_that_delivery_and_shows_who_and_when(
    tocsin: Tocsin,
) -> None:
    await broadcast_to_heads(tocsin)
    tocsin.clock.advance(125)  # pressed 2 min 5 s after the broadcast went out

    status = await tocsin.api.press_ack(tocsin.webhook, SECRET, chat_id=1001)

    assert status == 200
    acked = tocsin.delivery(1001)
    assert acked.state == DeliveryState.ACKNOWLEDGED
    assert acked.acknowledged_by == "Dr A. Martin"
    assert tocsin.delivery(1002).state == DeliveryState.SENT
    [answer] = tocsin.api.calls_to("answerCallbackQuery")
    assert answer.params["text"] == "✅ Pris en compte, merci."
    [message] = tocsin.api.messages(1001)
    # 12:02 UTC is 14:02 in Paris (summer time).
    assert (
        message.html == BODIES["fr"] + "\n\n✅ <b>Pris en compte</b> par Dr A. Martin "
        "le 30/08/2023 à 14:02"
    )
    assert message.reply_markup is None


async def test_in_english_for_an_english_speaking_head(tocsin: Tocsin) -> None:
    await broadcast_to_heads(tocsin)

    assert await tocsin.api.press_ack(tocsin.webhook, SECRET, chat_id=1002) == 200

    [message] = tocsin.api.messages(1002)
    assert message.text.endswith("✅ Acknowledged by Dr B. Durand on 2023-08-30 at 14:00")
    assert tocsin.api.calls_to("answerCallbackQuery")[0].params["text"] == (
        "✅ Acknowledged, thank you."
    )


async def test_a_second_press_changes_nothing(tocsin: Tocsin) -> None:
    await broadcast_to_heads(tocsin)
    assert await tocsin.api.press_ack(tocsin.webhook, SECRET, chat_id=1001) == 200
    first = tocsin.delivery(1001)
    [message] = tocsin.api.messages(1001)
    tocsin.clock.advance(60)

    # A stale client still showing the button presses it again.
    again = tocsin.api.callback_update(
        message, 1001, data=f"ack:{tocsin.runtime.service.tokens.token(first)}"
    )
    assert await tocsin.post(again) == 200

    assert tocsin.delivery(1001) == first
    assert message.edits == 1
    answers = [c.params["text"] for c in tocsin.api.calls_to("answerCallbackQuery")]
    assert answers == [
        "✅ Pris en compte, merci.",
        "Déjà pris en compte par Dr A. Martin le 30/08/2023 à 14:00.",
    ]


async def test_a_repeated_update_is_processed_once(tocsin: Tocsin) -> None:
    await broadcast_to_heads(tocsin)
    [message] = tocsin.api.messages(1001)
    update = tocsin.api.callback_update(message, 1001)

    assert [await tocsin.post(update), await tocsin.post(update)] == [200, 200]

    assert len(tocsin.api.calls_to("answerCallbackQuery")) == 1
    assert message.edits == 1


async def test_a_token_pressed_from_another_chat_acknowledges_nothing(tocsin: Tocsin) -> None:
    await broadcast_to_heads(tocsin)
    token = tocsin.runtime.service.tokens.token(tocsin.delivery(1001))
    [message_of_other] = tocsin.api.messages(1002)

    forged = tocsin.api.callback_update(message_of_other, 1002, data=f"ack:{token}")
    assert await tocsin.post(forged) == 200

    assert tocsin.delivery(1001).state == DeliveryState.SENT
    [answer] = tocsin.api.calls_to("answerCallbackQuery")
    assert answer.params["text"] == UNKNOWN_ACK
    assert tocsin.api.messages(1002)[0].edits == 0


@pytest.mark.parametrize("secret", [None, "", "webhook-secret-0123456788", "ü"])
async def test_a_wrong_or_missing_secret_is_refused_and_nothing_happens(
    tocsin: Tocsin, secret: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    await broadcast_to_heads(tocsin)
    [message] = tocsin.api.messages(1001)
    calls_before, incidents_before = len(tocsin.api.calls), dict(tocsin.store.incidents)
    caplog.set_level(logging.DEBUG)

    statuses = [
        await tocsin.post(tocsin.api.callback_update(message, 1001), secret=secret),
        await tocsin.post(
            tocsin.api.message_update(CRISIS_USER, CRISIS_USER, "/declare Orbis critical Panne"),
            secret=secret,
        ),
    ]

    assert statuses == [403, 403]
    assert tocsin.delivery(1001).state == DeliveryState.SENT
    assert tocsin.store.incidents == incidents_before
    assert len(tocsin.api.calls) == calls_before
    assert "Panne" not in caplog.text
    assert "ack:" not in caplog.text
    assert SECRET not in caplog.text


async def test_something_that_is_not_an_update_is_refused(tocsin: Tocsin) -> None:
    async with tocsin.session.post(
        tocsin.webhook, data=b"{not json", headers={SECRET_HEADER: SECRET}
    ) as response:
        assert response.status == 400
    async with tocsin.session.post(
        tocsin.webhook, json={"message": {}}, headers={SECRET_HEADER: SECRET}
    ) as response:
        assert response.status == 400


# --- escalation ----------------------------------------------------------------------------
async def test_a_head_who_has_not_acknowledged_in_time_is_escalated(tocsin: Tocsin) -> None:
    await broadcast_to_heads(tocsin)
    assert await tocsin.api.press_ack(tocsin.webhook, SECRET, chat_id=1001) == 200
    dispatcher = build_dispatcher(tocsin.runtime)

    tocsin.clock.advance(599)
    assert await dispatcher.escalate_due() == 0
    tocsin.clock.advance(2)
    assert await dispatcher.escalate_due() == 1
    await dispatcher.drain()

    silent = tocsin.delivery(1002)
    [escalation] = [d for d in tocsin.store.rows.values() if d.escalation_of == silent.id]
    assert (escalation.channel, escalation.address) == (ChannelName.EMAIL, "head1002@example.org")
    assert escalation.state == DeliveryState.SENT
    assert [m.recipient for m in tocsin.email.sent] == ["Dr B. Durand"]
    assert not any(d.escalation_of == tocsin.delivery(1001).id for d in tocsin.store.rows.values())


# --- commands ------------------------------------------------------------------------------
async def test_a_user_off_the_list_is_refused(tocsin: Tocsin) -> None:
    replies = await tocsin.command("/declare Orbis critical Orbis indisponible", user=999)

    assert replies == [REFUSAL]
    assert tocsin.store.incidents == {}


async def test_help_and_start_show_the_usage(tocsin: Tocsin) -> None:
    [help_text] = await tocsin.command("/help")
    [start_text] = await tocsin.command("/start")

    assert help_text.startswith("Usage:")
    assert "declare <system> <minor|major|critical> <text>" in help_text
    assert start_text == help_text


async def test_bad_input_gets_the_reason_and_changes_nothing(tocsin: Tocsin) -> None:
    [reply] = await tocsin.command("/declare Orbis catastrophic Orbis indisponible")

    assert reply.startswith("unknown severity 'catastrophic'")
    assert "Usage:" in reply
    assert tocsin.store.incidents == {}


async def test_a_command_for_another_bot_is_ignored(tocsin: Tocsin) -> None:
    assert await tocsin.command("/status@some_other_bot") == []
    assert await tocsin.command("/status@tocsin_sandbox_bot") == ["No open incident."]


async def test_the_crisis_cell_declares_updates_and_resolves(tocsin: Tocsin) -> None:
    [declared] = await tocsin.command("/declare Orbis critical Orbis indisponible")

    [incident_id] = tocsin.store.incidents
    assert declared == (
        f"Declared {incident_id}: Orbis indisponible (critical). Sending to department-heads."
    )
    assert tocsin.store.incidents[incident_id].declared_by == f"telegram:{CRISIS_USER}"
    assert {d.address for d in tocsin.store.rows.values()} == {"1001", "1002"}

    [status] = await tocsin.command(f"/status {incident_id}")
    assert status.startswith(f"{incident_id} [investigating, critical] Orbis indisponible")
    assert "queued 2" in status

    [updated] = await tocsin.command(f"/update {incident_id} identified Cause trouvée")
    assert updated == f"{incident_id} updated: identified."

    [resolved] = await tocsin.command(f"/resolve {incident_id}")
    assert resolved == f"{incident_id} resolved."
    assert tocsin.store.incidents[incident_id].status.value == "resolved"

    [again] = await tocsin.command(f"/resolve {incident_id}")
    assert again == f"{incident_id} is already resolved"
