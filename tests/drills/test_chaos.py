"""Chaos drills: faulty providers, duplicated and late callbacks, a 429 storm.

The worker runs with its real defaults (retries, circuit breakers, rate limiter) over a real
SQLite queue, sending through the real webhook adapter to local stand-ins whose answers are
chosen per request: 20% are 5xx, hangs (the client times out) or connection resets. Faults
are drawn from a seeded generator per (path, n-th request), so a run is reproducible whatever
the scheduling.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bot.channels.webhook import WebhookChannel
from bot.config import WebhookChannelSettings
from bot.delivery.retry import RetryPolicy
from bot.delivery.worker import DispatchConfig, Dispatcher
from bot.domain.clock import SystemClock
from bot.domain.models import (
    PROGRESS_RANK,
    ChannelName,
    DeliveryPolicy,
    DeliveryState,
)
from bot.ports import Channel, Page, Receipt, Store
from bot.store.memory import MemoryStore
from bot.store.postgres import PostgresStore
from bot.store.sqlite import SqliteStore
from tests import factories
from tests.conftest import pg_database
from tests.drills import fan_out, wait_until
from tests.fakes.channels import RecordingChannel
from tests.fakes.http_standin import HttpStandin, RecordedRequest, Reply

INCIDENT = "INC-2023-0830-01"
FAULT_RATE = 0.2
TIMEOUT = 1.5  # the webhook channel's timeout: a hang costs this much; a loaded machine
# answers slower than 0.3 s now and then, which would be a timeout the provider never saw


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    backend = SqliteStore(str(tmp_path / "queue.db"))
    await backend.open()
    await backend.migrate()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@dataclass
class ChaosProvider:
    """Answers 20% of requests with a fault; paths under ``/gone/`` always answer 410.

    ``answers`` keeps, per delivery id, what each of its requests was answered, in order."""

    seed: int = 8
    answers: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    _seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def __call__(self, request: RecordedRequest) -> Reply:
        nth = self._seen[request.path]
        self._seen[request.path] += 1
        if request.path.startswith("/gone/"):
            answer = "410"
        else:
            draw = random.Random(f"{self.seed}:{request.path}:{nth}").random()
            faults = ("503", "hang", "reset")
            answer = faults[int(draw / FAULT_RATE * 3)] if draw < FAULT_RATE else "200"
        self.answers[int(request.json["delivery_id"])].append(answer)
        if answer == "hang":
            return Reply.hang()
        if answer == "reset":
            return Reply.reset()
        if answer == "200":
            return Reply(200, {"ok": True, "id": f"m{request.json['delivery_id']}-{nth}"})
        return Reply(int(answer), {"error": "chaos"})


# How the worker must record each answer: (attempt outcome, provider code).
EXPECTED_ATTEMPT = {
    "200": ("delivered", "200"),
    "503": ("retry", "503"),
    "hang": ("retry", None),
    "reset": ("retry", None),
    "410": ("failed", "410"),
}


def chaos_worker(store: Store, channels: dict[ChannelName, Channel]) -> Dispatcher:
    """A worker with the product's defaults, except backoffs short enough for a test."""
    return Dispatcher(
        store,
        channels,
        SystemClock(),
        config=DispatchConfig(concurrency=20, poll_interval=0.05),
        retry=RetryPolicy(max_attempts=10, backoff_base=0.05, backoff_max=0.2),
        worker_id="chaos",
    )


async def run_until_done(worker: Dispatcher, store: Store, timeout: float = 40.0) -> float:
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))

    async def done() -> bool:
        if running.done():
            running.result()  # a crashed loop fails the drill with its own error
        return await store.pending_count() == 0

    try:
        return await wait_until(done, "every delivery to settle", timeout)
    finally:
        stop.set()
        await running


