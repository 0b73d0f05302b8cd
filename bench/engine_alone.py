"""The delivery engine without the network: ``bench/fanout.py``'s Tocsin side (the real
dispatcher on SQLite: claim, send, commit state and attempt per delivery) with a webhook
channel that answers at once.

What the engine itself costs per delivery, apart from HTTP: the event loop's thread and
aiosqlite's thread are timed apart (CPU from ``/proc``, Linux). One line per run::

    engine_alone: n=… per_s=… wall_us=… loop_cpu_us=… store_thread_cpu_us=…
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import CONCURRENCY, run_tracked

from bot.channels.webhook import WebhookChannel
from bot.collector import tune
from bot.config import WebhookChannelSettings
from bot.domain.models import DeliveryState
from bot.ports import OutboundMessage, Receipt


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


class ThreadCpu:
    """Around the timed part: the CPU seconds each thread spent in it."""

    def __enter__(self) -> None:
        self.before = thread_cpu()

    def __exit__(self, *exc: object) -> None:
        after = thread_cpu()
        self.spent = {tid: cpu - self.before.get(tid, 0.0) for tid, cpu in after.items()}


async def run(n: int) -> str:
    cpu = ThreadCpu()
    channel = InstantWebhook(None, WebhookChannelSettings())  # type: ignore[arg-type]
    rate = await run_tracked(channel, "http://127.0.0.1:9", n, CONCURRENCY, timed=cpu)
    loop_thread = threading.get_native_id()
    others = sum(spent for tid, spent in cpu.spent.items() if tid != loop_thread)
    return (
        f"engine_alone: n={n} per_s={rate:.0f} wall_us={1e6 / rate:.0f} "
        f"loop_cpu_us={cpu.spent[loop_thread] / n * 1e6:.0f} "
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
