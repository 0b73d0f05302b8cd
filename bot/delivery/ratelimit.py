"""Token buckets that give send slots, and pause when a provider says ``Retry-After``.

A slot is the earliest moment a message may go; the worker either waits for it (short) or
gives the delivery back to the queue due at that moment (long), so one slow destination
never holds the worker's concurrency.

Alone, a limiter keeps its buckets in memory (GCRA reservations). Given the deployment's
shared budget (the store), it also holds the rate for every worker together: past its own
reservation, a send needs a token of the bucket in the database, which a worker takes in
small chunks (a tenth of a second of the rate) and uses at once; a 429 pauses the bucket
for every worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("tocsin.worker")

# A worker asks the shared bucket for this much of the rate at a time, and uses it within
# that time or leaves it: N workers stay within the rate plus the burst.
CHUNK_SECONDS = 0.1
# A provider counts arrivals by its own clock: a send exactly on the limit arrives over it
# after any network jitter. Shared buckets refill this much under the published rate.
SHARED_RATE_MARGIN = 0.98
# After a shared wait, sleep this much longer: a token due at t is there at t, not before.
_MARGIN = 0.002
# Waits for a shared token inside one send before the delivery goes back to the queue.
_INLINE_TRIES = 3


class SharedBudget(Protocol):
    """Token buckets shared by every worker of the deployment (the store implements it)."""

    async def take_tokens(
        self, key: str, rate: float, burst: float, want: int, now: float
    ) -> tuple[int, float]: ...

    async def pause_bucket(self, key: str, until: float) -> None: ...


@dataclass(slots=True)
class TokenBucket:
    """``rate`` messages per second with bursts of ``burst``; ``paused_until`` from 429s."""

    rate: float
    burst: int
    tat: float = 0.0  # theoretical arrival time of the next message
    paused_until: float = 0.0
    backlog: float = 0.0  # when the last message given back to the queue is due
    interval: float = field(init=False)
    tolerance: float = field(init=False)  # how far ahead of its pace a burst may run

    def __post_init__(self) -> None:
        self.interval = 1.0 / self.rate
        self.tolerance = (max(self.burst, 1) - 1) * self.interval

    def earliest(self, now: float) -> float:
        return max(now, self.tat - self.tolerance, self.paused_until)

    def take(self, at: float) -> None:
        self.tat = max(self.tat, at) + self.interval


@dataclass(slots=True)
class Stash:
    """Tokens one worker took from a shared bucket and has not used yet."""

    tokens: int = 0
    until: float = 0.0  # unused tokens lapse then
    empty_until: float = 0.0  # the shared bucket said: nothing before this
    paused_until: float = 0.0  # a 429 seen by this worker
    backlog: float = 0.0  # when the last delivery given back to the queue is due
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def take(self, now: float) -> bool:
        if self.tokens > 0 and now <= self.until:
            self.tokens -= 1
            return True
        self.tokens = 0
        return False


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket to pass: its key and its shape."""

    key: str
    rate: float
    burst: int