async def test_faulty_provider_every_delivery_ends_delivered_or_failed_over(
    store: Store, session: aiohttp.ClientSession
) -> None:
    provider = ChaosProvider()
    changes = factories.declaration(0)
    statement = changes.statements[0]
    async with HttpStandin(default=provider) as standin:
        policy = DeliveryPolicy(channels=(ChannelName.WEBHOOK, ChannelName.EMAIL))
        for i in range(200):
            changes.deliveries.append(
                factories.new_delivery(
                    statement, f"{standin.url}/hook/{i}", ChannelName.WEBHOOK, audience="intranet"
                )
            )
        for i in range(40):
            # People whose webhook is gone for good (every 4th) or merely flaky.
            path = f"/gone/{i}" if i % 4 == 0 else f"/person/{i}"
            contacts = {"webhook": standin.url + path, "email": f"p{i}@example.org"}
            changes.deliveries.append(
                factories.new_delivery(
                    statement,
                    contacts["webhook"],
                    ChannelName.WEBHOOK,
                    audience="heads",
                    recipient=f"Dr {i}",
                    contacts=contacts,
                    policy=policy,
                )
            )
        await store.commit(changes)
        email = RecordingChannel(ChannelName.EMAIL)
        webhook = WebhookChannel(session, WebhookChannelSettings(timeout=TIMEOUT))
        webhook.rate, webhook.burst, webhook.destination_rate = 10_000.0, 10_000, None
        await run_until_done(
            chaos_worker(store, {ChannelName.WEBHOOK: webhook, ChannelName.EMAIL: email}), store
        )
        seen = len(standin.requests)

    rows = await store.deliveries(INCIDENT, Page(limit=1000))
    attempts = await store.attempts([d.id for d in rows])
    by_id = {d.id: d for d in rows}
    first_hops = [d for d in rows if d.channel == ChannelName.WEBHOOK]
    assert len(first_hops) == 240
    faults = sum(
        a != "200" and a != "410" for answers in provider.answers.values() for a in answers
    )
    assert faults >= 40, "the provider injected too few faults for the drill to mean much"

    for delivery in first_hops:
        gone = "/gone/" in delivery.address
        follow_ups = [d for d in rows if d.failover_of == delivery.id]
        if gone:
            assert delivery.state == DeliveryState.FAILED
            [follow_up] = follow_ups
            assert (follow_up.channel, follow_up.state) == (
                ChannelName.EMAIL,
                DeliveryState.DELIVERED,
            )
        else:
            # A flaky provider is retried, never given up on or routed around.
            assert delivery.state == DeliveryState.DELIVERED, (
                delivery.id,
                delivery.state,
                [a.outcome for a in attempts[delivery.id]],
            )
            assert follow_ups == []
        recorded = [(a.outcome, a.code) for a in attempts[delivery.id]]
        expected = [EXPECTED_ATTEMPT[a] for a in provider.answers[delivery.id]]
        assert recorded == expected, f"delivery {delivery.id}: attempts differ from the provider"
        assert by_id[delivery.id].attempts == len(expected)
    assert sum(len(a) for a in provider.answers.values()) == seen
    assert len(email.sent) == 10


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        backend: Store = SqliteStore(str(tmp_path / "q.db"))
        await backend.open()
        await backend.migrate()
        try:
            yield backend
        finally:
            await backend.close()
        return
    async with pg_database() as url:
        backend = PostgresStore(url)
        await backend.open()
        await backend.migrate()
        try:
            yield backend
        finally:
            await backend.close()


async def test_duplicated_and_late_callbacks_only_move_states_forward(any_store: Store) -> None:
    """Delivery reports arrive twice, out of order, concurrently, and after an
    acknowledgement: every state a delivery is seen in ranks at least as high as before."""
    store, n = any_store, 60
    changes = factories.declaration(0)
    statement = changes.statements[0]
    changes.deliveries = [
        factories.new_delivery(statement, f"+3361234{i:04d}", ChannelName.SMS) for i in range(n)
    ]
    await store.commit(changes)
    sms = RecordingChannel(ChannelName.SMS)
    sms.script.extend(Receipt(f"sms-{i}", DeliveryState.SENT) for i in range(n))
    await Dispatcher(store, {ChannelName.SMS: sms}, SystemClock(), worker_id="w").drain()
    rows = await store.deliveries(INCIDENT)
    assert {d.state for d in rows} == {DeliveryState.SENT}

    rng = random.Random(30)
    clock = SystemClock()
    seen: dict[int, list[DeliveryState]] = defaultdict(list)
    moved: dict[int, list[DeliveryState]] = defaultdict(list)
    reports = {
        DeliveryState.SENT: "accepted",
        DeliveryState.DELIVERED: "delivered",
        DeliveryState.FAILED: "failed",
    }

    async def report(delivery_id: int, state: DeliveryState) -> None:
        if await store.advance(delivery_id, state, reports[state], clock.now(), code="dlr"):
            moved[delivery_id].append(state)

    async def callbacks(delivery_id: int, index: int) -> None:
        plan = [
            DeliveryState.SENT,
            DeliveryState.DELIVERED,
            DeliveryState.DELIVERED,
            DeliveryState.SENT,
        ]
        if index % 6 == 1:
            plan.append(DeliveryState.FAILED)  # a failure report after (or before) success
        rng.shuffle(plan)
        for step, state in enumerate(plan):
            if index % 3 == 0 and step == 1:
                await store.acknowledge(delivery_id, "Dr A. Martin", clock.now())
            if step == 2:
                # The same report twice at the same moment (two gateway retries).
                await asyncio.gather(report(delivery_id, state), report(delivery_id, state))
            else:
                await report(delivery_id, state)
            found = await store.get_delivery(delivery_id)
            assert found is not None
            seen[delivery_id].append(found.state)

    await asyncio.gather(*(callbacks(d.id, i) for i, d in enumerate(rows)))

    for index, delivery in enumerate(rows):
        ranks = [PROGRESS_RANK[s] for s in seen[delivery.id]]
        assert ranks == sorted(ranks), f"{delivery.id} moved backwards: {seen[delivery.id]}"
        assert len(moved[delivery.id]) == len(set(moved[delivery.id])), "a report applied twice"
        final = seen[delivery.id][-1]
        if index % 3 == 0:
            assert final == DeliveryState.ACKNOWLEDGED
        elif index % 6 == 1:
            assert final in (DeliveryState.DELIVERED, DeliveryState.FAILED)
        else:
            assert final == DeliveryState.DELIVERED
    history = await store.attempts([d.id for d in rows])
    assert all(len(history[d.id]) >= 6 for d in rows), "every report leaves an attempt row"


