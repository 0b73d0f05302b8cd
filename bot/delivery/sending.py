"""Sending one claimed delivery and deciding its outcome: delivered, retried later, failed
and failed over, or re-routed around a provider that is down.

:meth:`Sender.send` returns the decision as a value (an :class:`Outcome` to record, or a
:class:`Release` of the row back to the queue); the dispatcher hands it to the queue, which
writes it under the row's lease.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta

from bot.delivery.health import Admission, CircuitBreakers, OutageLog
from bot.delivery.outbound import Routes, destination_key, message_for
from bot.delivery.queue import LeaseLost, Release
from bot.delivery.ratelimit import Limit, RateLimiter
from bot.delivery.retry import RetryPolicy, with_quick_retries
from bot.delivery.routing import Router
from bot.delivery.statements import StatementSource
from bot.domain.ack_tokens import AckKeys
from bot.domain.errors import PermanentError, TransientError, UnknownOutcome
from bot.domain.masking import scrub_provider_error
from bot.domain.models import Attempt, ChannelName, Delivery, DeliveryState, Outcome, Statement
from bot.ports import ALL_KEYS, Channel, Clock, OutboundMessage, Receipt, Store

log = logging.getLogger("tocsin.worker")


Result = Outcome | Release
SendGuard = Callable[[int], AbstractContextManager[None]]


class Sender:
    """Sends one delivery through its channel and turns the answer into an outcome."""

    def __init__(
        self,
        store: Store,
        channels: Mapping[ChannelName, Channel],
        clock: Clock,
        *,
        statements: StatementSource,
        router: Router,
        breakers: CircuitBreakers,
        limiter: RateLimiter,
        retry: RetryPolicy,
        outages: OutageLog,
        guard: SendGuard,
        public_url: str,
        inline_wait_max: float,
        tokens: AckKeys | None = None,
    ) -> None:
        self.store = store  # for the address moves a provider reports
        self.channels = channels
        self.clock = clock
        self.statements = statements
        self.router = router
        self.breakers = breakers
        self.limiter = limiter
        self.retry = retry
        self.outages = outages
        self.guard = guard  # refuses, or cancels, a send once the row's lease has lapsed
        self.public_url = public_url
        self.inline_wait_max = inline_wait_max
        self.tokens = tokens or AckKeys(b"")
        self.routes = Routes()

    def message_for(
        self, delivery: Delivery, statement: Statement, channel: Channel
    ) -> OutboundMessage:
        """The outbound message of one delivery, with the credentials its channel reads (all
        of them for an adapter that names none, as every adapter was handed before)."""
        keys = getattr(channel, "keys", ALL_KEYS)
        return message_for(delivery, statement, self.public_url, self.tokens, keys)

    async def send(self, delivery: Delivery) -> Result:
        """Send ``delivery`` and decide what becomes of it; raises :class:`LeaseLost` when the
        row's lease lapsed before or during the send (nothing is to be written then)."""
        now = self.clock.now()
        channel = self.channels.get(delivery.channel)
        statement = self.statements.get(delivery.statement_id)
        if channel is None or statement is None:
            reason = (
                ("channel not configured: " + delivery.channel.value)
                if channel is None
                else "statement missing"
            )
            return await self._fail(delivery, (Attempt(delivery.id, now, "failed", error=reason),))
        provider, limits = self.routes.of(channel, delivery)
        admission = self.breakers.admit(provider)
        if admission == Admission.BLOCKED:
            return await self._blocked(delivery, provider, now)
        settled = False  # the provider was judged: a probe's slot is no longer ours
        try:
            result, settled = await self._send(delivery, channel, statement, provider, limits)
            return result
        finally:
            # Whatever ended this probe (a rate limit, a bug, a lost lease, a cancellation)
            # without judging the provider: let another delivery probe it.
            if admission == Admission.PROBE and not settled:
                self.breakers.released(provider)

    async def _send(
        self,
        delivery: Delivery,
        channel: Channel,
        statement: Statement,
        provider: str,
        limits: list[Limit],
    ) -> tuple[Result, bool]:
        """Send through ``channel``; the decision, and True once the provider was judged."""
        wait = await self.limiter.acquire(limits, max_wait=self.inline_wait_max)
        if wait > 0:  # no slot soon (rate, a 429's pause): back to the queue, due at its slot
            return Release(delivery.id, self.clock.now() + timedelta(seconds=wait)), False
        attempts: list[Attempt] = []

        def failed_try(exc: BaseException) -> None:
            attempts.append(self._attempt(delivery, exc))

        message = self.message_for(delivery, statement, channel)
        try:
            # Refused, or cancelled, once this worker's lease on the row has lapsed (LeaseLost).
            with self.guard(delivery.id):
                receipt = await with_quick_retries(
                    self.retry, lambda: channel.send(message), failed_try
                )
        except LeaseLost:
            raise
        except UnknownOutcome as exc:
            # The provider may have taken it: never retried within the attempt, recorded as
            # ``unknown`` (counted on the delivery, for the channel to reconcile before it
            # sends again), and retried later with backoff.
            attempts.append(self._attempt(delivery, exc))
            self._judge_provider(provider, exc)
            return await self._retry_or_fail(delivery, tuple(attempts), None), True
        except (TransientError, PermanentError) as exc:
            attempts.append(self._attempt(delivery, exc))
            self._judge_provider(provider, exc)
            return await self._failure(delivery, channel, provider, exc, tuple(attempts)), True
        except Exception as exc:  # a bug in an adapter must not kill the worker
            log.exception("channel %s raised unexpectedly", delivery.channel.value)
            attempts.append(
                Attempt(
                    delivery.id,
                    self.clock.now(),
                    "error",
                    error=f"internal error: {type(exc).__name__}",
                )
            )
            return await self._retry_or_fail(delivery, tuple(attempts), None), False
        self.breakers.succeeded(provider)
        outcome = self._success(
            delivery,
            receipt,
            (
                *attempts,
                Attempt(
                    delivery.id,
                    self.clock.now(),
                    receipt.state.value,
                    receipt.provider_id,
                    None,
                    receipt.code,
                ),
            ),
        )
        if receipt.moved_to is not None:  # the provider moved the address: shown to operators
            await self.store.note_address_moved(
                delivery.channel.value, delivery.address, receipt.moved_to, self.clock.now()
            )
        return outcome, True

    def _judge_provider(self, provider: str, exc: BaseException) -> None:
        """Connection failures, timeouts and 5xx count against the provider's health; an
        answer (a refusal, a 429) proves it is up."""
        transport = isinstance(exc, TransientError) and exc.retry_after is None
        if transport or isinstance(exc, UnknownOutcome):
            self.breakers.failed(provider, str(exc)[:200])
        else:
            self.breakers.succeeded(provider)

    async def _blocked(self, delivery: Delivery, provider: str, now: datetime) -> Result:
        """The provider is down: a person moves to their next channel at once; a destination
        waits for the provider to come back (shown as blocked, not failed)."""
        follow_up = await self.router.next_hop(delivery, now, avoid_down=True)
        if follow_up is None:
            return Release(delivery.id, self.breakers.retry_at(provider))
        attempt = Attempt(
            delivery.id,
            now,
            "rerouted",
            error=f"{provider} unreachable: re-routed to {follow_up.channel.value}",
        )
        self.outages.rerouted(delivery.incident_id, provider, follow_up.channel.value)
        return Outcome(delivery.id, DeliveryState.FAILED, (attempt,), follow_up=follow_up)

    def _attempt(self, delivery: Delivery, exc: BaseException) -> Attempt:
        outcome = (
            "unknown"
            if isinstance(exc, UnknownOutcome)
            else "failed"
            if isinstance(exc, PermanentError)
            else "throttled"
            if isinstance(exc, TransientError) and exc.retry_after is not None
            else "retry"
        )
        code = getattr(exc, "code", None)
        # Provider texts name numbers and URLs ("The 'To' number +33… is invalid"): masked
        # before they are stored, since viewers read them.
        error = scrub_provider_error(str(exc))[:500]
        return Attempt(delivery.id, self.clock.now(), outcome, error=error, code=code)

    def _success(
        self, delivery: Delivery, receipt: Receipt, attempts: tuple[Attempt, ...]
    ) -> Outcome:
        policy = delivery.policy
        escalate_at = None
        if (
            policy.require_ack
            and delivery.is_member
            and policy.escalate_after_s is not None
            and policy.escalate_via is not None
            and delivery.escalation_of is None
        ):
            escalate_at = self.clock.now() + timedelta(seconds=policy.escalate_after_s)
        return Outcome(delivery.id, receipt.state, attempts, escalate_at=escalate_at)

    async def _failure(
        self,
        delivery: Delivery,
        channel: Channel,
        provider: str,
        exc: BaseException,
        attempts: tuple[Attempt, ...],
    ) -> Outcome:
        if isinstance(exc, PermanentError):
            return await self._fail(delivery, attempts)
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        if retry_after is not None and isinstance(exc, TransientError):
            per_destination = exc.scope == "destination" and channel.destination_rate
            key = destination_key(delivery) if per_destination else f"provider:{provider}"
            await self.limiter.pause(key, retry_after)
            if all(a.outcome == "throttled" for a in attempts):
                # The provider's pace, not a failure: it never uses up max_attempts.
                return Outcome(
                    delivery.id,
                    DeliveryState.RETRYING,
                    attempts,
                    next_attempt_at=self.retry.next_attempt(
                        self.clock.now(), delivery.attempts, retry_after
                    ),
                    count_attempt=False,
                )
        return await self._retry_or_fail(delivery, attempts, retry_after)

    async def _retry_or_fail(
        self, delivery: Delivery, attempts: tuple[Attempt, ...], retry_after: float | None
    ) -> Outcome:
        now = self.clock.now()
        total = delivery.attempts + len(attempts)
        if total >= self.retry.max_attempts:
            last = attempts[-1]
            gave_up = replace(
                last, outcome="failed", error=f"gave up after {total} attempts: {last.error}"
            )
            return await self._fail(delivery, (*attempts[:-1], gave_up))
        return Outcome(
            delivery.id,
            DeliveryState.RETRYING,
            attempts,
            next_attempt_at=self.retry.next_attempt(now, total, retry_after),
        )

    async def _fail(self, delivery: Delivery, attempts: tuple[Attempt, ...]) -> Outcome:
        """Fail the delivery; a person is tried on the next channel of their policy."""
        follow_up = await self.router.next_hop(delivery, self.clock.now(), avoid_down=False)
        return Outcome(delivery.id, DeliveryState.FAILED, attempts, follow_up=follow_up)
