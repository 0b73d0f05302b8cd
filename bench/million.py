"""A million deliveries on PostgreSQL: commit them, then send them with four worker processes.

One incident's fan-out of ``n`` webhook deliveries (each recipient its own URL at the recording
sink, ``bench/sink.py --record``, its own process) is committed through the store in chunks of
``--chunk`` rows, one transaction each, as a declaration to that many people would be. Then
``--workers`` real ``python -m bot worker`` processes send them. Figures: the seconds the
commits took, deliveries committed as delivered per second (from the first request at the
sink to the last pending row gone), each worker's peak resident memory (``VmHWM`` from
``/proc``) and the database's size (``pg_database_size``) once everything is sent.

    python bench/million.py [-n 1000000] [--chunk 20000] [--workers 4]

PostgreSQL only: a fresh database on ``TOCSIN_TEST_PG`` (default the local server), dropped
afterwards. A full million takes tens of minutes and a few GB of disk on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.workers_pg import ADMIN_URL, fresh_database
from bot.domain.models import ChannelName
from bot.ports import Changes, Store
from bot.store.postgres import PostgresStore
from tests import factories
from tests.drills import Sink, WorkerProcess, wait_until, write_config

INCIDENT = "INC-2023-0830-01"


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a live process, in MB (``VmHWM``, Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (``/proc/<pid>/stat``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def postgres_pids() -> list[int]:
    """The PostgreSQL server's processes on this machine (its backends do the queue's SQL)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    found.append(int(entry.name))
    return found


async def commit_fan_out(store: Store, url: str, n: int, chunk: int) -> float:
    """Declare the incident and commit its ``n`` deliveries, ``chunk`` per transaction; the
    seconds spent in commits (building the rows in memory is left out)."""
    first = factories.declaration(0, INCIDENT)
    statement = first.statements[0]
    spent = 0.0
    for start in range(0, n, chunk):
        changes = first if start == 0 else Changes()
        changes.deliveries = [
            factories.new_delivery(
                statement, f"{url}/hook/{i}", ChannelName.WEBHOOK, audience="everyone"
            )
            for i in range(start, min(start + chunk, n))
        ]
        started = time.perf_counter()
        await store.commit(changes)
        spent += time.perf_counter() - started
    return spent


async def main(n: int, chunk: int, workers: int) -> None:
    async with fresh_database() as url:
        db_name = url.rsplit("/", 1)[1]
        store = PostgresStore(url)
        await store.open()
        try:
            await store.migrate()
            with tempfile.TemporaryDirectory() as name, Sink() as sink:
                folder = Path(name)
                commit_s = await commit_fan_out(store, sink.url, n, chunk)
                procs = [
                    WorkerProcess(
                        write_config(folder, url, lease_seconds=60, name=f"w{i}.yaml"),
                        folder / f"w{i}.log",
                    ).start()
                    for i in range(workers)
                ]
                pids = [proc.pid for proc in procs]
                try:
                    await sink.wait_for(1, timeout=60)
                    # Once the workers send, their database sessions exist: count them too.
                    database = postgres_pids()
                    started = time.perf_counter()
                    cpu_before = cpu_seconds(pids), cpu_seconds(database), cpu_seconds([sink.pid])
                    # Peak memory of each worker once a tenth, then half, of the rows are sent:
                    # flat memory means the end is no higher than these.
                    marks: dict[float, list[float]] = {}

                    async def done() -> bool:
                        for proc in procs:
                            assert proc.running(), proc.log_tail()
                        pending = await store.pending_count(INCIDENT)
                        for mark in (0.1, 0.5):
                            if mark not in marks and pending <= n * (1 - mark):
                                marks[mark] = [peak_rss_mb(pid) for pid in pids]
                        return pending == 0

                    await wait_until(done, "the fan-out to be sent", 120 + n / 100, every=1.0)
                    elapsed = time.perf_counter() - started
                    peaks = [peak_rss_mb(pid) for pid in pids]
                    cpu = [
                        cpu_seconds(pids) - cpu_before[0],
                        cpu_seconds(database) - cpu_before[1],
                        cpu_seconds([sink.pid]) - cpu_before[2],
                    ]
                finally:
                    for proc in procs:
                        proc.stop()
                        proc.close()
                counts = await store.delivery_counts(INCIDENT)
        finally:
            await store.close()
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            db_bytes = await admin.fetchval("SELECT pg_database_size($1)", db_name)
        finally:
            await admin.close()
    if counts != {"delivered": n}:
        raise AssertionError(f"not all delivered: {counts}")

    def mbs(values: list[float]) -> str:
        return "[" + ",".join(f"{v:.0f}" for v in values) + "]"

    print(
        f"million: n={n} workers={workers} commit_s={commit_s:.1f} "
        f"sends_per_s={n / elapsed:.0f} peak_rss_mb_at_10pct={mbs(marks.get(0.1, []))} "
        f"at_50pct={mbs(marks.get(0.5, []))} at_end={mbs(peaks)} "
        f"cpu_us_per_delivery=workers:{cpu[0] / n * 1e6:.0f},postgres:{cpu[1] / n * 1e6:.0f},"
        f"sink:{cpu[2] / n * 1e6:.0f} db_size_mb={db_bytes / 2**20:.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=1_000_000, help="deliveries")
    parser.add_argument("--chunk", type=int, default=20_000, help="deliveries per commit")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.chunk, args.workers))