async def test_429_storm_on_one_destination_leaves_the_others_their_throughput(
    store: Store, session: aiohttp.ClientSession
) -> None:
    """One webhook answers 429 (Retry-After: 1) for 1.5 s; the three others, limited to 20
    messages a second each, must still finish at that pace."""
    rate, per_destination, storm_seconds = 20.0, 40, 1.5
    arrivals: dict[str, list[float]] = defaultdict(list)
    storm_started: list[float] = []
    refused = 0

    def provider(request: RecordedRequest) -> Reply:
        nonlocal refused
        now = time.monotonic()
        if request.path == "/storm":
            storm_started[:] = storm_started or [now]
            if now - storm_started[0] < storm_seconds:
                refused += 1
                return Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"})
        arrivals[request.path].append(now)
        return Reply(200, {"ok": True, "id": str(request.json["delivery_id"])})

    async with HttpStandin(default=provider) as standin:
        changes = factories.declaration(0)
        statement = changes.statements[0]
        for _ in range(per_destination):
            for path in ("/storm", "/a", "/b", "/c"):
                changes.deliveries.append(
                    factories.new_delivery(
                        statement, standin.url + path, ChannelName.WEBHOOK, audience="intranet"
                    )
                )
        await store.commit(changes)
        webhook = WebhookChannel(session, WebhookChannelSettings(timeout=2))
        webhook.rate, webhook.burst = 10_000.0, 10_000
        webhook.destination_rate, webhook.destination_burst = rate, 1
        worker = Dispatcher(
            store,
            {ChannelName.WEBHOOK: webhook},
            SystemClock(),
            config=DispatchConfig(poll_interval=0.05),
        )
        await run_until_done(worker, store)

    assert await store.delivery_counts(INCIDENT) == {"delivered": 4 * per_destination}
    bound = (per_destination - 1) / rate
    for path in ("/a", "/b", "/c"):
        times = arrivals[path]
        took = times[-1] - times[0]
        assert took <= bound * 1.3 + 0.2, f"{path} took {took:.2f} s, bound {bound:.2f} s"
        # Never faster than the limit (over 10 messages, so that timer jitter does not count).
        spans = [b - a for a, b in zip(times, times[10:], strict=False)]
        assert min(spans) >= 10 / rate - 0.05, f"{path} was sent faster than its limit"
    # The storm destination honours Retry-After: about one refused try per second of storm.
    assert 1 <= refused <= 4, refused
    assert len(arrivals["/storm"]) == per_destination


async def test_rows_given_back_for_a_rate_limit_go_out_when_due_not_at_the_next_poll() -> None:
    """A delivery whose slot is more than ``inline_wait_max`` away goes back to the queue due
    at that slot; the worker must wake for it then, not a whole poll interval later (at 2
    messages a second that would waste a third of the provider's capacity)."""
    store = MemoryStore()
    await store.commit(fan_out("http://127.0.0.1:9", 4))  # one destination, never reached
    channel = RecordingChannel(ChannelName.WEBHOOK, destination_rate=2.0, destination_burst=1)
    worker = Dispatcher(
        store,
        {ChannelName.WEBHOOK: channel},
        SystemClock(),
        config=DispatchConfig(poll_interval=2.0, inline_wait_max=0.3),
    )
    started = time.monotonic()
    await run_until_done(worker, store, timeout=10)
    sent = [at - started for at, _ in channel.sent]
    assert len(sent) == 4
    # Slots at 0, 0.5, 1.0 and 1.5 s; all but the first are given back and come due then.
    late = [round(at - slot, 2) for at, slot in zip(sent, (0.0, 0.5, 1.0, 1.5), strict=True)]
    assert max(late) < 0.25, f"sent this late after their slots: {late}"
