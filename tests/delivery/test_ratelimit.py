"""Rate limiters alone (in memory) and sharing one budget through a store."""

from __future__ import annotations

from datetime import timedelta

from bot.delivery.ratelimit import SHARED_RATE_MARGIN, Limit, RateLimiter
from bot.delivery.retry import RetryPolicy
from bot.delivery.worker import Dispatcher
from bot.domain.clock import FakeClock
from bot.domain.errors import TransientError
from bot.domain.models import ChannelName, DeliveryState
from bot.store.memory import MemoryStore
from tests import factories as f
from tests.fakes.channels import RecordingChannel

PROVIDER = [Limit("provider:sms", 10.0, 5)]


class Epoch:
    """A limiter clock in epoch seconds that only moves when told to."""

    def __init__(self) -> None:
        self.now = f.T0.timestamp()

    def __call__(self) -> float:
        return self.now


async def test_a_bare_limiter_needs_no_store() -> None:
    clock = Epoch()
    limiter = RateLimiter(clock=clock)
    assert [await limiter.acquire(PROVIDER, max_wait=0.0) for _ in range(5)] == [0.0] * 5
    assert await limiter.acquire(PROVIDER, max_wait=0.0) > 0


async def test_workers_sharing_a_store_share_the_burst_and_the_rate() -> None:
    store, clock = MemoryStore(), Epoch()
    workers = [RateLimiter(clock=clock, shared=store) for _ in range(4)]

    granted = [await w.acquire(PROVIDER, max_wait=0.0) for w in workers for _ in range(3)]
    assert granted.count(0.0) == 5  # the burst, for the four of them together

    granted = []
    for _ in range(2):  # one second (of the shared rate) in two halves: ten more, whoever asks
        clock.now += 0.5 / SHARED_RATE_MARGIN + 1e-4
        granted += [await w.acquire(PROVIDER, max_wait=0.0) for _ in range(3) for w in workers]
    assert granted.count(0.0) == 10


async def test_deliveries_given_back_together_come_due_one_interval_apart() -> None:
    store, clock = MemoryStore(), Epoch()
    limiter = RateLimiter(clock=clock, shared=store)
    for _ in range(5):
        assert await limiter.acquire(PROVIDER, max_wait=0.0) == 0.0
    waits = [round(await limiter.acquire(PROVIDER, max_wait=0.0), 3) for _ in range(3)]
    assert waits == [0.1, 0.2, 0.3]


async def test_a_429_in_one_worker_pauses_the_others() -> None:
    store, clock = MemoryStore(), Epoch()
    first, second = (RateLimiter(clock=clock, shared=store) for _ in range(2))
    assert await second.acquire(PROVIDER, max_wait=0.0) == 0.0
    await first.pause("provider:sms", 30)
    clock.now += 1.0
    assert round(await second.acquire(PROVIDER, max_wait=0.5), 3) == 29.0


async def test_a_429_storm_never_fails_a_delivery() -> None:
    store, clock = MemoryStore(), FakeClock()
    changes = f.declaration(0)
    changes.deliveries = [f.new_delivery(changes.statements[0], "+33612345678", ChannelName.SMS)]
    await store.commit(changes)
    sms = RecordingChannel(ChannelName.SMS)
    storm = 12  # more 429s than max_attempts
    sms.script.extend(
        TransientError("429 too many requests", "429", retry_after=1.0) for _ in range(storm)
    )
    retry = RetryPolicy(max_attempts=4, backoff_base=1.0, jitter=lambda: 0.0)
    limiter = RateLimiter(clock=lambda: clock.now().timestamp(), shared=store)
    worker = Dispatcher(store, {ChannelName.SMS: sms}, clock, retry=retry, limiter=limiter)

    for _ in range(storm + 1):
        await worker.drain()
        clock.advance(2)

    [d] = await store.deliveries("INC-2023-0830-01")
    assert (d.state, d.attempts) == (DeliveryState.DELIVERED, 1)
    attempts = (await store.attempts([d.id]))[d.id]
    assert [(a.outcome, a.code) for a in attempts] == [("throttled", "429")] * storm + [
        ("delivered", None)
    ]
    assert attempts[1].at - attempts[0].at >= timedelta(seconds=1)


class Unreachable:
    """A shared budget whose database is away."""

    async def take_tokens(
        self, key: str, rate: float, burst: float, want: int, now: float
    ) -> tuple[int, float]:
        raise ConnectionResetError("database gone")

    async def pause_bucket(self, key: str, until: float) -> None:
        raise ConnectionResetError("database gone")


async def test_without_its_database_a_worker_keeps_the_limits_on_its_own() -> None:
    clock = Epoch()
    limiter = RateLimiter(clock=clock, shared=Unreachable())
    waits = [await limiter.acquire(PROVIDER, max_wait=0.0) for _ in range(8)]
    assert waits.count(0.0) == 5
    await limiter.pause("provider:sms", 30)
    clock.now += 1.0
    assert await limiter.acquire(PROVIDER, max_wait=0.0) > 28
