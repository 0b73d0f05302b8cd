"""Rate limits hold for the deployment: four ``tocsin worker`` processes on one PostgreSQL
queue send to a provider limited to 30 requests a second.

The provider is the recording sink in its own process, answering 429 with ``Retry-After: 1``
beyond 30/s; the webhook channel is configured with the same limit (``channels.webhook.
limits``: rate 30, burst 3). Each worker alone would send 30/s; together they must stay
within 30 + 3 in any one-second window with hardly a 429 (a few at most, from timing
jitter), and a 429 must never cost a delivery: all of them are delivered, none failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.ports import Page
from bot.store.postgres import PostgresStore
from tests.conftest import pg_database
from tests.drills import Sink, WorkerProcess, fan_out, wait_until, write_config

pytestmark = pytest.mark.postgres

WORKERS = 4
DELIVERIES = 300
RATE, BURST = 30, 3
INCIDENT = "INC-2023-0830-01"


def busiest_second(times: list[float]) -> int:
    """The most requests that arrived within any one-second window."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def limited_config(folder: Path, url: str, name: str) -> Path:
    return write_config(
        folder,
        url,
        lease_seconds=30,
        name=name,
        extra={
            "delivery": {
                "lease_seconds": 30,
                "concurrency": 50,
                "batch_size": 200,
                "poll_interval": 0.1,
                "shutdown_timeout": 2,
                "max_attempts": 2,  # were a 429 an attempt, the second would fail it
                "backoff_base": 0.5,
            },
            "channels": {
                "webhook": {
                    "timeout": 5,
                    "limits": {"rate": RATE, "burst": BURST, "unlimited_destinations": True},
                }
            },
        },
    )


async def test_four_workers_together_keep_the_provider_rate(tmp_path: Path) -> None:
    async with pg_database() as url:
        store = PostgresStore(url)
        await store.open()
        workers = [
            WorkerProcess(limited_config(tmp_path, url, f"w{i}.yaml"), tmp_path / f"w{i}.log")
            for i in range(WORKERS)
        ]
        try:
            await store.migrate()
            # The provider forgives 20 ms of network jitter, as real ones do.
            with Sink(limit_rate=RATE, limit_burst=BURST, limit_tolerance_ms=20) as sink:
                for worker in workers:
                    worker.start()
                await store.commit(fan_out(sink.url, DELIVERIES, spread=30))

                async def all_done() -> bool:
                    for worker in workers:
                        assert worker.running(), worker.log_tail()
                    return await store.pending_count(INCIDENT) == 0

                await wait_until(all_done, "the rate-limited fan-out to finish", 90, every=0.1)
                for worker in workers:
                    assert worker.stop() == 0, worker.log_tail()
                seen = await sink.log()
            rows = await store.deliveries(INCIDENT, Page(limit=DELIVERIES))
            attempts = await store.attempts([d.id for d in rows])
            counts = await store.delivery_counts(INCIDENT)
        finally:
            for worker in workers:
                worker.close()
            await store.close()

    requests = seen.at + seen.refused_at
    busiest = busiest_second(requests)
    took = max(seen.at) - min(requests)
    outcomes = [a.outcome for found in attempts.values() for a in found]
    print(
        f"shared limits: workers={WORKERS} n={DELIVERIES} limit_per_s={RATE} burst={BURST} "
        f"combined_per_s={len(seen.at) / took:.1f} busiest_second={busiest} "
        f"refused_429={len(seen.refused_at)} throttled_attempts={outcomes.count('throttled')}"
    )
    assert counts == {"delivered": DELIVERIES}
    assert "failed" not in outcomes
    assert busiest <= RATE + BURST, f"{busiest} requests in one second"
    # A refused request is one beyond the provider's rate: only timing jitter at the edge of
    # a window may cause one (each worker alone at 30/s drew about 150 here).
    assert len(seen.refused_at) <= BURST, f"{len(seen.refused_at)} requests refused with 429"
    assert all(d.attempts == 1 for d in rows)
    for worker in workers:
        assert worker.errors() == [], worker.log_tail()
