"""The delivery engine against a real local HTTP stand-in and the memory/SQLite stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from bot.channels.webhook import WebhookChannel
from bot.config import WebhookChannelSettings
from bot.delivery.retry import RetryPolicy
from bot.delivery.worker import DispatchConfig, Dispatcher
from bot.domain.clock import FakeClock
from bot.domain.errors import PermanentError, TransientError
from bot.domain.models import ChannelName, DeliveryPolicy, DeliveryState, StatementKind
from bot.ports import Changes, Store
from bot.store.memory import MemoryStore
from bot.store.sqlite import SqliteStore
from tests import factories as f
from tests.fakes.channels import RecordingChannel
from tests.fakes.http_standin import HttpStandin, Reply

NO_JITTER = RetryPolicy(max_attempts=4, backoff_base=1.0, quick_tries=2, jitter=lambda: 1.0)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def standin() -> AsyncIterator[HttpStandin]:
    async with HttpStandin(default=Reply(200, {"ok": True, "id": "m"})) as s:
        yield s


def webhook_declaration(url: str, n: int, path: str = "/hook") -> Changes:
    changes = f.declaration(0)
    stmt = changes.statements[0]
    changes.deliveries = [
        f.new_delivery(stmt, f"{url}{path}", ChannelName.WEBHOOK, audience="intranet")
        for _ in range(n)
    ]
    return changes


def unlimited(channel: WebhookChannel) -> WebhookChannel:
    """The engine tests exercise retries, not the adapter's per-URL politeness limit."""
    channel.destination_rate = None
    channel.rate, channel.burst = 10_000.0, 10_000
    return channel


def dispatcher(store: Store, channels: dict, clock: FakeClock, **config: float) -> Dispatcher:
    for channel in channels.values():
        if isinstance(channel, WebhookChannel):
            unlimited(channel)
    return Dispatcher(
        store, channels, clock, config=DispatchConfig(**config), retry=NO_JITTER, worker_id="w1"
    )


async def test_fan_out_is_delivered_and_every_attempt_recorded(
    session: aiohttp.ClientSession, standin: HttpStandin
) -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(webhook_declaration(standin.url, 20))
    worker = dispatcher(
        store, {ChannelName.WEBHOOK: WebhookChannel(session, WebhookChannelSettings())}, clock
    )
    assert await worker.drain() == 20
    assert await store.delivery_counts("INC-2023-0830-01") == {"delivered": 20}
    assert len(standin.requests_to("/hook")) == 20
    rows = await store.deliveries("INC-2023-0830-01")
    attempts = await store.attempts([d.id for d in rows])
    assert all([a.outcome for a in attempts[d.id]] == ["delivered"] for d in rows)
    keys = {r.headers["Idempotency-Key"] for r in standin.requests_to("/hook")}
    assert len(keys) == 20


async def test_transient_error_is_retried_within_the_attempt(
    session: aiohttp.ClientSession, standin: HttpStandin
) -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(webhook_declaration(standin.url, 1))
    standin.script("/hook", Reply(503), Reply(200, {"ok": True, "id": "x1"}))
    worker = dispatcher(
        store, {ChannelName.WEBHOOK: WebhookChannel(session, WebhookChannelSettings())}, clock
    )
    await worker.drain()
    [d] = await store.deliveries("INC-2023-0830-01")
    assert d.state == DeliveryState.DELIVERED and d.attempts == 2
    outcomes = [(a.outcome, a.code) for a in (await store.attempts([d.id]))[d.id]]
    assert outcomes == [("retry", "503"), ("delivered", "200")]


