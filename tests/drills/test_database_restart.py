"""Dropped database connections during a fan-out (PostgreSQL).

A real ``tocsin worker`` sends 5,000 webhook deliveries to a recording sink; twice during the
fan-out the database goes away for a second, as in a restart or a failover: it refuses new
connections (``ALLOW_CONNECTIONS false``) and every backend of the worker is terminated
(``pg_terminate_backend``). The worker must reconnect and finish on its own: every delivery
delivered, none lost, and nothing sent twice beyond what it held. An idle
worker whose LISTEN connection was dropped must listen again, so that new work still wakes it
at once rather than at the next poll.

The shared PostgreSQL server is never restarted: other tests use it at the same time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bot.ports import Page
from bot.store.postgres import PostgresStore
from tests.conftest import PG_ADMIN_URL, pg_database
from tests.drills import Sink, WorkerProcess, fan_out, wait_until, write_config

pytestmark = pytest.mark.postgres

DELIVERIES = 5_000
CONCURRENCY = 50
INCIDENT = "INC-2023-0830-01"
WORKER_APP = "tocsin-drill-worker"
# How long the database stays away each time: the fault injected, not a wait for anything.
OUTAGE_SECONDS = 1.0


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with pg_database() as url:
        yield url


async def worker_backends(admin: asyncpg.Connection, database: str) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
        database,
        WORKER_APP,
    )
    return [r["pid"] for r in rows]


async def sink_reaches(
    sink: Sink, requests: int, worker: WorkerProcess, timeout: float = 30.0
) -> None:
    """Wait until the sink has taken ``requests`` requests; fail at once if the worker dies."""

    async def reached() -> bool:
        if await sink.count(requests, timeout=0.5) >= requests:
            return True
        assert worker.running(), "the worker died:\n" + worker.log_tail()
        return False

    await wait_until(reached, f"{requests} requests at the sink", timeout, every=0)


async def drop_connections(
    admin: asyncpg.Connection, database: str, outage: float = 0.0
) -> list[int]:
    """Terminate every backend of the worker, refusing new connections for ``outage``
    seconds; return the pids that were dropped."""
    pids = await worker_backends(admin, database)
    assert pids, "the worker has no database connection to drop"
    await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {bool(not outage)}')
    try:
        await admin.fetch("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
        if outage:
            await asyncio.sleep(outage)  # the database is down this long (the fault itself)
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    return pids


async def test_worker_survives_dropped_connections(database: str, tmp_path: Path) -> None:
    db_name = database.rsplit("/", 1)[1]
    store = PostgresStore(database)
    await store.open()
    admin = await asyncpg.connect(PG_ADMIN_URL)
    worker = WorkerProcess(
        write_config(
            tmp_path,
            f"{database}?application_name={WORKER_APP}",
            lease_seconds=2,
            concurrency=CONCURRENCY,
        ),
        tmp_path / "worker.log",
    )
    try:
        await store.migrate()
        with Sink() as sink:
            await store.commit(fan_out(sink.url, DELIVERIES, spread=100))
            worker.start()
            dropped: list[int] = []
            for fraction in (0.2, 0.5):
                await sink_reaches(sink, int(DELIVERIES * fraction), worker)
                pids = await drop_connections(admin, db_name, OUTAGE_SECONDS)
                dropped.extend(pids)

                async def reconnected(before: list[int] = pids) -> bool:
                    now = await worker_backends(admin, db_name)
                    return bool(set(now) - set(before)) or not worker.running()

                await wait_until(reconnected, "the worker to open new connections", 30)
                assert worker.running(), "the worker died:\n" + worker.log_tail()

            async def all_done() -> bool:
                return await store.pending_count(INCIDENT) == 0 or not worker.running()

            await wait_until(all_done, "the fan-out to finish", 60, every=0.1)
            assert worker.running(), "the worker died:\n" + worker.log_tail()
            assert worker.stop() == 0, worker.log_tail()
            seen = await sink.log()
        counts = await store.delivery_counts(INCIDENT)
        ids = {d.id for d in await store.deliveries(INCIDENT, Page(limit=DELIVERIES))}
    finally:
        worker.close()
        await admin.close()
        await store.close()

    assert counts == {"delivered": DELIVERIES}
    assert seen.distinct == ids, f"{len(ids - seen.distinct)} deliveries never reached the sink"
    assert sum(seen.duplicates.values()) <= CONCURRENCY
    print(
        f"\ndatabase drill: n={DELIVERIES} backends_dropped={len(dropped)} "
        f"duplicates={sum(seen.duplicates.values())}"
    )


async def test_idle_worker_listens_again_after_dropped_connections(
    database: str, tmp_path: Path
) -> None:
    """With a 30 s poll, only NOTIFY wakes the worker quickly: it must re-LISTEN."""
    db_name = database.rsplit("/", 1)[1]
    store = PostgresStore(database)
    await store.open()
    admin = await asyncpg.connect(PG_ADMIN_URL)
    worker = WorkerProcess(
        write_config(tmp_path, f"{database}?application_name={WORKER_APP}", poll_interval=30),
        tmp_path / "worker.log",
    )
    try:
        await store.migrate()
        with Sink() as sink:
            worker.start()

            async def listening() -> bool:
                assert worker.running(), worker.log_tail()
                found = await admin.fetch(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = $1 "
                    "AND application_name = $2 AND query ILIKE 'LISTEN%'",
                    db_name,
                    WORKER_APP,
                )
                return bool(found)

            await wait_until(listening, "the worker to LISTEN", 30)
            await store.commit(fan_out(sink.url, 1, "INC-2023-0830-01"))
            await sink_reaches(sink, 1, worker, timeout=5)

            pids = await drop_connections(admin, db_name)

            async def listening_again() -> bool:
                return bool(set(await worker_backends(admin, db_name)) - set(pids)) and (
                    await listening()
                )

            await wait_until(listening_again, "the worker to LISTEN on a new connection", 10)
            await store.commit(fan_out(sink.url, 1, "INC-2023-0830-02"))
            await sink_reaches(sink, 2, worker, timeout=5)
            assert worker.stop() == 0, worker.log_tail()
    finally:
        worker.close()
        await admin.close()
        await store.close()
