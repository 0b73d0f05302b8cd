"""Memory benchmark: one declaration fanned out to 100,000 recipients.

The declaration goes through the real domain service (rendering, planning, one commit) in
this process; then a real ``python -m bot worker`` process sends every delivery to a sink in
its own process. The worker's resident memory (RSS, from ``/proc``) is sampled over the whole
fan-out: its peak, and its peak over the first and the second half of the deliveries (flat
memory means the second half needs no more than the first). Each of the 100,000 recipients has
its own webhook URL, so the worker also keeps a rate-limit bucket per recipient, as it would
for people (``--no-recipient-limits`` leaves them out, to tell the two apart).

    python bench/memory_100k.py [-n 100000] [--pg] [--no-recipient-limits] [--gc default]

``--gc`` is the worker's ``server.gc`` (default: the product's default, ``tuned``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import build_renderer, build_service
from bot.config import settings_from_dict
from bot.domain.audiences import Audience, Target
from bot.domain.clock import SystemClock
from bot.domain.declarations import IncidentDraft
from bot.domain.models import Actor, ChannelName, Role, Severity, StatementKind
from bot.store import open_store
from tests.drills import Sink, WorkerProcess, rss_mb, write_config

ADMIN_URL = os.environ.get("TOCSIN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SAMPLE_EVERY = 0.25


def own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def declare(storage_url: str, sink_url: str, n: int) -> str:
    """Declare an outage to an audience of ``n`` webhook recipients; return its id."""
    settings = settings_from_dict({"storage": {"url": storage_url}})
    store = open_store(settings.database_url)
    await store.open()
    try:
        await store.migrate()
        clock = SystemClock()
        service = build_service(settings, store, build_renderer(settings), clock)
        service.audiences["everyone"] = Audience(
            name="everyone",
            kind=StatementKind.INTERNAL,
            targets=tuple(
                Target(ChannelName.WEBHOOK, f"{sink_url}/hook/{i}", f"recipient {i}")
                for i in range(n)
            ),
        )
        draft = IncidentDraft(
            title="Orbis indisponible",
            systems=("Orbis",),
            severity=Severity.CRITICAL,
            unaffected=("SAMU",),
            audiences=("everyone",),
        )
        incident = await service.declare(Actor("bench", Role.RESPONDER), draft)
        assert await store.pending_count(incident.id) == n
        return incident.id
    finally:
        await store.close()


async def fan_out(storage_url: str, n: int, recipient_limits: bool, gc: str) -> None:
    with tempfile.TemporaryDirectory() as folder, Sink() as sink:
        declared_at = time.perf_counter()
        incident_id = await declare(storage_url, sink.url, n)
        declare_s = time.perf_counter() - declared_at
        declare_mb = own_peak_mb()
        config = write_config(
            Path(folder),
            storage_url,
            lease_seconds=60,
            poll_interval=0.5,
            extra={"server": {"gc": gc}},
        )
        if recipient_limits:
            # Per-recipient limits stay on (one bucket per URL); the host-wide one is lifted.
            text = config.read_text(encoding="utf-8").replace(
                "unlimited_destinations: true", "unlimited_destinations: false"
            )
            config.write_text(text, encoding="utf-8")
        worker = WorkerProcess(config, Path(folder) / "worker.log").start()
        store = open_store(storage_url)
        await store.open()
        samples: list[tuple[int, float]] = []  # (deliveries still pending, worker RSS MB)
        sink_mb = 0.0
        started = time.perf_counter()
        try:
            while True:
                pending = await store.pending_count(incident_id)
                samples.append((pending, rss_mb(worker.pid)))
                sink_mb = max(sink_mb, rss_mb(sink.pid))
                if pending == 0:
                    break
                if not worker.running():
                    raise RuntimeError("the worker died:\n" + worker.log_tail())
                await asyncio.sleep(SAMPLE_EVERY)  # a sampling period, not synchronisation
            elapsed = time.perf_counter() - started
            counts = await store.delivery_counts(incident_id)
        finally:
            worker.stop()
            worker.close()
            await store.close()
    assert counts == {"delivered": n}, counts
    first = max(mb for pending, mb in samples if pending > n / 2)
    second = max(mb for pending, mb in samples if pending <= n / 2)
    print(
        f"memory: n={n} peak_rss_mb={max(mb for _, mb in samples):.0f} "
        f"first_half_mb={first:.0f} second_half_mb={second:.0f} "
        f"declare_peak_mb={declare_mb:.0f} declare_s={declare_s:.1f} sink_peak_mb={sink_mb:.0f} "
        f"per_s={n / elapsed:.0f} samples={len(samples)} "
        f"store={storage_url.split(':', 1)[0]} recipient_limits={recipient_limits} gc={gc}"
    )


async def main(n: int, pg: bool, recipient_limits: bool, gc: str) -> None:
    if not pg:
        with tempfile.TemporaryDirectory() as folder:
            await fan_out(f"sqlite:///{Path(folder) / 'memory.db'}", n, recipient_limits, gc)
        return
    name = f"tocsin_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await fan_out(ADMIN_URL.rsplit("/", 1)[0] + "/" + name, n, recipient_limits, gc)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument(
        "--no-recipient-limits",
        action="store_true",
        help="no per-recipient rate-limit bucket (isolates the worker's own memory)",
    )
    parser.add_argument(
        "--gc", choices=("tuned", "default"), default="tuned", help="the worker's server.gc"
    )
    args = parser.parse_args()
    asyncio.run(main(args.n, args.pg, not args.no_recipient_limits, args.gc))
