"""Unknown outcomes per provider, against the shipped stand-ins over real HTTP.

Slack is reconciled before any resend (message metadata read back from the conversation's
history); Telegram cannot be asked, so it resends; a Telegram group upgraded to a supergroup
gets the message at its new id in the same attempt; a long Telegram message resumes at the
part that failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.channels.slack import METADATA_EVENT, SlackChannel
from bot.channels.telegram import TelegramChannel, build_bot, split_html
from bot.delivery.retry import RetryPolicy
from bot.delivery.worker import Dispatcher
from bot.domain.clock import FakeClock
from bot.domain.errors import TransientError, UnknownOutcome
from bot.domain.models import ChannelName, DeliveryState
from bot.interfaces import serialize
from bot.ports import OutboundMessage, Receipt
from bot.store.memory import MemoryStore
from tests import factories
from tests.interfaces.api_support import auth, running_api
from tocsin_sandbox.slack_api import SlackSandbox
from tocsin_sandbox.telegram_api import Failure, TelegramSandbox, visible_text

SLACK_TOKEN = "xoxb-test-token"
TELEGRAM_TOKEN = "123456:TEST-token-never-logged"
TIMEOUT = 0.5  # the clients' timeout: a held answer costs this much


def slack_message(address: str = "C0CRISIS", **changes: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": 41,
        "channel": ChannelName.SLACK,
        "address": address,
        "recipient": "#cellule-crise",
        "locale": "fr",
        "bodies": {"text": "Orbis est indisponible.", "slack": "*Orbis* est indisponible."},
        "require_ack": False,
        "ack_token": "tok-41",
        "queued_at": datetime.now(UTC) - timedelta(seconds=1),
    }
    fields.update(changes)
    return OutboundMessage(**fields)


def telegram_message(address: str, body: str, **changes: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": 52,
        "channel": ChannelName.TELEGRAM,
        "address": address,
        "recipient": "crisis-cell",
        "locale": "fr",
        "bodies": {"telegram": body},
        "require_ack": False,
        "ack_token": "tok-52",
    }
    fields.update(changes)
    return OutboundMessage(**fields)


@pytest.fixture
async def slack() -> AsyncIterator[SlackSandbox]:
    async with SlackSandbox(token=SLACK_TOKEN) as sandbox:
        yield sandbox


@pytest.fixture
async def telegram_api() -> AsyncIterator[TelegramSandbox]:
    async with TelegramSandbox(token=TELEGRAM_TOKEN) as sandbox:
        yield sandbox


def slack_channel(slack: SlackSandbox, session: aiohttp.ClientSession) -> SlackChannel:
    client = AsyncWebClient(
        token=SLACK_TOKEN, base_url=slack.api_url, session=session, retry_handlers=[]
    )
    return SlackChannel(client, timeout=TIMEOUT)


def telegram_channel(api: TelegramSandbox, session: aiohttp.ClientSession) -> TelegramChannel:
    return TelegramChannel(build_bot(TELEGRAM_TOKEN, api.url, session, read_timeout=TIMEOUT))


# --- Slack ---------------------------------------------------------------------------------
async def test_every_slack_post_carries_the_delivery_id_as_metadata(
    slack: SlackSandbox, session: aiohttp.ClientSession
) -> None:
    await slack_channel(slack, session).send(slack_message())

    [posted] = slack.messages_in("C0CRISIS")
    assert posted.metadata == {"event_type": METADATA_EVENT, "event_payload": {"delivery_id": 41}}


@pytest.mark.parametrize(
    ("address", "conversation"), [("C0CRISIS", "C0CRISIS"), ("U0MARTIN", "D0MARTIN")]
)
async def test_a_slack_post_answered_too_late_is_found_not_posted_again(
    slack: SlackSandbox, session: aiohttp.ClientSession, address: str, conversation: str
) -> None:
    slack.hold_after_post(address, seconds=10)
    with pytest.raises(UnknownOutcome):
        await slack_channel(slack, session).send(slack_message(address))

    # The next attempt, in another process: it knows only that one attempt ended unknown.
    other = slack_channel(slack, session)
    receipt = await other.send(slack_message(address, attempt=1, unknown_attempts=1))

    [posted] = slack.messages_in(conversation)
    assert receipt == Receipt(f"{conversation}:{posted.ts}", DeliveryState.DELIVERED, "reconciled")
    assert len(slack.calls_to("chat.postMessage")) == 1
    [history] = slack.calls_to("conversations.history")
    assert history.args["channel"] == conversation


async def test_the_same_process_reconciles_even_without_the_count(
    slack: SlackSandbox, session: aiohttp.ClientSession
) -> None:
    channel = slack_channel(slack, session)
    slack.hold_after_post("C0CRISIS", seconds=10)
    with pytest.raises(UnknownOutcome):
        await channel.send(slack_message())

    receipt = await channel.send(slack_message(attempt=1))

    assert receipt.code == "reconciled"
    assert len(slack.messages_in("C0CRISIS")) == 1


async def test_a_post_slack_never_took_is_posted_after_the_check(
    slack: SlackSandbox, session: aiohttp.ClientSession
) -> None:
    # Another delivery's message in the channel does not count as ours.
    await slack_channel(slack, session).send(slack_message(delivery_id=40))

    receipt = await slack_channel(slack, session).send(slack_message(unknown_attempts=1))

    assert receipt.code == "reconciled:not-found"
    assert len(slack.messages_in("C0CRISIS")) == 2


async def test_an_unreadable_history_now_is_retried_later_never_posted_blindly(
    slack: SlackSandbox, session: aiohttp.ClientSession
) -> None:
    slack.fail_method("conversations.history", status=503, times=1)

    with pytest.raises(TransientError, match="cannot reconcile"):
        await slack_channel(slack, session).send(slack_message(unknown_attempts=1))

    assert slack.calls_to("chat.postMessage") == []


async def test_a_history_the_app_may_not_read_means_posting_again(
    slack: SlackSandbox, session: aiohttp.ClientSession
) -> None:
    slack.fail_method("conversations.history", status=200, error="missing_scope", times=1)

    receipt = await slack_channel(slack, session).send(slack_message(unknown_attempts=1))

    assert receipt.code == "ok"  # not reconciled: the report counts a possible duplicate
    assert len(slack.messages_in("C0CRISIS")) == 1


# --- Telegram ------------------------------------------------------------------------------
async def test_a_telegram_send_answered_too_late_is_unknown_then_sent_again(
    telegram_api: TelegramSandbox, session: aiohttp.ClientSession
) -> None:
    channel = telegram_channel(telegram_api, session)
    telegram_api.hold_after_send(1001, seconds=10)
    message = telegram_message("1001", "<b>Panne Orbis</b>")

    with pytest.raises(UnknownOutcome):
        await channel.send(message)
    receipt = await channel.send(replace(message, attempt=1, unknown_attempts=1))

    # Nothing to ask Telegram: the chat has it twice, and the record says it may.
    assert len(telegram_api.messages(1001)) == 2
    assert receipt.state == DeliveryState.SENT


async def test_a_group_upgraded_to_a_supergroup_gets_the_message_there_once(
    telegram_api: TelegramSandbox, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    channel = telegram_channel(telegram_api, session)
    telegram_api.migrate(-1005, -1001234567890)

    first = await channel.send(telegram_message("-1005", "<b>Panne Orbis</b>"))
    second = await channel.send(telegram_message("-1005", "Mise à jour", delivery_id=53))

    assert first.moved_to == "-1001234567890"
    assert second.moved_to == "-1001234567890"
    assert [m.text for m in telegram_api.messages(-1001234567890)] == ["Panne Orbis", "Mise à jour"]
    assert telegram_api.messages(-1005) == []
    # The old id was tried once, by the first delivery only; the second went straight there.
    assert len(telegram_api.calls_to("sendMessage", -1005)) == 1
    warnings = [r for r in caplog.records if "supergroup" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_long_message_resumes_at_the_part_that_failed(
    telegram_api: TelegramSandbox, session: aiohttp.ClientSession
) -> None:
    channel = telegram_channel(telegram_api, session)
    body = "\n".join(f"Ligne {i} : procédure papier pour le service {i}." for i in range(200))
    parts = split_html(body)
    assert len(parts) == 3
    telegram_api.fail_later(1001, Failure.server_error(502), after=1)  # part 2, once
    message = telegram_message("1001", body)

    with pytest.raises(TransientError, match=r"part 2 of 3; 1 sent"):
        await channel.send(message)
    receipt = await channel.send(replace(message, attempt=1))

    sent = [m.text for m in telegram_api.messages(1001)]
    assert sent == [visible_text(p) for p in parts]
    assert receipt.provider_id == f"1001:{telegram_api.messages(1001)[-1].message_id}"
    # The next delivery of a long message starts at its own first part.
    await channel.send(replace(message, delivery_id=53))
    assert len(telegram_api.messages(1001)) == 6


# --- through the worker and the API --------------------------------------------------------
async def test_a_moved_group_is_recorded_by_the_worker_and_shown_with_the_channels(
    telegram_api: TelegramSandbox, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, clock = MemoryStore(), FakeClock()
    changes = factories.declaration(0)
    stmt = replace(changes.statements[0], bodies={"telegram": "<b>Panne Orbis</b>"})
    changes.statements = [stmt]
    changes.deliveries = [factories.new_delivery(stmt, "-1005", ChannelName.TELEGRAM)]
    await store.commit(changes)
    telegram_api.migrate(-1005, -1001234567890)
    worker = Dispatcher(
        store,
        {ChannelName.TELEGRAM: telegram_channel(telegram_api, session)},
        clock,
        retry=RetryPolicy(jitter=lambda: 0.0),
    )

    await worker.drain()

    [delivery] = await store.deliveries("INC-2023-0830-01")
    assert delivery.state == DeliveryState.SENT
    assert len(telegram_api.messages(-1001234567890)) == 1
    assert await store.address_moves() == [("telegram", "-1005", "-1001234567890", clock.now())]
    async with running_api(monkeypatch, store=store) as api:
        response = await api.client.get("/api/v1/channels", headers=auth("viewer"))
        assert response.status == 200
        [telegram] = [c for c in await response.json() if c["name"] == "telegram"]
    assert telegram["moved"] == [
        {"from": "-1005", "to": "-1001234567890", "since": serialize.iso(clock.now())}
    ]
