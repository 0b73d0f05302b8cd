"""Rate-limited fan-out: stand-ins that enforce Slack-, Telegram- and SMS-like limits.

Three local providers, one port each, refuse with 429 (and ``Retry-After`` in whole seconds)
any message beyond their published limits, checked with the same token-bucket arithmetic
(GCRA) a provider uses:

  slack     10 msg/s for the workspace (burst 20), 1 msg/s per channel (burst 3);
            8 channels × 12 messages;
  telegram  30 msg/s for the bot (burst 30), 1 msg/s per chat; 300 chats × 1 message;
  sms       10 msg/s for the account (burst 10), 1 msg/s per number (burst 5); 100 numbers.

One declaration fans out to all three at once through the real worker (defaults: 50 in
flight, 0.5 s poll, SQLite queue, rate limits shared through the store as in ``tocsin
worker``), each channel configured with the provider's limits through
``RateLimits``/``apply_limits`` — the webhook adapter stands in for each provider's HTTP API.
The theoretical bound is the time the limits alone impose: for every bucket, the moment its
last message may pass, (messages − burst) ÷ rate. Figures: completion ÷ bound, and the share
of requests refused with 429.

    python bench/ratelimited.py [--tolerance-ms 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.channels.registry import apply_limits
from bot.channels.webhook import WebhookChannel
from bot.config import RateLimits, WebhookChannelSettings
from bot.delivery.ratelimit import RateLimiter
from bot.delivery.worker import Dispatcher
from bot.domain.clock import SystemClock
from bot.domain.models import ChannelName
from bot.ports import Channel
from bot.store.sqlite import SqliteStore
from tests import factories
from tests.fakes.http_standin import HttpStandin, RecordedRequest, Reply

INCIDENT = "INC-2023-0830-01"


@dataclass
class Bucket:
    """GCRA: ``rate`` per second, ``burst`` at once; ``tolerance`` forgives network jitter."""

    rate: float
    burst: int
    tat: float = 0.0

    def admit(self, now: float, tolerance: float) -> float:
        """0.0 if a message may pass now (and count it), else the seconds until it may."""
        interval = 1 / self.rate
        earliest = self.tat - (self.burst - 1) * interval - tolerance
        if now < earliest:
            return earliest - now
        self.tat = max(self.tat, now) + interval
        return 0.0


@dataclass
class Provider:
    """One provider's published limits, enforced, and what it saw."""

    name: str
    channel: ChannelName
    limits: RateLimits
    destinations: int
    per_destination: int
    tolerance_s: float
    overall: Bucket = field(init=False)
    per_path: dict[str, Bucket] = field(default_factory=dict)
    accepted: list[float] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        assert self.limits.rate is not None and self.limits.burst is not None
        self.overall = Bucket(self.limits.rate, self.limits.burst)

    @property
    def messages(self) -> int:
        return self.destinations * self.per_destination

    def bound(self) -> float:
        """Seconds the limits alone impose on this provider's share of the fan-out."""
        assert self.limits.destination_rate is not None
        assert self.limits.destination_burst is not None
        overall = (self.messages - self.overall.burst) / self.overall.rate
        per_destination = (
            self.per_destination - self.limits.destination_burst
        ) / self.limits.destination_rate
        return max(0.0, overall, per_destination)

    def __call__(self, request: RecordedRequest) -> Reply:
        now = time.monotonic()
        assert self.limits.destination_rate is not None
        assert self.limits.destination_burst is not None
        dest = self.per_path.setdefault(
            request.path, Bucket(self.limits.destination_rate, self.limits.destination_burst)
        )
        # Check both before counting either, as a provider does.
        wait = max(
            Bucket(dest.rate, dest.burst, dest.tat).admit(now, self.tolerance_s),
            Bucket(self.overall.rate, self.overall.burst, self.overall.tat).admit(
                now, self.tolerance_s
            ),
        )
        if wait > 0:
            self.refused += 1
            retry_after = str(max(1, math.ceil(wait)))
            return Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": retry_after})
        dest.admit(now, self.tolerance_s)
        self.overall.admit(now, self.tolerance_s)
        self.accepted.append(now)
        return Reply(200, {"ok": True, "id": str(request.json["delivery_id"])})


