"""Priority lanes: how long a department-head broadcast waits behind a public fan-out.

A real ``tocsin worker`` process sends a fan-out of ``n`` webhook deliveries (declared first)
to the recording sink (``bench/sink.py --record``, its own process); once the fan-out is in
full flow, a broadcast to ``heads`` department heads (an audience that must acknowledge) is
committed. Figures: the time from that commit to the last head's request at the sink, and
how many claim batches of fan-out requests reached the sink in between — with lanes, then
with every row in the normal lane (first in, first out, as before lanes existed).

    python bench/priority.py [-n 20000] [--heads 20] [--pg]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The channels known to the domain (audiences, masking), as every entry point makes them.
import bot.channels.registry  # noqa: F401
from bench.workers_pg import fresh_database
from bot.ports import Page, Store
from bot.store.postgres import PostgresStore
from bot.store.sqlite import SqliteStore
from tests.drills import Sink, WorkerProcess, fan_out, heads_broadcast, wait_until, write_config

INCIDENT = "INC-2023-0830-01"
BATCH = 200


@asynccontextmanager
async def opened(pg: bool, folder: Path) -> AsyncIterator[tuple[Store, str]]:
    if pg:
        async with fresh_database() as url:
            store: Store = PostgresStore(url)
            await store.open()
            try:
                yield store, url
            finally:
                await store.close()
    else:
        path = folder / "queue.db"
        store = SqliteStore(str(path))
        await store.open()
        try:
            yield store, f"sqlite:///{path}"
        finally:
            await store.close()


async def run(pg: bool, n: int, heads: int, lanes: bool) -> tuple[float, float]:
    """(ms from the broadcast's commit to the last head at the sink, fan-out batches between)."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        async with opened(pg, folder) as (store, url):
            await store.migrate()
            with Sink() as sink:
                await store.commit(fan_out(sink.url, n))
                worker = WorkerProcess(
                    write_config(folder, url, lease_seconds=60, batch_size=BATCH),
                    folder / "worker.log",
                ).start()
                try:
                    await sink.wait_for(2 * BATCH)
                    before = await sink.count()
                    await store.commit(heads_broadcast(sink.url, heads, INCIDENT, lanes=lanes))
                    committed = time.time()

                    async def done() -> bool:
                        assert worker.running(), worker.log_tail()
                        return await store.pending_count(INCIDENT) == 0

                    await wait_until(done, "the fan-out to finish", 600, every=0.1)
                    worker.stop()
                finally:
                    worker.close()
                seen = await sink.log()
            rows = await store.deliveries(INCIDENT, Page(limit=n + heads))
    ids = {d.id for d in rows if d.audience == "department-heads"}
    arrivals = list(zip(seen.ids, seen.at, strict=True))[before:]
    last = max(k for k, (i, _) in enumerate(arrivals) if i in ids)
    fanout_between = sum(1 for i, _ in arrivals[:last] if i not in ids)
    return (arrivals[last][1] - committed) * 1000, fanout_between / BATCH


async def main(n: int, heads: int, pg: bool) -> None:
    with_lanes = await run(pg, n, heads, lanes=True)
    fifo = await run(pg, n, heads, lanes=False)
    print(
        f"priority: store={'postgres' if pg else 'sqlite'} fanout={n} heads={heads} "
        f"heads_p100_ms={with_lanes[0]:.0f} batches_before={with_lanes[1]:.2f} "
        f"fifo_heads_p100_ms={fifo[0]:.0f} fifo_batches_before={fifo[1]:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="public fan-out size")
    parser.add_argument("--heads", type=int, default=20, help="department heads")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.heads, args.pg))
