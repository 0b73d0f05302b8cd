"""A ``tocsin worker`` stopped with SIGTERM while it holds claimed rows that never got a send
slot: it finishes the sends under way, gives the rest back to the queue due at once (no lease
left to wait out), and the next worker sends each of them exactly once."""

from __future__ import annotations

from pathlib import Path

from bot.domain.models import DeliveryState
from bot.ports import Page
from bot.store.sqlite import SqliteStore
from tests.drills import Sink, WorkerProcess, fan_out, wait_until, write_config

N = 100
INCIDENT = "INC-2023-0830-01"


async def test_a_stopped_worker_gives_back_what_it_never_started(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    store = SqliteStore(str(db))
    await store.open()
    try:
        await store.migrate()
        with Sink(latency_ms=100) as sink:
            await store.commit(fan_out(sink.url, N))
            # Two sends at a time, up to fifty claimed: most rows wait in the worker.
            config = write_config(
                tmp_path, f"sqlite:///{db}", lease_seconds=60, concurrency=2, batch_size=50
            )
            first = WorkerProcess(config, tmp_path / "first.log").start()
            try:
                await sink.wait_for(2)
                assert first.stop() == 0, first.log_tail()
                assert first.errors() == [], first.log_tail()
            finally:
                first.close()
            rows = await store.deliveries(INCIDENT, Page(limit=N))
            sent_by_first = {d.id for d in rows if d.state == DeliveryState.DELIVERED}
            states = {d.state for d in rows}
            # Nothing left leased: the lease (60 s) would otherwise hold the rest back.
            assert DeliveryState.SENDING not in states
            assert all(d.lease_owner is None for d in rows)
            assert 2 <= len(sent_by_first) < N

            second = WorkerProcess(config, tmp_path / "second.log").start()
            try:

                async def all_sent() -> bool:
                    assert second.running(), second.log_tail()
                    return await store.pending_count(INCIDENT) == 0

                await wait_until(all_sent, "the second worker to send the rest", 30)
                assert second.stop() == 0, second.log_tail()
            finally:
                second.close()
            seen = await sink.log()
    finally:
        await store.close()
    assert not seen.duplicates, "a row was sent twice"
    assert seen.distinct == {d.id for d in rows}