class RateLimiter:
    """Buckets by key (``provider:slack``, ``dest:slack:C0CRISIS``…), created on first use."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
        shared: SharedBudget | None = None,
    ):
        """``shared``: the deployment's budget; its buckets are keyed by epoch time, so
        ``clock`` must then give epoch seconds."""
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._stashes: dict[str, Stash] = {}
        self._max_keys = max_keys
        self._shared = shared
        self._shared_down = False
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
        at = now
        for bucket in buckets:  # a loop, not max() over a generator: this runs every send
            earliest = bucket.earliest(now)
            if earliest > at:
                at = earliest
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

    async def acquire(self, limits: Sequence[Limit], max_wait: float) -> float:
        """Wait (up to about ``max_wait``) for a slot through every bucket. Returns 0.0 when
        the message may go now, else the seconds after which to try again: the caller gives
        the delivery back to the queue, due then."""
        if self._shared is not None and limits:
            return await self._acquire_shared(self._shared, limits, max_wait)
        wait = self.reserve(limits, max_wait=max_wait)
        if wait > max_wait:
            return wait
        if wait > 0:
            await asyncio.sleep(wait)  # rate limiting, not synchronisation
            # A 429 came back while this send waited for its slot: do not add another.
            return self.paused_for_any(limits)
        return 0.0

    async def _acquire_shared(
        self, shared: SharedBudget, limits: Sequence[Limit], max_wait: float
    ) -> float:
        # This worker's own pace first (in memory, no round trip), then the deployment's.
        wait = self.reserve(limits, max_wait=max_wait)
        if wait > max_wait:
            return wait
        if wait > 0:
            await asyncio.sleep(wait)  # rate limiting, not synchronisation
        paused = self.paused_for_any(limits)
        if paused > 0:
            return paused
        taken: list[Stash] = []
        for limit in limits:
            try:
                wait = await self._token(shared, limit, max_wait)
            except Exception:  # the database is away: this worker's own pace holds meanwhile
                if not self._shared_down:
                    log.warning("shared rate limits unavailable; limiting this process only")
                self._shared_down = True
                continue
            self._shared_down = False
            if wait > 0:
                for stash in taken:  # not used: the next send of this worker may
                    stash.tokens += 1
                return self._queue_slot(limit, wait)
            taken.append(self._stashes[limit.key])
        return 0.0

    async def _token(self, shared: SharedBudget, limit: Limit, max_wait: float) -> float:
        """One token of ``limit``'s shared bucket (0.0), or the seconds until there is one."""
        stash = self._stash(limit.key)
        want = max(1, int(limit.rate * CHUNK_SECONDS))
        wait = 0.0
        for attempt in range(_INLINE_TRIES):
            now = self._clock()
            if now < stash.paused_until:
                wait = stash.paused_until - now
            elif stash.take(now):
                return 0.0
            elif now < stash.empty_until:
                wait = stash.empty_until - now
            else:
                async with stash.lock:  # one round trip at a time per key in this worker
                    now = self._clock()
                    if stash.take(now):
                        return 0.0
                    granted, wait = await shared.take_tokens(
                        limit.key, limit.rate * SHARED_RATE_MARGIN, limit.burst, want, now
                    )
                    if granted > 0:
                        stash.tokens = granted - 1
                        stash.until = now + want / limit.rate  # a chunk's time
                        return 0.0
                    stash.empty_until = now + wait
            if wait > max_wait or attempt == _INLINE_TRIES - 1:
                break
            await asyncio.sleep(wait + _MARGIN)  # rate limiting, not synchronisation
            self.waited_seconds += wait
        return max(wait, _MARGIN)

    def _queue_slot(self, limit: Limit, wait: float) -> float:
        """Deliveries given back together come due one interval apart, not all at once."""
        stash = self._stash(limit.key)
        now = self._clock()
        due = max(now + wait, stash.backlog)
        stash.backlog = due + 1.0 / limit.rate
        return due - now

    def _stash(self, key: str) -> Stash:
        stash = self._stashes.get(key)
        if stash is None:
            if len(self._stashes) >= self._max_keys:
                now = self._clock()
                for idle in [
                    k
                    for k, s in self._stashes.items()
                    if max(s.backlog, s.empty_until, s.paused_until) < now and not s.lock.locked()
                ]:
                    del self._stashes[idle]
            stash = self._stashes[key] = Stash()
        return stash

    async def pause(self, key: str, seconds: float) -> None:
        """The provider asked us to wait (429 ``Retry-After``): only this bucket stops, in
        this worker at once and, with a shared budget, in every worker."""
        until = self._clock() + seconds
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.paused_until = max(bucket.paused_until, until)
        if self._shared is not None:
            stash = self._stash(key)
            stash.tokens = 0
            stash.paused_until = max(stash.paused_until, until)
            try:
                await self._shared.pause_bucket(key, until)
            except Exception:
                log.warning("could not share a provider's pause; it holds in this worker")

    def paused_for_any(self, limits: Sequence[Limit]) -> float:
        """How long the longest pause among these buckets still runs (0 when none)."""
        return max((self.paused_for(limit.key) for limit in limits), default=0.0)

    def paused_for(self, key: str) -> float:
        bucket, stash = self._buckets.get(key), self._stashes.get(key)
        until = max(bucket.paused_until if bucket else 0.0, stash.paused_until if stash else 0.0)
        return max(0.0, until - self._clock())
