"""Token buckets (GCRA) that reserve send slots, and pause when a provider says ``Retry-After``.

A reservation gives the earliest moment a message may go; the worker either waits for it
(short) or gives the delivery back to the queue due at that moment (long), so one slow
destination never holds the worker's concurrency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """``rate`` messages per second with bursts of ``burst``; ``paused_until`` from 429s."""

    rate: float
    burst: int
    tat: float = 0.0  # theoretical arrival time of the next message
    paused_until: float = 0.0
    backlog: float = 0.0  # when the last message given back to the queue is due

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    def earliest(self, now: float) -> float:
        tolerance = (max(self.burst, 1) - 1) * self.interval
        return max(now, self.tat - tolerance, self.paused_until)

    def take(self, at: float) -> None:
        self.tat = max(self.tat, at) + self.interval


@dataclass(frozen=True)
class Limit:
    """One bucket to pass: its key and its shape."""

    key: str
    rate: float
    burst: int


class RateLimiter:
    """Buckets by key (``provider:slack``, ``dest:slack:C0CRISIS``…), created on first use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._max_keys = max_keys
        self.waited_seconds = 0.0

    def _bucket(self, limit: Limit) -> TokenBucket:
        bucket = self._buckets.get(limit.key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict()
            bucket = self._buckets[limit.key] = TokenBucket(limit.rate, limit.burst)
        return bucket

    def _evict(self) -> None:
        now = self._clock()
        idle = [k for k, b in self._buckets.items() if b.tat < now and b.paused_until < now]
        for key in idle:
            del self._buckets[key]

    def reserve(self, limits: Sequence[Limit], max_wait: float | None = None) -> float:
        """Reserve the next slot through every bucket; return the seconds to wait for it.

        When the wait exceeds ``max_wait`` no token is taken — the caller gives the delivery
        back to the queue, and a slot it will not use must not delay anyone else. The
        returned wait is then the delivery's place in that bucket's backlog, so deliveries
        given back together come due one interval apart instead of all at once."""
        now = self._clock()
        if not limits:
            return 0.0
        buckets = [self._bucket(limit) for limit in limits]
        at = max(b.earliest(now) for b in buckets)
        if max_wait is not None and at - now > max_wait:
            binding = [b for b in buckets if b.earliest(now) - now > max_wait]
            due = max(at, *(b.backlog for b in binding))
            for bucket in binding:
                bucket.backlog = max(bucket.backlog, due) + bucket.interval
            return due - now
        for bucket in buckets:
            bucket.take(at)
        wait = at - now
        self.waited_seconds += wait
        return wait

    def pause(self, key: str, seconds: float) -> None:
        """The provider asked us to wait (429 ``Retry-After``): only this bucket stops."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.paused_until = max(bucket.paused_until, self._clock() + seconds)

    def paused_for_any(self, limits: Sequence[Limit]) -> float:
        """How long the longest pause among these buckets still runs (0 when none)."""
        return max((self.paused_for(limit.key) for limit in limits), default=0.0)

    def paused_for(self, key: str) -> float:
        bucket = self._buckets.get(key)
        return max(0.0, bucket.paused_until - self._clock()) if bucket else 0.0
