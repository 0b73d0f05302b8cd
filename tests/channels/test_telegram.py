"""Telegram channel: python-telegram-bot over real HTTP against the shipped Bot API stand-in,
alone and through the real Dispatcher (rate limits, 429s, failover)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from bot.channels import telegram
from bot.channels.telegram import TelegramChannel, build_bot, split_html, utf16_len
from bot.config import settings_from_dict
from bot.delivery.ratelimit import RateLimiter
from bot.delivery.retry import RetryPolicy
from bot.delivery.worker import Dispatcher
from bot.domain.clock import FakeClock
from bot.domain.errors import PermanentError, TransientError, UnknownOutcome
from bot.domain.models import (
    ChannelName,
    DeliveryPolicy,
    DeliveryState,
    StatementKind,
)
from bot.ports import ALL_KEYS, Changes, Channel, OutboundMessage, Receipt
from bot.store.memory import MemoryStore
from tests.factories import T0, incident, new_delivery, statement
from tests.fakes.http_standin import HttpStandin, Reply
from tocsin_sandbox.telegram_api import Failure, TelegramSandbox, visible_text

TOKEN = "123456:TEST-token-never-logged"
BODY = "<b>Panne Orbis</b>\nUtilisez les procédures papier &amp; le SAMU reste disponible."


def outbound(address: str = "1001", **changes: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": 7,
        "channel": ChannelName.TELEGRAM,
        "address": address,
        "recipient": "Dr A. Martin",
        "locale": "fr",
        "bodies": {"telegram": BODY, "text": "x"},
        "require_ack": True,
        "ack_token": "Xq3-opaque-token_42",
        "idempotency_key": "tocsin-7",
    }
    fields.update(changes)
    return OutboundMessage(**fields)


@pytest.fixture
async def api() -> AsyncIterator[TelegramSandbox]:
    async with TelegramSandbox(token=TOKEN) as sandbox:
        yield sandbox


class Monotonic:
    """A settable monotonic clock for the channel's group guard and the worker's buckets."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()

    def __call__(self) -> float:
        return self.clock.now().timestamp()


@pytest.fixture
def fake_time() -> Monotonic:
    return Monotonic()


@pytest.fixture
def channel(
    api: TelegramSandbox, session: aiohttp.ClientSession, fake_time: Monotonic
) -> TelegramChannel:
    return TelegramChannel(build_bot(TOKEN, api.url, session), monotonic=fake_time)


# --- what it sends -----------------------------------------------------------------------
@pytest.mark.parametrize(("locale", "label"), [("fr", "Pris en compte"), ("en", "Acknowledge")])
async def test_sends_html_with_the_ack_button_in_the_heads_language(
    channel: TelegramChannel, api: TelegramSandbox, locale: str, label: str
) -> None:
    receipt = await channel.send(outbound(locale=locale))

    [call] = api.calls_to("sendMessage")
    assert call.params["parse_mode"] == "HTML"
    assert call.params["text"] == BODY
    [message] = api.messages(1001)
    assert message.text == (
        "Panne Orbis\nUtilisez les procédures papier & le SAMU reste disponible."
    )
    assert message.reply_markup == {
        "inline_keyboard": [[{"text": label, "callback_data": "ack:Xq3-opaque-token_42"}]]
    }
    assert receipt == Receipt(f"1001:{message.message_id}", DeliveryState.SENT, "200")


async def test_no_button_when_no_acknowledgement_is_required(
    channel: TelegramChannel, api: TelegramSandbox
) -> None:
    await channel.send(outbound("-1001234", require_ack=False))

    [message] = api.messages(-1001234)
    assert message.reply_markup is None
    assert "reply_markup" not in api.calls_to("sendMessage")[0].params


