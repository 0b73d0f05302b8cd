"""The worker: claim due deliveries → send through their channel → record every attempt.

Claims and outcomes are batched (one transaction per batch); a lease covers each claimed row,
so a crashed worker's deliveries come back to the queue when the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from bot.delivery.ratelimit import Limit, RateLimiter
from bot.delivery.retry import RetryPolicy, with_quick_retries
from bot.domain.audiences import next_channel, statement_kind_for
from bot.domain.errors import PermanentError, TransientError, UnknownOutcome
from bot.domain.models import (
    Attempt,
    ChannelName,
    Delivery,
    DeliveryState,
    NewDelivery,
    Outcome,
    Statement,
)
from bot.domain.services import new_follow_up
from bot.ports import Channel, Clock, OutboundMessage, Receipt, Store

log = logging.getLogger("tocsin.worker")

Observer = Callable[[Delivery, Outcome], None]


@dataclass(frozen=True)
class DispatchConfig:
    """Worker tuning; defaults suit one process on a small machine."""

    lease_seconds: float = 60.0
    concurrency: int = 50
    batch_size: int = 200
    poll_interval: float = 0.5
    shutdown_timeout: float = 10.0
    inline_wait_max: float = 0.5
    escalation_interval: float = 1.0


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
    ) -> None:
        self.store = store
        self.channels = dict(channels)
        self.clock = clock
        self.public_url = public_url.rstrip("/")
        self.config = config or DispatchConfig()
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or RateLimiter(clock=lambda: clock.now().timestamp())
        self.worker_id = worker_id or f"worker-{secrets.token_hex(4)}"
        self.observers: list[Observer] = []
        self.alive_at: datetime | None = None
        self._statements: dict[str, Statement] = {}
        self._events: set[tuple[str, int]] = set()
        self._outcomes: list[tuple[Delivery, Outcome]] = []
        self._released: list[tuple[int, datetime]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Event()
        self._next_escalation_scan = 0.0

    # --- the loop ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Claim, send and record until ``stop`` is set; then finish in-flight sends (up to
        the shutdown timeout) and give back what was not started."""
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self.alive_at = self.clock.now()
                await self.flush()
                claimed = await self._claim_and_start()
                if loop.time() >= self._next_escalation_scan:
                    self._next_escalation_scan = loop.time() + self.config.escalation_interval
                    await self.escalate_due()
                if claimed == 0 or len(self._inflight) >= self.config.concurrency:
                    await self._wait(stop)
        finally:
            await self._shutdown()

    async def _wait(self, stop: asyncio.Event) -> None:
        if self._outcomes or self._released:
            return
        self._progress.clear()
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._progress.wait()),
        ]
        if len(self._inflight) < self.config.concurrency:
            waiters.append(asyncio.ensure_future(
                self.store.wait_for_work(self.config.poll_interval)
            ))
        try:
            await asyncio.wait(
                waiters, timeout=self.config.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _shutdown(self) -> None:
        if self._inflight:
            _, pending = await asyncio.wait(
                self._inflight, timeout=self.config.shutdown_timeout
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Cancelled sends leave their rows leased: the lease expiry hands them to a worker.
        with contextlib.suppress(Exception):
            await self.flush()

    async def drain(self) -> int:
        """Process everything due now until nothing is due (tests, demos); returns sends."""
        total = 0
        while True:
            claimed = await self._claim_and_start()
            if self._inflight:
                await asyncio.wait(self._inflight)
            await self.flush()
            total += claimed
            if claimed == 0:
                return total

    async def _claim_and_start(self) -> int:
        room = self.config.concurrency - len(self._inflight)
        if room <= 0:
            return 0
        claimed = await self.store.claim_due(
            self.worker_id, self.clock.now(), self.config.lease_seconds,
            min(room, self.config.batch_size),
        )
        await self._load_statements(claimed)
        for delivery in claimed:
            task = asyncio.create_task(self._process(delivery))
            self._inflight.add(task)
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._progress.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def flush(self) -> None:
        """Write buffered outcomes and releases (one transaction each)."""
        if self._released:
            released, self._released = self._released, []
            by_time: dict[datetime, list[int]] = {}
            for delivery_id, at in released:
                by_time.setdefault(at, []).append(delivery_id)
            for at, ids in by_time.items():
                await self.store.release(ids, self.worker_id, at)
        if self._outcomes:
            batch, self._outcomes = self._outcomes, []
            await self.store.record([outcome for _, outcome in batch])
            for delivery, outcome in batch:
                for observer in self.observers:
                    observer(delivery, outcome)

    # --- one delivery --------------------------------------------------------------
    async def _load_statements(self, deliveries: list[Delivery]) -> None:
        missing = {d.statement_id for d in deliveries} - self._statements.keys()
        if missing:
            for statement in await self.store.get_statements(sorted(missing)):
                self._statements[statement.id] = statement
        if len(self._statements) > 10_000:
            self._statements.clear()
            self._events.clear()

    def _limits(self, channel: Channel, delivery: Delivery) -> list[Limit]:
        limits = [Limit(f"provider:{channel.provider_key(delivery.address)}",
                        channel.rate, channel.burst)]
        if channel.destination_rate:
            limits.append(Limit(f"dest:{delivery.channel.value}:{delivery.address}",
                                channel.destination_rate, channel.destination_burst))
        return limits

    def message_for(self, delivery: Delivery, statement: Statement) -> OutboundMessage:
        """The outbound message of one delivery."""
        bodies = statement.bodies
        require_ack = delivery.policy.require_ack and delivery.is_member
        if require_ack and "sms_ack" in bodies:
            bodies = {**bodies, "sms": bodies["sms_ack"]}
        return OutboundMessage(
            delivery_id=delivery.id, channel=delivery.channel, address=delivery.address,
            recipient=delivery.recipient, locale=delivery.locale, bodies=bodies,
            require_ack=require_ack,
            ack_token=delivery.ack_token,
            ack_url=f"{self.public_url}/ack/{delivery.ack_token}"
            if delivery.policy.require_ack and delivery.is_member else None,
            status_url=self.public_url,
            idempotency_key=f"tocsin-{delivery.id}-{delivery.ack_token[:8]}",
            labels={"incident": delivery.incident_id, "audience": delivery.audience,
                    "kind": statement.kind.value},
        )

    async def _process(self, delivery: Delivery) -> None:
        now = self.clock.now()
        channel = self.channels.get(delivery.channel)
        statement = self._statements.get(delivery.statement_id)
        if channel is None or statement is None:
            reason = ("channel not configured: " + delivery.channel.value) if channel is None \
                else "statement missing"
            await self._load_event(delivery)
            self._fail(delivery, (Attempt(delivery.id, now, "failed", error=reason),), now)
            return
        limits = self._limits(channel, delivery)
        wait = self.limiter.reserve(limits)
        if wait > self.config.inline_wait_max:
            self._released.append((delivery.id, now + timedelta(seconds=wait)))
            return
        if wait > 0:
            await asyncio.sleep(wait)  # rate limiting, not synchronisation
        message = self.message_for(delivery, statement)
        attempts: list[Attempt] = []

        def failed_try(exc: BaseException) -> None:
            attempts.append(self._attempt(delivery, exc))

        try:
            receipt = await with_quick_retries(
                self.retry, lambda: channel.send(message), failed_try
            )
        except (TransientError, PermanentError, UnknownOutcome) as exc:
            attempts.append(self._attempt(delivery, exc))
            await self._load_event(delivery)
            self._failure(delivery, channel, exc, tuple(attempts))
            return
        except Exception as exc:  # a bug in an adapter must not kill the worker
            log.exception("channel %s raised unexpectedly", delivery.channel.value)
            attempts.append(Attempt(delivery.id, self.clock.now(), "error",
                                    error=f"internal error: {type(exc).__name__}"))
            await self._load_event(delivery)
            self._retry_or_fail(delivery, tuple(attempts), None)
            return
        self._success(delivery, receipt, (*attempts, Attempt(
            delivery.id, self.clock.now(), receipt.state.value, receipt.provider_id,
            None, receipt.code)))

    def _attempt(self, delivery: Delivery, exc: BaseException) -> Attempt:
        outcome = ("unknown" if isinstance(exc, UnknownOutcome)
                   else "failed" if isinstance(exc, PermanentError) else "retry")
        code = getattr(exc, "code", None)
        return Attempt(delivery.id, self.clock.now(), outcome, error=str(exc)[:500], code=code)

    def _success(self, delivery: Delivery, receipt: Receipt, attempts: tuple[Attempt, ...]) -> None:
        policy = delivery.policy
        escalate_at = None
        if (policy.require_ack and delivery.is_member and policy.escalate_after_s is not None
                and policy.escalate_via is not None and delivery.escalation_of is None):
            escalate_at = self.clock.now() + timedelta(seconds=policy.escalate_after_s)
        self._emit(delivery, Outcome(
            delivery.id, receipt.state, attempts, escalate_at=escalate_at,
        ))

    def _failure(
        self, delivery: Delivery, channel: Channel, exc: BaseException,
        attempts: tuple[Attempt, ...],
    ) -> None:
        now = self.clock.now()
        if isinstance(exc, PermanentError):
            self._fail(delivery, attempts, now)
            return
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        if retry_after is not None and isinstance(exc, TransientError):
            scope = "dest" if exc.scope == "destination" and channel.destination_rate else None
            key = (f"dest:{delivery.channel.value}:{delivery.address}" if scope
                   else f"provider:{channel.provider_key(delivery.address)}")
            self.limiter.pause(key, retry_after)
        self._retry_or_fail(delivery, attempts, retry_after)

    def _retry_or_fail(
        self, delivery: Delivery, attempts: tuple[Attempt, ...], retry_after: float | None
    ) -> None:
        now = self.clock.now()
        total = delivery.attempts + len(attempts)
        if total >= self.retry.max_attempts:
            last = attempts[-1]
            gave_up = replace(last, outcome="failed",
                              error=f"gave up after {total} attempts: {last.error}")
            self._fail(delivery, (*attempts[:-1], gave_up), now)
            return
        self._emit(delivery, Outcome(
            delivery.id, DeliveryState.RETRYING, attempts,
            next_attempt_at=self.retry.next_attempt(now, total, retry_after),
        ))

    def _fail(self, delivery: Delivery, attempts: tuple[Attempt, ...], now: datetime) -> None:
        """Fail the delivery; a person is tried on the next channel of their policy."""
        self._emit(delivery, Outcome(
            delivery.id, DeliveryState.FAILED, attempts,
            follow_up=self._failover(delivery, now),
        ))

    def _failover(self, delivery: Delivery, now: datetime) -> NewDelivery | None:
        if not delivery.is_member:
            return None
        channel = next_channel(delivery.policy, delivery.contacts, delivery.channel,
                               frozenset(self.channels))
        if channel is None:
            return None
        statement = self._statement_like(delivery, channel)
        if statement is None:
            return None
        return new_follow_up(delivery, channel, statement.id, now)

    def _statement_like(self, delivery: Delivery, channel: ChannelName) -> Statement | None:
        """The statement of the same event for another channel (SMS takes the short one)."""
        kind = statement_kind_for(channel, delivery.policy.kind)
        candidates = [
            s for s in self._statements.values()
            if s.incident_id == delivery.incident_id and s.seq == delivery.seq
            and s.kind == kind and s.locale == delivery.locale
        ]
        return max(candidates, key=lambda s: s.version) if candidates else None

    def _emit(self, delivery: Delivery, outcome: Outcome) -> None:
        self._outcomes.append((delivery, outcome))

    # --- escalation ----------------------------------------------------------------
    async def escalate_due(self) -> int:
        """Re-send unacknowledged deliveries on their policy's escalation channel."""
        now = self.clock.now()
        due = await self.store.due_escalations(now, 200)
        if not due:
            return 0
        await self._load_incident_statements(due)
        escalated = 0
        for delivery in due:
            via = delivery.policy.escalate_via
            if via is None or not delivery.contacts.get(via.value):
                continue
            statement = self._statement_like(delivery, via)
            if statement is None:
                continue
            follow_up = new_follow_up(delivery, via, statement.id, now, escalation=True)
            if await self.store.mark_escalated(delivery.id, follow_up):
                escalated += 1
        return escalated

    async def _load_incident_statements(self, deliveries: list[Delivery]) -> None:
        for incident_id in {d.incident_id for d in deliveries}:
            for statement in await self.store.statements(incident_id):
                self._statements[statement.id] = statement

    async def _load_event(self, delivery: Delivery) -> None:
        """Make the other statements of this delivery's event available for a failover."""
        if not delivery.is_member or (delivery.incident_id, delivery.seq) in self._events:
            return
        await self._load_incident_statements([delivery])
        self._events.add((delivery.incident_id, delivery.seq))
