"""Scale-out: several ``tocsin worker`` processes claim from one PostgreSQL queue.

Three real worker processes, each with its own event loop and connection pool, wait on one
database (LISTEN); a declaration of 3,000 webhook deliveries is committed and NOTIFY wakes
them all. In a run without faults no delivery may reach the sink twice, and every worker
must have taken part.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from bot.ports import Page
from bot.store.postgres import PostgresStore
from tests.conftest import PG_ADMIN_URL, pg_database
from tests.drills import Sink, WorkerProcess, fan_out, wait_until, write_config

pytestmark = pytest.mark.postgres

WORKERS = 3
DELIVERIES = 3_000
INCIDENT = "INC-2023-0830-01"


async def test_workers_share_one_queue_and_send_nothing_twice(tmp_path: Path) -> None:
    async with pg_database() as url:
        db_name = url.rsplit("/", 1)[1]
        store = PostgresStore(url)
        await store.open()
        admin = await asyncpg.connect(PG_ADMIN_URL)
        probe = await asyncpg.connect(url)
        workers = [
            WorkerProcess(
                write_config(
                    tmp_path,
                    f"{url}?application_name=tocsin-w{i}",
                    lease_seconds=60,  # no fault here: nothing may be re-claimed
                    name=f"w{i}.yaml",
                ),
                tmp_path / f"w{i}.log",
            )
            for i in range(WORKERS)
        ]
        try:
            await store.migrate()
            with Sink() as sink:
                for worker in workers:
                    worker.start()

                async def all_listening() -> bool:
                    for worker in workers:
                        assert worker.running(), worker.log_tail()
                    found = await admin.fetch(
                        "SELECT DISTINCT application_name FROM pg_stat_activity "
                        "WHERE datname = $1 AND application_name LIKE 'tocsin-w%' "
                        "AND query ILIKE 'LISTEN%'",
                        db_name,
                    )
                    return len(found) == WORKERS

                await wait_until(all_listening, "every worker to LISTEN", 30)
                await store.commit(fan_out(sink.url, DELIVERIES, spread=50))

                owners: set[str] = set()

                async def all_done() -> bool:
                    # Which workers hold leases right now: each must show up at some point.
                    holding = await probe.fetch(
                        "SELECT DISTINCT lease_owner FROM deliveries "
                        "WHERE state = 'sending' AND lease_owner IS NOT NULL"
                    )
                    # A lease owner is "<worker>:<claim batch>": count workers.
                    owners.update(r["lease_owner"].rsplit(":", 1)[0] for r in holding)
                    return await store.pending_count(INCIDENT) == 0

                await wait_until(all_done, "the fan-out to finish", 60, every=0.02)
                for worker in workers:
                    assert worker.stop() == 0, worker.log_tail()
                seen = await sink.log()
            rows = await store.deliveries(INCIDENT, Page(limit=DELIVERIES))
            counts = await store.delivery_counts(INCIDENT)
        finally:
            for worker in workers:
                worker.close()
            await admin.close()
            await probe.close()
            await store.close()

    assert counts == {"delivered": DELIVERIES}
    assert seen.distinct == {d.id for d in rows}
    assert dict(seen.duplicates) == {}, "a delivery was sent twice"
    assert len(seen.ids) == DELIVERIES
    assert all(d.attempts == 1 for d in rows)
    assert len(owners) == WORKERS, f"only {len(owners)} of {WORKERS} workers claimed work"
    for worker in workers:
        assert worker.errors() == [], worker.log_tail()