async def test_a_long_statement_is_split_on_lines_with_the_button_last(
    channel: TelegramChannel, api: TelegramSandbox
) -> None:
    lines = [
        f"<b>Service {i}</b> : procédure dégradée n°{i} — fiche papier &amp; registre"
        for i in range(150)
    ]
    body = "<i>" + "\n".join(lines) + "</i>"

    receipt = await channel.send(outbound(bodies={"telegram": body}))

    messages = api.messages(1001)
    assert len(messages) >= 2
    assert all(utf16_len(m.text) <= 4096 for m in messages)
    assert [m.reply_markup is not None for m in messages] == [False] * (len(messages) - 1) + [True]
    assert "\n".join(m.text for m in messages) == visible_text(body)
    assert receipt.provider_id == f"1001:{messages[-1].message_id}"


def test_split_closes_and_reopens_tags_at_each_cut() -> None:
    body = '<a href="https://status.example.org">' + "\n".join(["ligne"] * 30) + "</a>"

    parts = split_html(body, limit=60)

    assert len(parts) > 1
    for part in parts:
        assert part.startswith('<a href="https://status.example.org">')
        assert part.endswith("</a>")
        assert utf16_len(part) <= 60
        visible_text(part)  # parses as Telegram HTML
    assert "\n".join(visible_text(p) for p in parts) == visible_text(body)


def test_split_cuts_a_line_without_newlines_between_words_never_inside_an_entity() -> None:
    body = "Orbis &amp; SAMU " * 600  # one line of ~10,000 characters

    parts = split_html(body)

    assert len(parts) == 3
    assert all(utf16_len(p) <= 4096 for p in parts)
    assert " ".join(visible_text(p) for p in parts).split() == visible_text(body).split()


async def test_nothing_to_send_or_nowhere_to_send_is_permanent(
    channel: TelegramChannel, api: TelegramSandbox
) -> None:
    with pytest.raises(PermanentError, match="no Telegram rendering"):
        await channel.send(outbound(bodies={"text": "only text"}))
    with pytest.raises(PermanentError, match="not a Telegram chat id"):
        await channel.send(outbound("a.martin@example.org"))
    assert api.calls == []


# --- what it makes of Telegram's answers ----------------------------------------------------
@pytest.mark.parametrize(
    ("failure", "error", "code", "retry_after", "scope", "reason"),
    [
        (Failure.blocked(), PermanentError, "403", None, None, "bot was blocked by the user"),
        (Failure.chat_not_found(), PermanentError, "400", None, None, "chat not found"),
        (Failure.flood(retry_after=7), TransientError, "429", 7.0, "destination", "Flood"),
        (Failure.server_error(500), TransientError, "500", None, "provider", "Internal"),
        (Failure.server_error(502), TransientError, "502", None, "provider", "Bad Gateway"),
        (Failure.server_error(503), TransientError, "503", None, "provider", "Unavailable"),
    ],
)
async def test_telegram_errors_map_to_permanent_or_transient(
    channel: TelegramChannel,
    api: TelegramSandbox,
    failure: Failure,
    error: type[Exception],
    code: str,
    retry_after: float | None,
    scope: str | None,
    reason: str,
) -> None:
    api.fail(1001, failure)

    with pytest.raises(error) as caught:
        await channel.send(outbound())

    assert caught.value.code == code  # type: ignore[attr-defined]
    assert reason.lower() in str(caught.value).lower()
    if isinstance(caught.value, TransientError):
        assert (caught.value.retry_after, caught.value.scope) == (retry_after, scope)
    assert [c.status for c in api.calls_to("sendMessage")] == [int(code)]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("<b>Orbis", 'find end tag corresponding to start tag "b"'),
        ("<p>Orbis</p>", 'Unsupported start tag "p"'),
        ("Orbis & SAMU", 'character "&"'),
    ],
)
async def test_what_telegram_refuses_is_permanent(
    channel: TelegramChannel, body: str, why: str
) -> None:
    # The stand-in parses HTML as Telegram does, so a rendering mistake shows up here.
    with pytest.raises(PermanentError) as caught:
        await channel.send(outbound(bodies={"telegram": body}))

    assert caught.value.code == "400"
    assert why.lower() in str(caught.value).lower()


async def test_a_refused_token_is_permanent(
    api: TelegramSandbox, session: aiohttp.ClientSession
) -> None:
    channel = TelegramChannel(build_bot("999:wrong-token", api.url, session))

    with pytest.raises(PermanentError) as caught:
        await channel.send(outbound())

    assert caught.value.code == "401"
    assert "999:wrong-token" not in str(caught.value)


