"""The worker's leases, unknown outcomes, statement cache and probe slots, in one process.

The same guarantees are proved across real processes in ``tests/drills/test_fencing.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime

import pytest

from bot.delivery.queue import Leases
from bot.delivery.retry import RetryPolicy
from bot.delivery.worker import DispatchConfig, Dispatcher
from bot.domain.clock import FakeClock, SystemClock
from bot.domain.errors import TransientError, UnknownOutcome
from bot.domain.models import ChannelName, Delivery, DeliveryState, Outcome
from bot.ports import Changes, Clock, OutboundMessage, Receipt, Store
from bot.store.memory import MemoryStore
from tests import factories as f
from tests.drills import wait_until
from tests.fakes.channels import RecordingChannel

NO_JITTER = RetryPolicy(max_attempts=8, backoff_base=1.0, quick_tries=3, jitter=lambda: 1.0)
INCIDENT = "INC-2023-0830-01"


class CountingChannel(RecordingChannel):
    """A recording channel that also counts every call and every send cut short."""

    def __init__(self) -> None:
        super().__init__(ChannelName.WEBHOOK)
        self.calls: list[OutboundMessage] = []
        self.cut_short = 0

    async def send(self, message: OutboundMessage) -> Receipt:
        self.calls.append(message)
        try:
            return await super().send(message)
        except asyncio.CancelledError:
            self.cut_short += 1
            raise


def worker(
    store: Store, channel: CountingChannel, clock: Clock, name: str, **config: float
) -> Dispatcher:
    return Dispatcher(
        store,
        {ChannelName.WEBHOOK: channel},
        clock,
        worker_id=name,
        retry=NO_JITTER,
        config=DispatchConfig(**config),  # type: ignore[arg-type]
    )


def hooks(n: int, statements: int = 1) -> Changes:
    """``n`` webhook deliveries spread over ``statements`` different statements."""
    changes = f.declaration(0)
    changes.statements = [f.statement(seq=1) for _ in range(statements)]
    changes.deliveries = [
        f.new_delivery(
            changes.statements[i % statements],
            f"http://sink/hook/{i}",
            ChannelName.WEBHOOK,
            audience="intranet",
        )
        for i in range(n)
    ]
    return changes


async def test_unknown_outcome_is_recorded_and_retried_later_never_at_once() -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(hooks(1))
    channel = CountingChannel()
    channel.script.append(UnknownOutcome("timed out after the request was sent"))
    sender = worker(store, channel, clock, "w1")
    await sender.drain()
    assert len(channel.calls) == 1  # quick retries are for transient errors only
    [row] = await store.deliveries(INCIDENT)
    assert (row.state, row.attempts, row.unknown_attempts) == (DeliveryState.RETRYING, 1, 1)
    assert row.next_attempt_at is not None and row.next_attempt_at > clock.now()
    [attempt] = (await store.attempts([row.id]))[row.id]
    assert attempt.outcome == "unknown"
    clock.advance(60)
    await sender.drain()
    # The next send tells the channel that an earlier attempt may have reached the provider.
    assert [m.unknown_attempts for m in channel.calls] == [0, 1]
    [row] = await store.deliveries(INCIDENT)
    assert (row.state, row.attempts, row.unknown_attempts) == (DeliveryState.DELIVERED, 2, 1)


async def test_tiny_statement_cache_never_loses_a_batch() -> None:
    """Batches of different statements overlap in flight while the cache holds one statement:
    a statement in use is pinned, so no delivery fails as "statement missing"."""
    store = MemoryStore()
    await store.commit(hooks(24, statements=6))
    channel = CountingChannel()
    channel.gate = asyncio.Event()
    sender = worker(
        store, channel, SystemClock(), "w1", statement_cache=1, batch_size=3, concurrency=12
    )
    stop = asyncio.Event()
    running = asyncio.create_task(sender.run(stop))
    try:

        async def batches_in_flight() -> bool:
            return (await store.delivery_counts(INCIDENT)).get("sending", 0) >= 9

        await wait_until(batches_in_flight, "several batches in flight", 10, every=0.01)
        assert len(sender.router.statements) > 1  # pinned beyond the bound, not evicted
        channel.gate.set()

        async def all_done() -> bool:
            return await store.pending_count(INCIDENT) == 0

        await wait_until(all_done, "every delivery to finish", 10, every=0.01)
    finally:
        stop.set()
        channel.gate.set()
        await running
    assert await store.delivery_counts(INCIDENT) == {"delivered": 24}
    assert len(sender.router.statements) == 1  # unpinned, back within the bound


async def test_probe_that_raises_unexpectedly_frees_its_slot() -> None:
    store, clock = MemoryStore(), FakeClock()
    await store.commit(hooks(1))
    channel = CountingChannel()
    channel.script.extend([TransientError("connection refused")] * 3)  # every quick try
    sender = worker(store, channel, clock, "w1", breaker_threshold=1, breaker_cooldown=5)
    await sender.drain()
    assert len(channel.calls) == 3
    assert sender.breakers.is_down("webhook")
    clock.advance(10)
    channel.script.append(RuntimeError("adapter bug"))  # the probe meets a bug
    await sender.drain()
    assert len(channel.calls) == 4
    clock.advance(30)
    await sender.drain()  # the next probe goes, succeeds, and the provider is up again
    assert len(channel.calls) == 5
    assert not sender.breakers.is_down("webhook")
    assert await store.delivery_counts(INCIDENT) == {"delivered": 1}


async def test_send_outliving_its_lease_is_renewed_and_never_started_twice() -> None:
    store = MemoryStore()
    await store.commit(hooks(3))
    slow, other = CountingChannel(), CountingChannel()
    slow.gate = asyncio.Event()
    first = worker(store, slow, SystemClock(), "w1", lease_seconds=0.3, poll_interval=0.01)
    second = worker(store, other, SystemClock(), "w2", lease_seconds=0.3, poll_interval=0.01)
    stop = asyncio.Event()
    running = [asyncio.create_task(first.run(stop))]
    try:
        await slow.started.wait()
        [claimed] = {d.lease_until for d in await store.deliveries(INCIDENT)}
        assert claimed is not None

        async def renewed_past_first_lease() -> bool:
            rows = await store.deliveries(INCIDENT)
            now = datetime.now(claimed.tzinfo)
            return now > claimed and all(d.lease_until and d.lease_until > now for d in rows)

        await wait_until(renewed_past_first_lease, "the lease to be renewed", 5, every=0.01)
        running.append(asyncio.create_task(second.run(stop)))

        async def second_polled() -> bool:
            return second.alive_at is not None

        await wait_until(second_polled, "the second worker to poll", 5, every=0.01)
        await wait_until(renewed_past_first_lease, "another renewal", 5, every=0.01)
        slow.gate.set()

        async def all_done() -> bool:
            return await store.pending_count(INCIDENT) == 0

        await wait_until(all_done, "every delivery to finish", 5, every=0.01)
    finally:
        stop.set()
        slow.gate.set()
        await asyncio.gather(*running)
    assert len(slow.calls) == 3 and other.calls == []
    rows = await store.deliveries(INCIDENT)
    assert {(d.state, d.attempts) for d in rows} == {(DeliveryState.DELIVERED, 1)}


class _CutOff(MemoryStore):
    """The database as worker ``w1`` sees it: reachable for its first claim, then cut off."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed_by_w1 = False

    def _reachable(self, owner: str) -> None:
        if owner.startswith("w1:") and self.claimed_by_w1:
            raise ConnectionError("database unreachable")

    async def claim_due(
        self, worker: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        self._reachable(worker)
        claimed = await super().claim_due(worker, now, lease_seconds, limit)
        self.claimed_by_w1 = self.claimed_by_w1 or (worker.startswith("w1:") and bool(claimed))
        return claimed

    async def renew(
        self, owner: str, delivery_ids: Sequence[int], now: datetime, lease_seconds: float
    ) -> list[int]:
        self._reachable(owner)
        return await super().renew(owner, delivery_ids, now, lease_seconds)


async def test_lapsed_lease_stops_the_send_and_the_next_holder_decides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _CutOff()
    await store.commit(hooks(2))
    stuck, healthy = CountingChannel(), CountingChannel()
    stuck.gate = asyncio.Event()  # never opened
    first = worker(store, stuck, SystemClock(), "w1", lease_seconds=0.3, poll_interval=0.01)
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, "tocsin"):
        running = asyncio.create_task(first.run(stop))
        try:

            async def sends_stopped() -> bool:
                return stuck.cut_short == 2

            await wait_until(sends_stopped, "the lapsed sends to stop", 5, every=0.01)
            # Its sends answer at once: it needs no renewal.
            second = worker(store, healthy, SystemClock(), "w2", lease_seconds=60)

            async def taken_over() -> bool:
                await second.drain()
                return await store.pending_count(INCIDENT) == 0

            await wait_until(taken_over, "the second worker to take over", 5, every=0.05)
        finally:
            stop.set()
            await running
    assert len(stuck.calls) == 2 and len(healthy.calls) == 2
    rows = await store.deliveries(INCIDENT)
    assert {(d.state, d.attempts) for d in rows} == {(DeliveryState.DELIVERED, 1)}
    assert "lease lapsed before its outcome" in caplog.text