async def test_retry_after_is_honoured_and_persisted(
    session: aiohttp.ClientSession, standin: HttpStandin
) -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(webhook_declaration(standin.url, 1))
    standin.script("/hook", Reply(429, {"error": "slow down"}, headers={"Retry-After": "30"}))
    worker = dispatcher(
        store, {ChannelName.WEBHOOK: WebhookChannel(session, WebhookChannelSettings())}, clock
    )
    await worker.drain()
    [d] = await store.deliveries("INC-2023-0830-01")
    assert d.state == DeliveryState.RETRYING
    assert d.next_attempt_at is not None and d.next_attempt_at >= clock.now() + timedelta(
        seconds=30
    )
    assert len(standin.requests_to("/hook")) == 1  # no quick retry against a 429
    clock.advance(29)
    assert await worker.drain() == 0
    clock.advance(2)
    await worker.drain()
    assert (await store.get_delivery(d.id)).state == DeliveryState.DELIVERED  # type: ignore[union-attr]


async def test_timeouts_and_resets_are_transient(
    session: aiohttp.ClientSession, standin: HttpStandin
) -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(webhook_declaration(standin.url, 1, "/hang"))
    await store.commit(
        webhook_declaration(standin.url, 1, "/reset").__class__(
            deliveries=[
                f.new_delivery(
                    (await store.statements("INC-2023-0830-01"))[0],
                    f"{standin.url}/reset",
                    ChannelName.WEBHOOK,
                )
            ]
        )
    )
    standin.script("/hang", Reply.hang(), Reply.hang())
    standin.script("/reset", Reply.reset(), Reply.reset())
    worker = dispatcher(
        store,
        {ChannelName.WEBHOOK: WebhookChannel(session, WebhookChannelSettings(timeout=0.3))},
        clock,
    )
    await worker.drain()
    rows = await store.deliveries("INC-2023-0830-01")
    assert [d.state for d in rows] == [DeliveryState.RETRYING, DeliveryState.RETRYING]
    assert all(d.attempts == 2 for d in rows)
    clock.advance(60)
    await worker.drain()
    assert await store.delivery_counts("INC-2023-0830-01") == {"delivered": 2}


async def test_permanent_error_fails_at_once_and_fails_over(
    session: aiohttp.ClientSession, standin: HttpStandin
) -> None:
    store, clock = MemoryStore(), FakeClock()
    changes = f.declaration(0)
    stmt = changes.statements[0]
    policy = DeliveryPolicy(channels=(ChannelName.WEBHOOK, ChannelName.EMAIL))
    contacts = {"webhook": f"{standin.url}/gone", "email": "a.martin@example.org"}
    changes.deliveries = [
        f.new_delivery(
            stmt,
            contacts["webhook"],
            ChannelName.WEBHOOK,
            contacts=contacts,
            policy=policy,
            recipient="Dr Martin",
        )
    ]
    await store.commit(changes)
    standin.script("/gone", Reply(410, {"error": "gone"}))
    email = RecordingChannel(ChannelName.EMAIL)
    worker = dispatcher(
        store,
        {
            ChannelName.WEBHOOK: WebhookChannel(session, WebhookChannelSettings()),
            ChannelName.EMAIL: email,
        },
        clock,
    )
    await worker.drain()
    failed, followed = await store.deliveries(stmt.incident_id)
    assert failed.state == DeliveryState.FAILED and failed.attempts == 1
    assert "410" in (failed.last_error or "")
    assert (followed.channel, followed.state, followed.failover_of) == (
        ChannelName.EMAIL,
        DeliveryState.DELIVERED,
        failed.id,
    )
    assert [m.address for _, m in email.sent] == ["a.martin@example.org"]
    assert len(standin.requests_to("/gone")) == 1


async def test_sms_failover_carries_the_short_statement() -> None:
    store, clock = MemoryStore(), FakeClock()
    changes = f.declaration(0)
    long = changes.statements[0]
    short = f.statement(kind=StatementKind.SMS, bodies={"sms": "Orbis HS", "text": "Orbis HS"})
    changes.statements.append(short)
    policy = DeliveryPolicy(
        channels=(ChannelName.TELEGRAM, ChannelName.SMS), kind=StatementKind.INTERNAL
    )
    contacts = {"telegram": "1001", "sms": "+33612345678"}
    changes.deliveries = [
        f.new_delivery(long, "1001", ChannelName.TELEGRAM, contacts=contacts, policy=policy)
    ]
    await store.commit(changes)
    telegram, sms = RecordingChannel(ChannelName.TELEGRAM), RecordingChannel(ChannelName.SMS)
    telegram.script.append(PermanentError("Forbidden: bot was blocked by the user", "403"))
    await dispatcher(store, {ChannelName.TELEGRAM: telegram, ChannelName.SMS: sms}, clock).drain()
    [(_, message)] = sms.sent
    assert message.bodies["sms"] == "Orbis HS" and message.address == "+33612345678"


