"""Priority lanes: a department-head broadcast overtakes a public fan-out already queued.

A real ``tocsin worker`` process works through a fan-out of webhook deliveries to the
recording sink; while it is in full flow a 20-person department-head broadcast (an audience
that must acknowledge, hence urgent) is committed. Counted at the sink, in arrival order from
the commit on: every head must arrive before one claim batch plus the worker's concurrency of
further fan-out requests (what the worker may already hold or have claimed), and fan-out
requests must still follow the heads (they overtook the queue rather than waited it out). The
commit itself may wait for the worker's SQLite write lock: that wait is reported and bounded
(2 s, a fifth of the busy timeout).
"""

from __future__ import annotations

import time
from pathlib import Path

from bot.ports import Page
from bot.store.sqlite import SqliteStore
from tests.drills import (
    Sink,
    WorkerProcess,
    fan_out,
    heads_broadcast,
    wait_until,
    write_config,
)

FANOUT = 6_000
HEADS = 20
BATCH, CONCURRENCY = 200, 50
INCIDENT = "INC-2023-0830-01"


async def test_department_heads_overtake_a_public_fan_out(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    store = SqliteStore(str(db))
    await store.open()
    config = write_config(
        tmp_path, f"sqlite:///{db}", batch_size=BATCH, concurrency=CONCURRENCY, lease_seconds=30
    )
    worker = WorkerProcess(config, tmp_path / "worker.log")
    try:
        await store.migrate()
        with Sink() as sink:
            await store.commit(fan_out(sink.url, FANOUT))
            worker.start()
            await sink.wait_for(2 * BATCH)  # the fan-out is in full flow
            # SQLite has one writer: the commit may wait for the worker's write transaction
            # (reported, and bounded well under the busy timeout); from the moment the heads
            # are in the queue, they must overtake it.
            started = time.perf_counter()
            await store.commit(heads_broadcast(sink.url, HEADS, INCIDENT))
            commit_waited = time.perf_counter() - started
            before = await sink.count()

            async def all_done() -> bool:
                assert worker.running(), worker.log_tail()
                return await store.pending_count(INCIDENT) == 0

            await wait_until(all_done, "the fan-out and the broadcast to finish", 120)
            assert worker.stop() == 0, worker.log_tail()
            seen = await sink.log()
        rows = await store.deliveries(INCIDENT, Page(limit=FANOUT + HEADS))
    finally:
        worker.close()
        await store.close()

    heads = {d.id for d in rows if d.audience == "department-heads"}
    assert len(heads) == HEADS
    assert {d.lane for d in rows if d.id in heads} == {0}
    after_commit = seen.ids[before:]
    last_head = max(after_commit.index(i) for i in heads)
    fanout_first = [i for i in after_commit[:last_head] if i not in heads]
    fanout_later = [i for i in after_commit[last_head:] if i not in heads]
    print(
        f"priority drill: fan-out requests between the commit and the last head: "
        f"{len(fanout_first)} (bound {BATCH + CONCURRENCY}); after it: {len(fanout_later)}; "
        f"the commit waited {commit_waited * 1000:.0f} ms for the write lock"
    )
    assert commit_waited < 2.0
    assert len(fanout_first) < BATCH + CONCURRENCY
    assert fanout_later, "the fan-out had finished: nothing was overtaken"
    assert len(seen.ids) == FANOUT + HEADS
    assert worker.errors() == [], worker.log_tail()