@pytest.mark.parametrize("reply", [Reply.hang(), Reply.reset()], ids=["hang", "reset"])
async def test_a_hang_or_a_reset_after_sending_is_unknown(
    session: aiohttp.ClientSession, reply: Reply
) -> None:
    # The Bot API cannot be asked whether the message arrived: the outcome stays unknown.
    async with HttpStandin() as standin:
        standin.script(f"/bot{TOKEN}/sendMessage", reply)
        channel = TelegramChannel(build_bot(TOKEN, standin.url, session, read_timeout=0.3))

        with pytest.raises(UnknownOutcome) as caught:
            await channel.send(outbound())

    assert TOKEN not in str(caught.value)


async def test_the_request_is_one_json_object_with_the_button_nested(
    session: aiohttp.ClientSession,
) -> None:
    chat = {"id": 1001, "type": "private"}
    async with HttpStandin(
        Reply(200, {"ok": True, "result": {"message_id": 5, "chat": chat}})
    ) as api:
        channel = TelegramChannel(build_bot(TOKEN, api.url, session))

        receipt = await channel.send(outbound())

        [request] = await api.wait_for(1)
    assert request.headers["Content-Type"] == "application/json"
    assert request.json == {
        "chat_id": 1001,
        "text": BODY,
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": True},
        "reply_markup": {
            "inline_keyboard": [
                [{"text": "Pris en compte", "callback_data": "ack:Xq3-opaque-token_42"}]
            ]
        },
    }
    assert receipt == Receipt("1001:5", DeliveryState.SENT, "200")


@pytest.mark.parametrize(
    ("reply", "error", "reason"),
    [
        (Reply(200, {"ok": True, "result": True}), UnknownOutcome, "names no message"),
        (Reply(200, {"ok": True, "result": {"message_id": 5}}), UnknownOutcome, "names no"),
        (Reply(200, text="<html>proxy</html>"), TransientError, "invalid server response"),
        (Reply(200, [{"ok": True}]), TransientError, "not a json object"),
    ],
    ids=["result-true", "no-chat", "not-json", "json-list"],
)
async def test_an_odd_success_answer_gets_a_clear_error(
    session: aiohttp.ClientSession, reply: Reply, error: type[Exception], reason: str
) -> None:
    async with HttpStandin(reply) as api:
        channel = TelegramChannel(build_bot(TOKEN, api.url, session))

        with pytest.raises(error) as caught:
            await channel.send(outbound())

    assert reason in str(caught.value).lower()