async def test_gives_up_after_max_attempts(standin: HttpStandin) -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(webhook_declaration("http://unused", 1))
    flaky = RecordingChannel(ChannelName.WEBHOOK)
    flaky.script.extend(TransientError("503 unavailable", "503") for _ in range(10))
    worker = dispatcher(store, {ChannelName.WEBHOOK: flaky}, clock)
    for _ in range(3):
        await worker.drain()
        clock.advance(3600)
    [d] = await store.deliveries("INC-2023-0830-01")
    assert d.state == DeliveryState.FAILED and d.attempts == 4
    assert d.last_error == "gave up after 4 attempts: 503 unavailable"


async def test_destination_rate_limit_spaces_sends() -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(webhook_declaration("http://one", 6))
    channel = RecordingChannel(ChannelName.WEBHOOK, destination_rate=20.0)
    worker = dispatcher(store, {ChannelName.WEBHOOK: channel}, clock, inline_wait_max=5.0)
    started = time.monotonic()
    await worker.drain()
    times = [t for t, _ in channel.sent]
    assert len(times) == 6
    # 20/s without burst: the k-th send never goes before k × 50 ms (a late timer may only
    # delay a send, never bring the next one forward).
    for k, sent_at in enumerate(sorted(times)):
        assert sent_at - started >= k * 0.05 - 0.005


async def test_long_rate_limit_wait_goes_back_to_the_queue() -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(webhook_declaration("http://one", 3))
    channel = RecordingChannel(ChannelName.WEBHOOK, destination_rate=1.0)
    worker = dispatcher(store, {ChannelName.WEBHOOK: channel}, clock, inline_wait_max=0.5)
    await worker.drain()
    assert len(channel.sent) == 1
    rows = await store.deliveries("INC-2023-0830-01")
    assert sorted(d.state for d in rows) == [
        DeliveryState.DELIVERED,
        DeliveryState.QUEUED,
        DeliveryState.QUEUED,
    ]
    assert all(d.attempts == 0 for d in rows if d.state == DeliveryState.QUEUED)


async def test_crashed_worker_loses_nothing(tmp_path: Path) -> None:
    """A worker cancelled mid-send leaves leased rows; after the lease they are re-claimed."""
    store, clock = SqliteStore(str(tmp_path / "q.db")), FakeClock()
    await store.open()
    await store.migrate()
    try:
        await store.commit(webhook_declaration("http://sink", 30))
        stuck = RecordingChannel(ChannelName.WEBHOOK)
        stuck.gate = asyncio.Event()  # never opened: every send hangs
        first = dispatcher(
            store,
            {ChannelName.WEBHOOK: stuck},
            clock,
            concurrency=10,
            lease_seconds=60,
            shutdown_timeout=0,
        )
        stop = asyncio.Event()
        crashed = asyncio.create_task(first.run(stop))
        await stuck.started.wait()
        crashed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await crashed
        assert await store.delivery_counts("INC-2023-0830-01") == {"sending": 10, "queued": 20}
        healthy = RecordingChannel(ChannelName.WEBHOOK)
        second = Dispatcher(
            store,
            {ChannelName.WEBHOOK: healthy},
            clock,
            worker_id="w2",
            config=DispatchConfig(concurrency=10),
        )
        await second.drain()
        assert await store.delivery_counts("INC-2023-0830-01") == {"delivered": 20, "sending": 10}
        clock.advance(61)
        await second.drain()
        assert await store.delivery_counts("INC-2023-0830-01") == {"delivered": 30}
        assert len(healthy.sent) == 30  # the stuck sends never reached a provider
    finally:
        await store.close()


