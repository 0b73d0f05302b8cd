"""Fan-out benchmark: 10,000 deliveries to a local webhook sink (its own process).

Compares, in one run and against the same sink:
  tocsin  — the real engine on SQLite: claim, send, and commit state + attempt per delivery;
  raw     — a bare aiohttp POST loop, one shared ClientSession, the same 50 in flight
            (``--concurrency``: both sides);
  apprise — Apprise's own notify() to the same number of json:// targets.
Only deliveries whose state and attempt record are committed count for Tocsin. Both sides
run on the same event loop (``--loop``) and garbage collector settings (``--gc``: the
product's ``server.gc``, applied to this whole process); each run prints one line::

    fanout: n=… loop=… gc=… tocsin_per_s=… raw_per_s=… apprise_per_s=… tocsin/raw=… … cpu_us=…/…

``cpu_us`` is the benchmark process's CPU time per message (all its threads) for Tocsin
(including the commit of the rows) and for the raw loop; the sink's is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.channels.webhook import WebhookChannel
from bot.collector import tune
from bot.config import WebhookChannelSettings
from bot.delivery.worker import DispatchConfig, Dispatcher
from bot.domain.clock import SystemClock
from bot.domain.models import ChannelName, Delivery, DeliveryState, Outcome
from bot.event_loop import loop_factory
from bot.ports import Page
from bot.store.sqlite import SqliteStore
from tests import factories

CONCURRENCY = 50  # sends in flight on both sides (--concurrency); the product's default


@contextlib.contextmanager
def sink_process() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("sink.py"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


async def sink_count(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/count") as response:
        return int((await response.json())["count"])


async def run_tracked(
    channel: WebhookChannel,
    url: str,
    n: int,
    concurrency: int,
    timed: AbstractContextManager[object] | None = None,
) -> float:
    """The real engine on SQLite sends ``n`` deliveries to ``url``/hook/… through ``channel``
    (its rate limits lifted); returns deliveries a second from the start of the worker to the
    commit of the last outcome, the part ``timed`` wraps, once every state and attempt is
    checked committed."""
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(str(Path(folder) / "bench.db"))
        await store.open()
        await store.migrate()
        changes = factories.declaration(0)
        stmt = changes.statements[0]
        changes.deliveries = [
            factories.new_delivery(stmt, f"{url}/hook/{i % 100}", ChannelName.WEBHOOK)
            for i in range(n)
        ]
        await store.commit(changes)
        channel.rate, channel.burst, channel.destination_rate = 1e9, 10**9, None
        worker = Dispatcher(
            store,
            {ChannelName.WEBHOOK: channel},
            SystemClock(),
            config=DispatchConfig(concurrency=concurrency, batch_size=500, poll_interval=0.05),
        )
        stop, finished = asyncio.Event(), asyncio.Event()
        committed = 0

        def count(delivery: Delivery, outcome: Outcome) -> None:
            # Called once the outcome's batch is committed: the store is not polled.
            nonlocal committed
            committed += outcome.state == DeliveryState.DELIVERED
            if committed == n:
                finished.set()

        worker.observers.append(count)
        with timed or contextlib.nullcontext():
            started = time.perf_counter()
            task = asyncio.create_task(worker.run(stop))
            await finished.wait()
            elapsed = time.perf_counter() - started
        stop.set()
        await task
        counts = await store.delivery_counts(stmt.incident_id)
        attempts = await store.attempts(
            [d.id for d in await store.deliveries(stmt.incident_id, Page(limit=n))]
        )
        await store.close()
    done = counts.get(DeliveryState.DELIVERED.value, 0)
    recorded = sum(1 for rows in attempts.values() if rows)
    assert done == n and recorded == n, (counts, recorded)
    return done / elapsed


async def bench_tocsin(url: str, n: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        channel = WebhookChannel(session, WebhookChannelSettings())
        return await run_tracked(channel, url, n, concurrency)


async def bench_raw(url: str, n: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(range(n))
        ok = 0

        async def lane() -> None:
            nonlocal ok
            for i in queue:
                async with session.post(
                    f"{url}/raw/{i % 100}", json={"text": "Orbis indisponible", "n": i}
                ) as r:
                    await r.read()
                    ok += r.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    assert ok == n
    return n / elapsed


async def bench_apprise(url: str, n: int) -> float:
    import apprise

    host = url.removeprefix("http://")
    notifier = apprise.Apprise()
    for i in range(n):
        notifier.add(f"json://{host}/apprise/{i % 100}?n={i}")
    started = time.perf_counter()
    ok = await notifier.async_notify(body="Orbis indisponible", title="Incident")
    elapsed = time.perf_counter() - started
    assert ok, "apprise reported a failure"
    return n / elapsed


async def main(
    n: int, apprise_n: int, runs: int, only: str, loop: str, gc: str, concurrency: int
) -> None:
    with sink_process() as url:
        for _ in range(runs):
            figures = [f"n={n}", f"loop={loop}", f"gc={gc}"]
            if concurrency != CONCURRENCY:
                figures.append(f"in_flight={concurrency}")
            started = time.process_time()
            raw = await bench_raw(url, n, concurrency) if only in ("all", "raw") else None
            raw_cpu = time.process_time() - started
            started = time.process_time()
            tocsin = await bench_tocsin(url, n, concurrency) if only in ("all", "tocsin") else None
            tocsin_cpu = time.process_time() - started  # includes committing the n rows
            if tocsin is not None:
                figures.append(f"tocsin_per_s={tocsin:.0f}")
            if raw is not None:
                figures.append(f"raw_per_s={raw:.0f}")
            if only == "all":
                apprise_rate = await bench_apprise(url, apprise_n)
                assert tocsin is not None and raw is not None
                figures += [
                    f"apprise_per_s={apprise_rate:.0f}",
                    f"tocsin/raw={tocsin / raw:.3f}",
                    f"tocsin/apprise={tocsin / apprise_rate:.1f}",
                    f"cpu_us={tocsin_cpu / n * 1e6:.0f}/{raw_cpu / n * 1e6:.0f}",
                ]
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            async with aiohttp.ClientSession() as session:
                total = await sink_count(session, url)
            print(f"fanout: {' '.join(figures)} rss_mb={rss_mb:.0f} sink_total={total}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument(
        "--apprise-n", type=int, default=None, help="messages for Apprise (default: n)"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs, one line each")
    parser.add_argument(
        "--only", choices=("all", "tocsin", "raw"), default="all", help="e.g. to profile one side"
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of both sides (server.event_loop)",
    )
    parser.add_argument(
        "--gc",
        choices=("tuned", "default"),
        default="tuned",
        help="the garbage collector settings of this process (server.gc)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        help="sends in flight, the same on both sides (Tocsin's delivery.concurrency)",
    )
    args = parser.parse_args()
    tune(args.gc)
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(
            main(
                args.n,
                args.apprise_n or args.n,
                args.runs,
                args.only,
                args.loop,
                args.gc,
                args.concurrency,
            )
        )
