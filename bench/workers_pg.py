"""Scale-out benchmark: 4 ``tocsin worker`` processes against 1, on one PostgreSQL queue.

Each run gets a fresh database and a fresh recording sink (``bench/sink.py --record``, its own
process). The workers are real ``python -m bot worker`` processes, each with its own event
loop and connection pool; once every one of them LISTENs, ``n`` webhook deliveries are
committed and the clock runs until none is pending. Throughput counts committed deliveries;
duplicates are requests the sink received more than once for the same delivery.

    python bench/workers_pg.py [-n 20000] [--latency-ms 0]

``--latency-ms`` makes the sink answer like a distant provider: one worker is then bounded
by its in-flight window (``concurrency`` ÷ latency) rather than by CPU, which is when adding
workers pays off most. Needs PostgreSQL (``TOCSIN_TEST_PG``, default the local server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.store.postgres import PostgresStore
from tests.drills import Sink, WorkerProcess, fan_out, wait_until, write_config

ADMIN_URL = os.environ.get("TOCSIN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
INCIDENT = "INC-2023-0830-01"


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    name = f"tocsin_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def run(workers: int, n: int, latency_ms: float, concurrency: int) -> tuple[float, int]:
    """Deliveries per second with ``workers`` processes, and the duplicates the sink saw."""
    async with fresh_database() as url:
        store = PostgresStore(url)
        await store.open()
        await store.migrate()
        probe = await asyncpg.connect(ADMIN_URL)
        db_name = url.rsplit("/", 1)[1]
        with tempfile.TemporaryDirectory() as folder, Sink(latency_ms=latency_ms) as sink:
            procs = [
                WorkerProcess(
                    write_config(
                        Path(folder),
                        f"{url}?application_name=tocsin-bench-w{i}",
                        lease_seconds=60,
                        concurrency=concurrency,
                        poll_interval=0.5,
                        name=f"w{i}.yaml",
                    ),
                    Path(folder) / f"w{i}.log",
                ).start()
                for i in range(workers)
            ]
            try:

                async def listening() -> bool:
                    found = await probe.fetch(
                        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 "
                        "AND application_name LIKE 'tocsin-bench-w%' AND query ILIKE 'LISTEN%'",
                        db_name,
                    )
                    return int(found[0]["n"]) >= workers

                await wait_until(listening, "every worker to LISTEN", 60)
                changes = fan_out(sink.url, n, spread=100)
                await store.commit(changes)
                started = time.perf_counter()

                async def done() -> bool:
                    return await store.pending_count(INCIDENT) == 0

                await wait_until(done, "the fan-out to finish", 600, every=0.2)
                elapsed = time.perf_counter() - started
                counts = await store.delivery_counts(INCIDENT)
                seen = await sink.log()
            finally:
                for proc in procs:
                    proc.stop()
                    proc.close()
                await probe.close()
                await store.close()
    assert counts == {"delivered": n}, counts
    assert len(seen.distinct) == n, f"the sink saw {len(seen.distinct)} of {n} deliveries"
    return n / elapsed, sum(seen.duplicates.values())


async def main(n: int, latency_ms: float, concurrency: int, many: int) -> None:
    one, dup_one = await run(1, n, latency_ms, concurrency)
    four, dup_four = await run(many, n, latency_ms, concurrency)
    print(
        f"workers: n={n} workers={many} latency_ms={latency_ms:g} concurrency={concurrency} "
        f"one_per_s={one:.0f} four_per_s={four:.0f} ratio={four / one:.2f} "
        f"duplicates={dup_one + dup_four} cpus={os.cpu_count()}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.latency_ms, args.concurrency, args.workers))
