"""Declaration latency: from the ``POST /api/v1/incidents`` to the first request at the sink.

A real ``tocsin serve`` process (its own worker inside, the delivery settings left at their
defaults) has one default audience of ``recipients`` webhook destinations, all at the
recording sink (``bench/sink.py --record``, its own process). The bench declares ``n``
incidents one after another with a responder token given through the environment; for each it
takes the time just before the POST is sent and the arrival time the sink recorded for that
declaration's first request, and waits for all its requests before the next declaration.

    python bench/declare_latency.py [-n 50] [--recipients 300] [--pg]

``--pg`` runs it on a fresh PostgreSQL database (``TOCSIN_TEST_PG``, default the local
server), dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.workers_pg import fresh_database
from tests.drills import Sink
from tests.drills.test_scheduler import AUTH, ServeProcess, free_port, serve_config

DECLARE_TIMEOUT = aiohttp.ClientTimeout(total=30)


@asynccontextmanager
async def storage_url(pg: bool, folder: Path) -> AsyncIterator[str]:
    if pg:
        async with fresh_database() as url:
            yield url
    else:
        yield f"sqlite:///{folder / 'tocsin.db'}"


def audience(sink_url: str, recipients: int) -> dict[str, Any]:
    """One default audience of ``recipients`` webhooks; the product's delivery defaults."""
    return {
        "delivery": {"shutdown_timeout": 2},
        "audiences": {
            "all-hands": {
                "statement": "internal",
                "destinations": [{"webhook": f"{sink_url}/d/{i}"} for i in range(recipients)],
            }
        },
        "default_audiences": ["all-hands"],
    }


async def declare(session: aiohttp.ClientSession, url: str, k: int) -> float:
    """Declare one incident; the epoch time just before the request was sent."""
    body = {"title": f"Orbis indisponible {k}", "systems": ["Orbis"], "severity": "critical"}
    sent = time.time()
    async with session.post(f"{url}/api/v1/incidents", json=body, headers=AUTH) as answer:
        if answer.status != 201:
            raise AssertionError(f"declaration {k}: {answer.status} {await answer.text()}")
    return sent


async def run(pg: bool, n: int, recipients: int) -> list[float]:
    """Milliseconds from each declaration's POST to its first request at the sink."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        async with storage_url(pg, folder) as url:
            with Sink() as sink:
                port = free_port()
                config = serve_config(
                    folder, url, port, "serve.yaml", audience(sink.url, recipients)
                )
                serve = ServeProcess(config, folder / "serve.log", port).start()
                try:
                    await serve.ready()
                    sent: list[float] = []
                    async with aiohttp.ClientSession(timeout=DECLARE_TIMEOUT) as session:
                        for k in range(n):
                            sent.append(await declare(session, serve.url, k))
                            await sink.wait_for((k + 1) * recipients, timeout=60)
                    serve.stop()
                    errors = serve.errors()
                finally:
                    serve.close()
                seen = await sink.log()
    if errors:
        raise AssertionError(f"serve logged errors: {errors[:5]}")
    if len(seen.ids) != n * recipients:
        raise AssertionError(f"the sink took {len(seen.ids)} requests, expected {n * recipients}")
    firsts = [min(seen.at[k * recipients : (k + 1) * recipients]) for k in range(n)]
    return [(first - at) * 1000 for first, at in zip(firsts, sent, strict=True)]


async def main(n: int, recipients: int, pg: bool) -> None:
    latencies = await run(pg, n, recipients)
    p95 = statistics.quantiles(latencies, n=20, method="inclusive")[18]
    print(
        f"declare_latency: store={'postgres' if pg else 'sqlite'} n={n} recipients={recipients} "
        f"p50_ms={statistics.median(latencies):.0f} p95_ms={p95:.0f} "
        f"max_ms={max(latencies):.0f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50, help="declarations, one after another")
    parser.add_argument("--recipients", type=int, default=300, help="webhooks per declaration")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.recipients, args.pg))