class _FirstLeaseTakenOver(MemoryStore):
    """Refuses to renew the first lease it is asked about, as when another worker has taken
    its row; every later lease renews."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: str | None = None

    async def renew(
        self, owner: str, delivery_ids: Sequence[int], now: datetime, lease_seconds: float
    ) -> list[int]:
        if self.refused in (None, owner):
            self.refused = owner
            return []
        return await super().renew(owner, delivery_ids, now, lease_seconds)


class _StuckOnce(CountingChannel):
    """Its first send hangs until cancelled; ``swallow`` makes it ignore that cancellation and
    answer anyway, as a badly written adapter might. Every later send answers at once."""

    def __init__(self, swallow: bool) -> None:
        super().__init__()
        self.swallow = swallow

    async def send(self, message: OutboundMessage) -> Receipt:
        if self.calls:
            return await super().send(message)
        self.calls.append(message)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cut_short += 1
            if not self.swallow:
                raise
        return Receipt("late", DeliveryState.DELIVERED)


@pytest.mark.parametrize("swallow", [False, True], ids=["cancelled", "cancellation-swallowed"])
async def test_a_send_stopped_by_its_lease_leaves_the_worker_sending_the_rest(
    swallow: bool,
) -> None:
    """One send slot: the row whose lease is taken over is stopped mid-send, and the same
    worker goes on to send every other row (and, once the lease is free again, that row)."""
    store = _FirstLeaseTakenOver()
    await store.commit(hooks(4))
    channel = _StuckOnce(swallow)
    w1 = worker(
        store, channel, SystemClock(), "w1", lease_seconds=0.3, poll_interval=0.01, concurrency=1
    )
    stop = asyncio.Event()
    running = asyncio.create_task(w1.run(stop))
    try:

        async def all_done() -> bool:
            return await store.pending_count(INCIDENT) == 0

        await wait_until(all_done, "every delivery to finish", 10, every=0.01)
    finally:
        stop.set()
        await running
    assert channel.cut_short == 1
    rows = await store.deliveries(INCIDENT)
    assert [d.state for d in rows] == [DeliveryState.DELIVERED] * 4
    # The stopped send recorded nothing (or, swallowed, was fenced): each row sent and
    # recorded once, the stopped one again after its lease ran out.
    assert sorted(d.attempts for d in rows) == [1, 1, 1, 1]
    assert len(channel.calls) == 5


class _SlowFirstCommit(MemoryStore):
    """Holds the first ``record`` until told, as a database stalled mid-commit would."""

    def __init__(self) -> None:
        super().__init__()
        self.commit_started = asyncio.Event()
        self.commit_gate = asyncio.Event()

    async def record(self, outcomes: Sequence[Outcome]) -> list[int]:
        if not self.commit_started.is_set():
            self.commit_started.set()
            await self.commit_gate.wait()
        return await super().record(outcomes)


async def test_outcome_of_a_taken_over_row_is_dropped_not_written() -> None:
    """Worker A's outcome waits on a stalled commit past its lease; worker B takes the row
    over and records its own. A's outcome then changes nothing: no state, no attempt row, no
    observer told."""
    store = _SlowFirstCommit()
    await store.commit(hooks(1))
    clock_a, clock_b = FakeClock(), FakeClock()
    clock_b.advance(61)  # B's claim comes after A's lease (60 s) expired
    a_channel, b_channel = CountingChannel(), CountingChannel()
    a, b = worker(store, a_channel, clock_a, "w1"), worker(store, b_channel, clock_b, "w2")
    observed: list[str] = []
    a.observers.append(lambda d, o: observed.append(f"a:{o.state.value}"))
    b.observers.append(lambda d, o: observed.append(f"b:{o.state.value}"))
    stalled = asyncio.create_task(a.drain())
    await store.commit_started.wait()
    assert await b.drain() == 1
    store.commit_gate.set()
    await stalled
    assert len(a_channel.calls) == len(b_channel.calls) == 1
    [row] = await store.deliveries(INCIDENT)
    assert (row.state, row.attempts, row.lease_owner) == (DeliveryState.DELIVERED, 1, None)
    assert len((await store.attempts([row.id]))[row.id]) == 1
    assert observed == ["b:delivered"]


async def test_a_row_claimed_again_by_its_holder_moves_to_the_new_lease() -> None:
    """A worker whose own lease lapsed while the outcome waited may claim the row again: it
    is the same holder, so the row moves to the new token and is not sent a second time."""
    leases = Leases("w", 60)
    since = asyncio.get_running_loop().time()
    assert leases.granted("w:1", [1, 2], since) == set()
    assert leases.granted("w:2", [2, 3], since) == {2}
    assert [leases.owner(i) for i in (1, 2, 3)] == ["w:1", "w:2", "w:2"]
    assert leases.by_token() == [("w:1", [1]), ("w:2", [2, 3])]
    leases.forget(1)
    assert leases.by_token() == [("w:2", [2, 3])]
    leases.close()


class _ClaimsHeldRowAgain(MemoryStore):
    """Hands the worker, on its next claim, the row it is still sending (as if that row's
    lease had expired): the worst case the worker's own bookkeeping must absorb."""

    def __init__(self) -> None:
        super().__init__()
        self.first: list[int] = []
        self.handed_again = asyncio.Event()

    async def claim_due(
        self, worker: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        claimed = await super().claim_due(worker, now, lease_seconds, limit)
        if claimed and not self.first:
            self.first = [d.id for d in claimed]
        elif self.first and not self.handed_again.is_set():
            self.handed_again.set()
            for i in self.first:
                self.rows[i] = replace(self.rows[i], lease_owner=worker)
            claimed = [self.rows[i] for i in self.first]
        return claimed


async def test_worker_never_sends_a_row_it_holds_twice() -> None:
    store = _ClaimsHeldRowAgain()
    await store.commit(hooks(1))
    channel = CountingChannel()
    channel.gate = asyncio.Event()
    sender = worker(store, channel, SystemClock(), "w1", poll_interval=0.01)
    stop = asyncio.Event()
    running = asyncio.create_task(sender.run(stop))
    try:
        await store.handed_again.wait()
        channel.gate.set()

        async def all_done() -> bool:
            return await store.pending_count(INCIDENT) == 0

        await wait_until(all_done, "the delivery to finish", 5, every=0.01)
    finally:
        stop.set()
        channel.gate.set()
        await running
    assert len(channel.calls) == 1
    [row] = await store.deliveries(INCIDENT)
    assert (row.state, row.attempts) == (DeliveryState.DELIVERED, 1)  # under the new lease


class _OneHangs(CountingChannel):
    """Its first send hangs until ``answer`` is set (a provider slow to answer); every later
    send answers at once."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()

    async def send(self, message: OutboundMessage) -> Receipt:
        if self.calls:
            return await super().send(message)
        self.calls.append(message)
        await self.answer.wait()
        return Receipt("late", DeliveryState.DELIVERED)


async def test_a_send_that_hangs_holds_neither_the_others_outcomes_nor_their_slots() -> None:
    """Five send slots, one taken by a send that does not answer: the other 19 rows are sent
    and recorded through the four slots left, long before the poll (a minute here) would
    have written them; the slow row is recorded once it answers."""
    store = MemoryStore()
    await store.commit(hooks(20))
    channel = _OneHangs()
    w1 = worker(store, channel, SystemClock(), "w1", poll_interval=60.0, concurrency=5)
    stop = asyncio.Event()
    running = asyncio.create_task(w1.run(stop))

    def delivered(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            counts = await store.delivery_counts(INCIDENT)
            return counts.get(DeliveryState.DELIVERED.value, 0) == n

        return check

    try:
        await wait_until(delivered(19), "the 19 other rows to be recorded", 10, every=0.01)
        assert not channel.answer.is_set() and len(channel.calls) == 20
        channel.answer.set()
        await wait_until(delivered(20), "the slow row to be recorded", 10, every=0.01)
    finally:
        stop.set()
        await running
    rows = await store.deliveries(INCIDENT)
    assert sorted(d.attempts for d in rows) == [1] * 20