async def test_graceful_shutdown_finishes_in_flight_sends() -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(webhook_declaration("http://sink", 5))
    slow = RecordingChannel(ChannelName.WEBHOOK)
    slow.gate = asyncio.Event()
    worker = dispatcher(store, {ChannelName.WEBHOOK: slow}, clock, shutdown_timeout=5)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await slow.started.wait()
    stop.set()
    slow.gate.set()
    await task
    assert await store.delivery_counts("INC-2023-0830-01") == {"delivered": 5}


async def test_rows_claimed_but_never_started_go_back_to_the_queue_at_shutdown() -> None:
    """A worker holds up to a batch of claimed rows waiting for a send slot; stopping it gives
    them back due at once (no lease to wait out), and another worker sends each exactly once."""
    store, clock = MemoryStore(), FakeClock()
    await store.commit(webhook_declaration("http://sink", 10))
    slow = RecordingChannel(ChannelName.WEBHOOK)
    slow.gate = asyncio.Event()
    worker = dispatcher(
        store, {ChannelName.WEBHOOK: slow}, clock, concurrency=2, batch_size=10, shutdown_timeout=5
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await slow.started.wait()
    held = [d for d in await store.deliveries("INC-2023-0830-01") if d.state == "sending"]
    assert len(held) == 10  # two sending, eight waiting for a slot
    stop.set()
    slow.gate.set()
    await task
    rows = await store.deliveries("INC-2023-0830-01")
    assert sorted(d.state.value for d in rows) == ["delivered"] * 2 + ["queued"] * 8
    assert all(d.lease_owner is None for d in rows)

    fresh = RecordingChannel(ChannelName.WEBHOOK)
    second = dispatcher(store, {ChannelName.WEBHOOK: fresh}, clock)
    assert await second.drain() == 8  # due now: the clock has not moved
    assert await store.delivery_counts("INC-2023-0830-01") == {"delivered": 10}
    sent = [m.delivery_id for _, m in slow.sent + fresh.sent]
    assert sorted(sent) == sorted({d.id for d in rows})


async def test_unacknowledged_delivery_escalates_once() -> None:
    store, clock = MemoryStore(), FakeClock()
    changes = f.declaration(0)
    stmt = changes.statements[0]
    sms_stmt = f.statement(kind=StatementKind.SMS, bodies={"sms": "Orbis HS"})
    changes.statements.append(sms_stmt)
    policy = DeliveryPolicy(
        channels=(ChannelName.TELEGRAM, ChannelName.SMS),
        require_ack=True,
        escalate_after_s=600,
        escalate_via=ChannelName.SMS,
    )
    contacts = {"telegram": "1001", "sms": "+33612345678"}
    changes.deliveries = [
        f.new_delivery(stmt, "1001", ChannelName.TELEGRAM, contacts=contacts, policy=policy),
        f.new_delivery(
            stmt,
            "1002",
            ChannelName.TELEGRAM,
            policy=policy,
            contacts={"telegram": "1002", "sms": "+33612345679"},
        ),
    ]
    await store.commit(changes)
    telegram, sms = RecordingChannel(ChannelName.TELEGRAM), RecordingChannel(ChannelName.SMS)
    worker = dispatcher(store, {ChannelName.TELEGRAM: telegram, ChannelName.SMS: sms}, clock)
    await worker.drain()
    first, second = await store.deliveries(stmt.incident_id)
    await store.acknowledge(second.id, "Dr Nguyen", clock.now())
    clock.advance(599)
    assert await worker.escalate_due() == 0
    clock.advance(1)
    assert await worker.escalate_due() == 1
    assert await worker.escalate_due() == 0
    await worker.drain()
    assert [m.address for _, m in sms.sent] == ["+33612345678"]
    rows = await store.deliveries(stmt.incident_id)
    assert rows[-1].escalation_of == first.id and rows[-1].channel == ChannelName.SMS
