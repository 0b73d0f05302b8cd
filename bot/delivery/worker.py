"""The worker: claim due deliveries → send through their channel → record every attempt.

Claims and outcomes are batched (one transaction per batch); a lease covers each claimed row,
so a crashed worker's deliveries come back to the queue when the lease expires. The lease is
renewed while the send runs, and an outcome is written only under the lease that still holds
the row (fencing): all of that is :class:`bot.delivery.queue.Queue`. The dispatcher composes
it with a :class:`~bot.delivery.sending.Sender` (which decides each outcome), a
:class:`~bot.delivery.routing.Router` and the statements' source. Each provider has a circuit
breaker: while one is down, people are re-routed to their next channel and destinations wait,
shown as blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.delivery.health import CircuitBreakers, OutageLog, ProviderHealth
from bot.delivery.queue import LeaseLost, Queue, Release
from bot.delivery.ratelimit import RateLimiter
from bot.delivery.retry import RetryPolicy
from bot.delivery.routing import Router
from bot.delivery.sending import Sender
from bot.delivery.statements import StatementSource
from bot.domain.ack_tokens import AckKeys
from bot.domain.models import (
    ChannelName,
    Delivery,
    Outcome,
)
from bot.ports import Channel, Clock, Store

log = logging.getLogger("tocsin.worker")

Observer = Callable[[Delivery, Outcome], None]
TimelineNote = Callable[[str, str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class DispatchConfig:
    """Worker tuning; defaults suit one process on a small machine."""

    lease_seconds: float = 60.0
    concurrency: int = 50
    batch_size: int = 200
    poll_interval: float = 0.5
    # The longest an outcome waits for the rest of its round: a send that hangs (a provider
    # slow to answer, a rate limit's wait) must not hold the others' outcomes and slots.
    write_after: float = 0.05
    shutdown_timeout: float = 10.0
    inline_wait_max: float = 0.5
    escalation_interval: float = 1.0
    breaker_threshold: int = 3
    breaker_cooldown: float = 5.0
    statement_cache: int = 10_000  # statements kept; those of sends under way are never evicted


class Dispatcher:
    """Runs the delivery loop for one worker process."""

    def __init__(
        self,
        store: Store,
        channels: Mapping[ChannelName, Channel],
        clock: Clock,
        *,
        public_url: str = "http://127.0.0.1:8080",
        config: DispatchConfig | None = None,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        worker_id: str | None = None,
        tokens: AckKeys | None = None,
    ) -> None:
        self.store = store
        self.channels = dict(channels)
        self.clock = clock
        self.config = config or DispatchConfig()
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or RateLimiter(clock=clock.timestamp)
        self.worker_id = worker_id or f"worker-{secrets.token_hex(4)}"
        self.breakers = CircuitBreakers(
            clock.now,
            threshold=self.config.breaker_threshold,
            cooldown=self.config.breaker_cooldown,
        )
        self.breakers.on_change.append(self._health_changed)
        self.queue = Queue(store, clock, self.worker_id, self.config.lease_seconds)
        self.statements = StatementSource(store, self.config.statement_cache)
        self.router = Router(store, self.statements, self.channels, self._channel_down)
        self.outages = OutageLog()
        self.sender = Sender(
            store,
            self.channels,
            clock,
            statements=self.statements,
            router=self.router,
            breakers=self.breakers,
            limiter=self.limiter,
            retry=self.retry,
            outages=self.outages,
            guard=self.queue.leases.sending,
            public_url=public_url.rstrip("/"),
            inline_wait_max=self.config.inline_wait_max,
            tokens=tokens,
        )
        self.observers: list[Observer] = []
        self.timeline_note: TimelineNote | None = None
        self.alive_at: datetime | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        # Claimed rows waiting for a send slot, urgent lane first: a send that ends starts
        # the next at once, without a round trip to the store.
        self._ready: list[tuple[int, int, Delivery]] = []
        self._order = itertools.count()
        self._stopping = False
        self._progress = asyncio.Event()
        self._next_escalation_scan = 0.0
        # When the loop's current wait ends at the latest (outside a wait, a wake-up is
        # harmless: each wait clears the event first).
        self._wake_by = math.inf

    # --- the loop ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Claim, send and record until ``stop`` is set; then finish in-flight sends (up to
        the shutdown timeout). A store that fails (restart, dropped connection) is retried
        with backoff; nothing buffered is dropped."""
        loop = asyncio.get_running_loop()
        failures = 0
        heartbeat = asyncio.create_task(self.queue.heartbeat())
        try:
            while not stop.is_set():
                self.alive_at = self.clock.now()
                try:
                    await self.flush()
                    claimed = await self._claim_and_start()
                    if loop.time() >= self._next_escalation_scan:
                        self._next_escalation_scan = loop.time() + self.config.escalation_interval
                        await self.escalate_due()
                    failures = 0
                except Exception:  # the store is down: keep what we have, try again
                    failures += 1
                    log.exception("store unavailable (attempt %d); retrying", failures)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), min(10.0, 0.2 * 2**failures))
                    continue
                if claimed == 0 or self._room() < self._low_water:
                    await self._wait(stop)
        finally:
            try:
                await self._shutdown()
            finally:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
                self.queue.close()

    def _room(self) -> int:
        """Rows this worker may claim now: up to ``concurrency`` sending plus one batch
        waiting for a slot. Rows whose outcome is not yet written are still leased: they
        count as in flight."""
        held = len(self._inflight) + len(self._ready) + self.queue.unwritten
        return self.config.concurrency + self.config.batch_size - held

    @property
    def _low_water(self) -> int:
        """Claim and record in batches: wait until this many slots are free."""
        return max(1, min(self.config.batch_size, self.config.concurrency // 4))

    async def _wait(self, stop: asyncio.Event) -> None:
        """Until there is something worth a round trip to the store: enough finished sends
        to record and free slots to claim, new work, a row given back coming due, or stop."""
        loop = asyncio.get_running_loop()
        timeout = self.config.poll_interval
        now = loop.time()
        due = self.queue.next_due(now)
        if due is not None:
            # Rows given back to the queue (rate limits, 429s) are due before the next poll.
            timeout = min(timeout, due - now)
        deadline = now + timeout
        while not self._enough_to_do():
            self._progress.clear()
            # The round's write is due ``write_after`` from its first outcome at the latest.
            self._wake_by = deadline
            if self.queue.has_outcomes:
                self._wake_by = min(deadline, self._write_due())
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._progress.wait()),
            ]
            if self._room() > 0:
                waiters.append(asyncio.ensure_future(self.store.wait_for_work(timeout)))
            try:
                done, _ = await asyncio.wait(
                    waiters,
                    timeout=max(0.0, self._wake_by - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
            if not done and loop.time() < deadline:
                continue  # the write is due: the loop's test now says so
            if not done or stop.is_set() or waiters[1] not in done:
                return  # stopped, new work announced, or time to poll

    def _write_due(self) -> float:
        """The loop time by which the buffered outcomes are to be written."""
        return self.queue.outcomes_since + self.config.write_after

    def _enough_to_do(self) -> bool:
        if self.queue.has_releases:
            return True
        if self.queue.has_outcomes:
            # Write once every send under way has its outcome: one transaction per round of
            # sends. Writing every quarter of the concurrency was no faster, and held SQLite's
            # write lock four times as often (another process's commit waited up to 107 ms).
            # A round whose last sends are slow is written after ``write_after`` all the same.
            return (
                not self._inflight
                or self.queue.unwritten >= self.config.concurrency
                or asyncio.get_running_loop().time() >= self._write_due()
            )
        return False

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=self.config.shutdown_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Claimed rows that never got a slot go back to the queue, due now, for any worker.
        self._give_back_ready()
        # Cancelled sends leave their rows leased: the lease expiry hands them to a worker.
        with contextlib.suppress(Exception):
            await self.flush()

    def _give_back_ready(self) -> None:
        now = self.clock.now()
        while self._ready:
            _, _, delivery = heapq.heappop(self._ready)
            self.queue.settle(delivery, Release(delivery.id, now))
            self.statements.done(delivery.statement_id)
            self.queue.finished(delivery.id)

    async def drain(self) -> int:
        """Process everything due now until nothing is due (tests, demos); returns sends."""
        total = 0
        heartbeat = asyncio.create_task(self.queue.heartbeat())
        try:
            while True:
                claimed = await self._claim_and_start()
                while self._inflight or self._ready:
                    if self._inflight:
                        await asyncio.wait(set(self._inflight))
                    await self.flush()  # frees the slots: the next waiting rows start
                await self.flush()
                total += claimed
                if claimed == 0:
                    return total
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _claim_and_start(self) -> int:
        room = self._room()
        if room <= 0:
            return 0
        claimed, fresh = await self.queue.claim(min(room, self.config.batch_size))
        try:
            await self.statements.load(d.statement_id for d in fresh)
        except BaseException:
            for delivery in fresh:
                self.statements.done(delivery.statement_id)
                self.queue.finished(delivery.id)  # back to the queue when the lease expires
            raise
        for delivery in fresh:
            heapq.heappush(self._ready, (delivery.lane, next(self._order), delivery))
        self._start_ready()
        return claimed

    def _start_ready(self) -> None:
        """Start waiting rows, urgent lane first, while send slots are free. A slot is free
        once its send's outcome is committed: sends under way and outcomes not yet written
        (what a crash could send twice) stay within ``concurrency``."""
        while (
            not self._stopping
            and self._ready
            and len(self._inflight) + self.queue.unrecorded < self.config.concurrency
        ):
            _, _, delivery = heapq.heappop(self._ready)
            task = asyncio.create_task(self._run_one(delivery))
            self._inflight.add(task)
            task.add_done_callback(self._done)

    async def _run_one(self, delivery: Delivery) -> None:
        try:
            self.queue.settle(delivery, await self.sender.send(delivery))
        except LeaseLost:
            # Another worker may hold the row now: nothing is sent or recorded from here.
            log.warning(
                "delivery %d: lease lapsed before its outcome, left to the next holder", delivery.id
            )
        finally:
            self.statements.done(delivery.statement_id)
            self.queue.finished(delivery.id)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._start_ready()
        # Wake the loop only when it has something to write, or to set the time by which it
        # will (this round's first outcome).
        if self._enough_to_do() or (self.queue.has_outcomes and self._write_due() < self._wake_by):
            self._progress.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def flush(self) -> None:
        """Write buffered outcomes, releases and health changes; on failure keep them."""
        written = await self.queue.flush()
        self._start_ready()  # their slots are free
        for delivery, outcome in written:
            for observer in self.observers:
                observer(delivery, outcome)
        await self._flush_health()

    async def _flush_health(self) -> None:
        for health in self.outages.take_changes():
            await self.store.save_health(
                health.name, health.state.value, health.since, health.last_error
            )
        if self.timeline_note is not None:
            for incident_id, action, detail in self.outages.take_notes(self.breakers.snapshot()):
                await self.timeline_note(incident_id, action, detail)

    def _health_changed(self, health: ProviderHealth) -> None:
        self.outages.health_changed(health)
        log.warning("provider %s is %s", health.name, health.state.value)

    def _channel_down(self, channel: ChannelName, address: str) -> bool:
        adapter = self.channels.get(channel)
        return adapter is None or self.breakers.is_down(adapter.provider_key(address))

    # --- escalation ----------------------------------------------------------------
    async def escalate_due(self) -> int:
        """Re-send unacknowledged deliveries on their policy's escalation channel."""
        now = self.clock.now()
        escalated = 0
        for delivery in await self.store.due_escalations(now, 200):
            follow_up = await self.router.escalation(delivery, now)
            if follow_up is not None and await self.store.mark_escalated(
                delivery.id, follow_up, now
            ):
                escalated += 1
        return escalated