def providers(tolerance_s: float) -> list[Provider]:
    """The three providers of the module docstring, with their published limits."""
    return [
        Provider(
            name="slack",
            channel=ChannelName.SLACK,
            limits=RateLimits(rate=10, burst=20, destination_rate=1, destination_burst=3),
            destinations=8,
            per_destination=12,
            tolerance_s=tolerance_s,
        ),
        Provider(
            name="telegram",
            channel=ChannelName.TELEGRAM,
            limits=RateLimits(rate=30, burst=30, destination_rate=1, destination_burst=1),
            destinations=300,
            per_destination=1,
            tolerance_s=tolerance_s,
        ),
        Provider(
            name="sms",
            channel=ChannelName.SMS,
            limits=RateLimits(rate=10, burst=10, destination_rate=1, destination_burst=5),
            destinations=100,
            per_destination=1,
            tolerance_s=tolerance_s,
        ),
    ]


async def main(tolerance_ms: float, n_workers: int) -> None:
    plan = providers(tolerance_ms / 1000)
    standins = [HttpStandin(default=p) for p in plan]
    for standin in standins:
        await standin.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            store = SqliteStore(str(Path(folder) / "queue.db"))
            await store.open()
            await store.migrate()
            changes = factories.declaration(0)
            statement = changes.statements[0]
            for provider, standin in zip(plan, standins, strict=True):
                for _ in range(provider.per_destination):
                    for d in range(provider.destinations):
                        changes.deliveries.append(
                            factories.new_delivery(
                                statement,
                                f"{standin.url}/{provider.name}/{d}",
                                provider.channel,
                                audience=provider.name,
                            )
                        )
            await store.commit(changes)
            async with aiohttp.ClientSession() as session:
                channels: dict[ChannelName, Channel] = {}
                for provider in plan:
                    adapter = WebhookChannel(session, WebhookChannelSettings())
                    apply_limits(adapter, provider.limits)
                    channels[provider.channel] = adapter
                # As ``tocsin worker`` runs it: the buckets are the deployment's, in the store;
                # with ``--workers`` several workers share them.
                workers = [
                    Dispatcher(
                        store,
                        channels,
                        SystemClock(),
                        limiter=RateLimiter(clock=time.time, shared=store),
                    )
                    for _ in range(n_workers)
                ]
                stop = asyncio.Event()
                started = time.monotonic()
                running = [asyncio.create_task(worker.run(stop)) for worker in workers]
                while await store.pending_count(INCIDENT) > 0:
                    await store.wait_for_work(0.05)  # progress check, not synchronisation
                stop.set()
                await asyncio.gather(*running)
            counts = await store.delivery_counts(INCIDENT)
            await store.close()
    finally:
        for standin in standins:
            await standin.stop()
    total = sum(p.messages for p in plan)
    assert counts == {"delivered": total}, counts
    refused = sum(p.refused for p in plan)
    for p in plan:
        took = max(p.accepted) - started
        print(
            f"  {p.name}: n={p.messages} bound_s={p.bound():.2f} took_s={took:.2f} "
            f"ratio={took / p.bound():.3f} refused_429={p.refused}"
        )
    bound = max(p.bound() for p in plan)
    took = max(max(p.accepted) for p in plan) - started
    requests = total + refused
    print(
        f"ratelimited: n={total} bound_s={bound:.2f} took_s={took:.2f} "
        f"ratio={took / bound:.3f} share_429={refused / requests:.4f} "
        f"refused={refused} requests={requests} tolerance_ms={tolerance_ms:g} workers={n_workers}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--tolerance-ms",
        type=float,
        default=10.0,
        help="how early a provider forgives a message (network jitter)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="workers sharing the limits (one process)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.tolerance_ms, args.workers))