async def test_an_unreachable_api_is_transient_and_never_shows_the_token(
    session: aiohttp.ClientSession,
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    channel = TelegramChannel(build_bot(TOKEN, f"http://127.0.0.1:{port}", session))

    with pytest.raises(TransientError) as caught:
        await channel.send(outbound())

    assert "connect" in str(caught.value).lower()
    assert TOKEN not in str(caught.value)
    assert caught.value.__cause__ is None or TOKEN not in str(caught.value.__cause__)


# --- limits --------------------------------------------------------------------------------
def test_limits_per_person_and_per_group(channel: TelegramChannel) -> None:
    assert (channel.rate, channel.burst) == (30.0, 30)
    assert channel.destination_limit("1001") == (1.0, 1)
    assert channel.destination_limit("-1001234") == (20 / 60, 1)
    assert channel.provider_key("1001") == channel.provider_key("-1001234") == "telegram"


async def test_a_group_never_gets_more_than_20_messages_a_minute(
    channel: TelegramChannel, api: TelegramSandbox, fake_time: Monotonic
) -> None:
    for _ in range(20):
        await channel.send(outbound("-1001234", require_ack=False))
        fake_time.clock.advance(1)

    with pytest.raises(TransientError) as caught:
        await channel.send(outbound("-1001234", require_ack=False))
    await channel.send(outbound("1001"))  # a person is not held back by the group

    assert caught.value.scope == "destination"
    assert caught.value.retry_after == pytest.approx(40.0)
    assert len(api.messages(-1001234)) == 20
    fake_time.clock.advance(40)
    await channel.send(outbound("-1001234", require_ack=False))
    assert len(api.messages(-1001234)) == 21


async def test_built_from_settings_with_the_token_from_the_environment(
    api: TelegramSandbox, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TG_TOKEN_FOR_TEST", TOKEN)
    settings = settings_from_dict(
        {"channels": {"telegram": {"token_env": "TG_TOKEN_FOR_TEST", "api_url": api.url + "/"}}}
    )

    channel = telegram.from_settings(settings, session)
    receipt = await channel.send(outbound())

    assert isinstance(channel, Channel)
    assert (receipt.provider_id or "").startswith("1001:")
    assert TOKEN not in repr(channel)


# --- through the real Dispatcher -------------------------------------------------------------
HEADS_POLICY = DeliveryPolicy(
    channels=(ChannelName.TELEGRAM, ChannelName.SMS, ChannelName.EMAIL),
    require_ack=True,
    escalate_after_s=600,
    escalate_via=ChannelName.SMS,
    kind=StatementKind.DEPARTMENT_HEADS,
)


class Recording:
    """A channel that accepts everything (the SMS and e-mail gateways are not under test)."""

    rate, burst, destination_rate, destination_burst = 1000.0, 1000, None, 1
    keys = ALL_KEYS

    def __init__(self, name: ChannelName) -> None:
        self.name = name
        self.sent: list[OutboundMessage] = []

    def provider_key(self, address: str) -> str:
        return self.name.value

    async def send(self, message: OutboundMessage) -> Receipt:
        self.sent.append(message)
        return Receipt(f"{self.name.value}-{len(self.sent)}")

    async def close(self) -> None:
        return None


def head(i: int) -> dict[str, str]:
    return {"telegram": str(1000 + i), "sms": f"+3361234{i:04d}", "email": f"head{i}@example.org"}


def broadcast(heads: int, seq: int = 1) -> Changes:
    """One event to ``heads`` department heads: their statements and Telegram deliveries."""
    full = statement(
        kind=StatementKind.DEPARTMENT_HEADS,
        seq=seq,
        bodies={"subject": "Orbis", "text": "Orbis", "telegram": f"<b>Orbis</b> : message {seq}"},
    )
    short = statement(kind=StatementKind.SMS, seq=seq, bodies={"sms": f"Orbis: message {seq}"})
    return Changes(
        incident=incident(audiences=("department-heads",)) if seq == 1 else None,
        new_incident=seq == 1,
        statements=[full, short],
        deliveries=[
            new_delivery(
                full,
                head(i)["telegram"],
                ChannelName.TELEGRAM,
                audience="department-heads",
                recipient=f"Chef de service {i}",
                contacts=head(i),
                policy=HEADS_POLICY,
            )
            for i in range(1, heads + 1)
        ],
    )


class Rig:
    """A Dispatcher over a memory store, the real Telegram channel and recording SMS/e-mail."""

    def __init__(self, api: TelegramSandbox, session: aiohttp.ClientSession) -> None:
        self.clock = FakeClock(T0)
        self.time = Monotonic(self.clock)
        self.store = MemoryStore()
        self.telegram = TelegramChannel(build_bot(TOKEN, api.url, session), monotonic=self.time)
        self.sms, self.email = Recording(ChannelName.SMS), Recording(ChannelName.EMAIL)
        self.limiter = RateLimiter(clock=self.time)
        self.dispatcher = Dispatcher(
            self.store,
            {
                ChannelName.TELEGRAM: self.telegram,
                ChannelName.SMS: self.sms,
                ChannelName.EMAIL: self.email,
            },
            self.clock,
            limiter=self.limiter,
            retry=RetryPolicy(jitter=lambda: 0.0),
        )

    def states(self) -> dict[tuple[str, str], str]:
        return {(d.channel.value, d.address): d.state.value for d in self.store.rows.values()}


@pytest.fixture
def rig(api: TelegramSandbox, session: aiohttp.ClientSession) -> Rig:
    return Rig(api, session)


async def test_broadcast_to_department_heads_keeps_one_message_a_second_per_chat(
    rig: Rig, api: TelegramSandbox
) -> None:
    await rig.store.commit(broadcast(12, seq=1))
    await rig.store.commit(broadcast(12, seq=2))  # an update right after the declaration

    await rig.dispatcher.drain()

    assert [len(api.messages(1000 + i)) for i in range(1, 13)] == [1] * 12
    waiting = [d for d in rig.store.rows.values() if d.state == DeliveryState.QUEUED]
    assert len(waiting) == 12
    assert all(d.attempts == 0 for d in waiting)  # held back by the bucket, not failed
    assert all(d.next_attempt_at == T0 + timedelta(seconds=1) for d in waiting)


async def test_a_message_held_back_by_the_chat_limit_goes_out_a_second_later(
    rig: Rig, api: TelegramSandbox
) -> None:
    await rig.store.commit(broadcast(2, seq=1))
    await rig.store.commit(broadcast(2, seq=2))
    await rig.dispatcher.drain()

    for _ in range(3):
        rig.clock.advance(1)
        await rig.dispatcher.drain()

    assert [m.text for m in api.messages(1001)] == ["Orbis : message 1", "Orbis : message 2"]
    assert set(rig.states().values()) == {"sent"}


async def test_a_blocked_head_fails_over_to_sms(rig: Rig, api: TelegramSandbox) -> None:
    api.fail(1002, Failure.blocked(), times=None)
    await rig.store.commit(broadcast(3))

    await rig.dispatcher.drain()

    rows = sorted(rig.store.rows.values(), key=lambda d: d.id)
    blocked = next(d for d in rows if d.address == "1002")
    assert blocked.state == DeliveryState.FAILED
    [attempt] = rig.store.attempt_rows[blocked.id]
    assert (attempt.outcome, attempt.code) == ("failed", "403")
    assert "bot was blocked by the user" in (attempt.error or "")
    [follow_up] = [d for d in rows if d.failover_of == blocked.id]
    assert (follow_up.channel, follow_up.address) == (ChannelName.SMS, "+33612340002")
    assert follow_up.state == DeliveryState.SENT
    assert [m.bodies["sms"] for m in rig.sms.sent] == ["Orbis: message 1"]
    assert rig.states()[("telegram", "1001")] == rig.states()[("telegram", "1003")] == "sent"


async def test_a_429_on_one_chat_pauses_only_that_chat(rig: Rig, api: TelegramSandbox) -> None:
    api.fail(1003, Failure.flood(retry_after=30))
    await rig.store.commit(broadcast(5))

    await rig.dispatcher.drain()

    flooded = next(d for d in rig.store.rows.values() if d.address == "1003")
    assert flooded.state == DeliveryState.RETRYING
    assert flooded.next_attempt_at == T0 + timedelta(seconds=30)
    assert rig.store.attempt_rows[flooded.id][-1].code == "429"
    assert rig.limiter.paused_for("dest:telegram:1003") == pytest.approx(30.0)
    assert rig.limiter.paused_for("provider:telegram") == 0.0
    assert {i: len(api.messages(1000 + i)) for i in range(1, 6)} == {1: 1, 2: 1, 3: 0, 4: 1, 5: 1}

    rig.clock.advance(30)
    await rig.dispatcher.drain()

    assert [m.text for m in api.messages(1003)] == ["Orbis : message 1"]
    assert set(rig.states().values()) == {"sent"}


async def test_while_one_chat_waits_out_a_429_the_next_update_reaches_the_others(
    rig: Rig, api: TelegramSandbox
) -> None:
    api.fail(1003, Failure.flood(retry_after=30))
    await rig.store.commit(broadcast(5, seq=1))
    await rig.dispatcher.drain()

    rig.clock.advance(2)
    await rig.store.commit(broadcast(5, seq=2))
    await rig.dispatcher.drain()

    assert {i: len(api.messages(1000 + i)) for i in range(1, 6)} == {1: 2, 2: 2, 3: 0, 4: 2, 5: 2}
