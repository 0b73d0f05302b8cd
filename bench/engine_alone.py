"""The delivery engine without the network: the real dispatcher on SQLite (claim, send,
commit state and attempt per delivery) with a webhook channel that answers at once.

What the engine itself costs per delivery, apart from HTTP: the event loop's thread and
aiosqlite's thread are timed apart (CPU from ``/proc``, Linux). One line per run::

    engine_alone: n=… per_s=… wall_us=… loop_cpu_us=… store_thread_cpu_us=…
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.channels.webhook import WebhookChannel
from bot.collector import tune
from bot.config import WebhookChannelSettings
from bot.delivery.worker import DispatchConfig, Dispatcher
from bot.domain.clock import SystemClock
from bot.domain.models import ChannelName, Delivery, DeliveryState, Outcome
from bot.ports import OutboundMessage, Receipt
from bot.store.sqlite import SqliteStore
from tests import factories


class InstantWebhook(WebhookChannel):
    """Builds the webhook body as for a real send, and answers at once."""

    async def send(self, message: OutboundMessage) -> Receipt:
        self.payload(message)
        await asyncio.sleep(0)  # one turn of the loop, as an answer would take
        return Receipt(provider_id=None, state=DeliveryState.DELIVERED, code="200")


def thread_cpu() -> dict[int, float]:
    """CPU seconds of each thread of this process."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        found[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


async def run(n: int) -> str:
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(str(Path(folder) / "bench.db"))
        await store.open()
        await store.migrate()
        changes = factories.declaration(0)
        stmt = changes.statements[0]
        changes.deliveries = [
            factories.new_delivery(stmt, f"http://127.0.0.1:9/hook/{i % 100}", ChannelName.WEBHOOK)
            for i in range(n)
        ]
        await store.commit(changes)
        channel = InstantWebhook(None, WebhookChannelSettings())  # type: ignore[arg-type]
        channel.rate, channel.burst, channel.destination_rate = 1e9, 10**9, None
        worker = Dispatcher(
            store,
            {ChannelName.WEBHOOK: channel},
            SystemClock(),
            config=DispatchConfig(concurrency=50, batch_size=500, poll_interval=0.05),
        )
        stop, finished = asyncio.Event(), asyncio.Event()
        committed = 0

        def count(delivery: Delivery, outcome: Outcome) -> None:
            nonlocal committed
            committed += outcome.state == DeliveryState.DELIVERED
            if committed == n:
                finished.set()

        worker.observers.append(count)
        before, started = thread_cpu(), time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        await finished.wait()
        elapsed, after = time.perf_counter() - started, thread_cpu()
        stop.set()
        await task
        await store.close()
    loop_thread = threading.get_native_id()
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    others = sum(cpu for tid, cpu in spent.items() if tid != loop_thread)
    return (
        f"engine_alone: n={n} per_s={n / elapsed:.0f} wall_us={elapsed / n * 1e6:.0f} "
        f"loop_cpu_us={spent[loop_thread] / n * 1e6:.0f} "
        f"store_thread_cpu_us={others / n * 1e6:.0f}"
    )


async def main(n: int, runs: int) -> None:
    for _ in range(runs):
        print(await run(n), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tune("tuned")
    asyncio.run(main(args.n, args.runs))
