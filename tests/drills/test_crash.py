"""Crash drill: ``kill -9`` a real ``tocsin worker`` mid fan-out, start another one.

10,000 webhook deliveries go to a sink in its own process that records every request's
``delivery_id``. The first worker is killed once the sink has taken 30% of them; a second
worker finishes the fan-out and takes over the dead worker's rows when their lease (2 s here)
expires. Nothing may be lost, and a delivery may only be sent twice if the dead worker held it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bot.delivery.worker import DispatchConfig, Dispatcher
from bot.domain.clock import FakeClock
from bot.domain.models import ChannelName, DeliveryState, Outcome
from bot.ports import MessageKey, OutboundMessage, Page, Receipt, Store
from bot.store.memory import MemoryStore
from tests.drills import Sink, WorkerProcess, fan_out, wait_until, write_config

DELIVERIES = 10_000
CONCURRENCY = 50
BATCH = 200
LEASE_SECONDS = 2.0
INCIDENT = "INC-2023-0830-01"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


async def test_kill_9_mid_fan_out_loses_nothing(
    store: Store, storage_url: str, sink: Sink, tmp_path: Path
) -> None:
    await store.commit(fan_out(sink.url, DELIVERIES, spread=100))
    config = write_config(
        tmp_path,
        storage_url,
        lease_seconds=LEASE_SECONDS,
        concurrency=CONCURRENCY,
        batch_size=BATCH,
    )
    first = WorkerProcess(config, tmp_path / "first.log").start()
    second = WorkerProcess(config, tmp_path / "second.log")
    try:
        await sink.wait_for(DELIVERIES * 3 // 10)
        first.kill()
        killed_at = time.time()

        rows = await store.deliveries(INCIDENT, Page(limit=DELIVERIES))
        leased = {d.id: d for d in rows if d.state == DeliveryState.SENDING}
        done_at_kill = sum(d.state == DeliveryState.DELIVERED for d in rows)
        assert leased, "the worker was killed with nothing in flight: the drill proves nothing"
        assert done_at_kill < DELIVERIES, "the fan-out ended before the kill"
        # All the dead worker's (a lease owner is "<worker>:<claim batch>").
        assert len({str(d.lease_owner).rsplit(":", 1)[0] for d in leased.values()}) == 1

        second.start()

        async def all_done() -> bool:
            return await store.pending_count(INCIDENT) == 0

        await wait_until(all_done, "the fan-out to finish", 60, every=0.1)
        finished_after = time.time() - killed_at
        assert second.stop() == 0, second.log_tail()
    finally:
        first.close()
        second.close()

    assert await store.delivery_counts(INCIDENT) == {"delivered": DELIVERIES}
    rows = await store.deliveries(INCIDENT, Page(limit=DELIVERIES))
    assert all(d.attempts >= 1 and d.lease_owner is None for d in rows)
    seen = await sink.log()
    assert seen.distinct == {d.id for d in rows}, "a delivery never reached the sink"
    duplicates = seen.duplicates
    assert set(duplicates) <= set(leased), "only rows the dead worker held may go twice"
    assert max(duplicates.values(), default=0) <= 1
    # The in-flight window (sends under way, outcomes awaiting their batch commit) is what a
    # crash may send twice; the worker keeps it within ``concurrency``. It also held up to one
    # claim batch waiting for a slot: leased, never sent, so sent once by the next worker.
    assert len(duplicates) <= CONCURRENCY
    assert len(leased) <= CONCURRENCY + BATCH
    # The dead worker's rows come back once their lease expires: not before, not much later.
    finished = {d.id: d for d in rows if d.id in leased}
    for delivery_id, held in leased.items():
        done = finished[delivery_id].updated_at
        assert held.lease_until is not None
        assert done is not None
        assert done >= held.lease_until, "re-claimed before its lease expired"
    reclaimed_after = max(d.updated_at.timestamp() for d in finished.values() if d.updated_at)
    reclaimed_after -= killed_at
    assert reclaimed_after < 60
    assert second.errors() == []
    print(
        f"\ncrash drill: n={DELIVERIES} delivered_at_kill={done_at_kill} "
        f"leased_at_kill={len(leased)} duplicates={sum(duplicates.values())} "
        f"reclaimed_after_s={reclaimed_after:.1f} finished_after_s={finished_after:.1f}"
    )


class _SlowCommitStore(MemoryStore):
    """Holds the first non-empty ``record`` until told, as a slow database commit would."""

    def __init__(self) -> None:
        super().__init__()
        self.commit_started = asyncio.Event()
        self.commit_gate = asyncio.Event()

    async def record(self, outcomes: Sequence[Outcome]) -> int:
        if outcomes and not self.commit_started.is_set():
            self.commit_started.set()
            await self.commit_gate.wait()
        return await super().record(outcomes)


class _GatedChannel:
    """A webhook stand-in: the first ``quick`` sends answer at once, the rest wait for a gate."""

    name = ChannelName.WEBHOOK
    keys: frozenset[MessageKey] = frozenset()
    rate: float = 1e6
    burst: int = 10**6
    destination_rate: float | None = None
    destination_burst: int = 1

    def __init__(self, store: MemoryStore, quick: int, calls_to_watch: int) -> None:
        self.store = store
        self.quick = quick
        self.calls = 0
        self.sent: set[int] = set()
        # The most rows sent (or being sent) whose outcome was not yet committed, at any send:
        # what a ``kill -9`` right then could send twice.
        self.most_unrecorded = 0
        self.gates = [asyncio.Event(), asyncio.Event()]
        self.watched = asyncio.Event()
        self.slow_finished = asyncio.Event()
        self._watch = calls_to_watch
        self._slow_done = 0

    def provider_key(self, address: str) -> str:
        return "webhook"

    async def send(self, message: OutboundMessage) -> Receipt:
        self.calls += 1
        self.sent.add(message.delivery_id)
        unrecorded = [i for i in self.sent if self.store.rows[i].state == DeliveryState.SENDING]
        self.most_unrecorded = max(self.most_unrecorded, len(unrecorded))
        if self.calls >= self._watch:
            self.watched.set()
        if self.quick < self.calls <= 2 * self.quick:
            await self.gates[0].wait()
            self._slow_done += 1
            if self._slow_done == self.quick:
                self.slow_finished.set()  # the worker buffers both outcomes before we resume
        elif self.calls > 2 * self.quick:
            await self.gates[1].wait()
        return Receipt(str(message.delivery_id), DeliveryState.DELIVERED)

    async def close(self) -> None:
        return None


async def test_in_flight_window_never_exceeds_concurrency() -> None:
    """Rows a worker has sent (or is sending) and not yet recorded are what a ``kill -9`` may
    send twice: the worker must never have more than ``concurrency`` of them.

    Two sends answer at once and two hang; while the first batch commit is slow, the hung
    sends finish, so their outcomes wait in memory for the next commit. The next sends must
    count them: starting a full ``concurrency`` more leaves 6 rows unrecorded with
    concurrency 4 (rows claimed and waiting for a slot do not count: they were never sent).
    """
    concurrency = 4
    store = _SlowCommitStore()
    await store.commit(fan_out("http://127.0.0.1:9/unused", 20))
    channel = _GatedChannel(store, quick=2, calls_to_watch=concurrency + 1)
    worker = Dispatcher(
        store,
        {ChannelName.WEBHOOK: channel},
        FakeClock(),
        worker_id="w1",
        config=DispatchConfig(concurrency=concurrency, poll_interval=0.01),
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await store.commit_started.wait()  # the two quick outcomes are being committed
        channel.gates[0].set()  # meanwhile the two slow sends finish
        await channel.slow_finished.wait()
        store.commit_gate.set()
        await channel.watched.wait()  # the next sends have started
        assert channel.most_unrecorded <= concurrency, (
            f"{channel.most_unrecorded} rows sent and not recorded at once by a worker with "
            f"concurrency {concurrency}"
        )
    finally:
        channel.gates[1].set()
        stop.set()
        await running
