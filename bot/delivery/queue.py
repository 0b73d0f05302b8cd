"""The work queue as one worker sees it: claims, leases, renewal, fencing, and the batched
writes of outcomes and releases.

Each claim takes its rows under a fresh token (``<worker>:<n>``); outcomes and releases are
written under the token that holds the row, and the store drops a write whose token no longer
holds it (fencing). The lease is renewed while the sends run (a heartbeat, one UPDATE per
claim batch). While this worker cannot renew (paused, cut off from the database), its leases
run out locally a little before they do in the database: every send still under way is
cancelled then, so that it never overlaps the send of a worker that took the row over.

The store's half (the SQL of ``bot/store/sql/queries/`` and the memory fake) is behind the
:class:`bot.ports.Store` protocol; this module is the only caller of its queue methods.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.domain.models import Delivery, Outcome, assemble
from bot.ports import Clock, Store

log = logging.getLogger("tocsin.worker")


class LeaseLost(Exception):
    """This worker's lease on a delivery ran out (or was taken over): do not send it."""


class Leases:
    """Rows held by this worker, by lease token, and the sends running under them."""

    def __init__(self, worker_id: str, lease_seconds: float) -> None:
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        # Lapse locally before the database does: a claim elsewhere needs the lease expired by
        # its own clock, and the cancellation of a send takes a loop iteration.
        self.margin = min(1.0, lease_seconds / 5)
        self._count = 0
        self._owner: dict[int, str] = {}  # delivery id → token of the lease that holds it
        self._held: dict[str, set[int]] = {}  # token → delivery ids
        self._deadline: dict[str, float] = {}  # token → loop time its lease lapses locally
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sending: dict[int, asyncio.Task[Any]] = {}
        self._lapsed: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._owner)

    def new_token(self) -> str:
        self._count += 1
        return f"{self.worker_id}:{self._count}"

    def owner(self, delivery_id: int) -> str | None:
        return self._owner.get(delivery_id)

    def holds(self, delivery_id: int) -> bool:
        return delivery_id in self._owner

    def granted(self, token: str, delivery_ids: Iterable[int], since: float) -> set[int]:
        """Rows claimed under ``token`` at loop time ``since``. Returns those this worker
        already held (its own lease lapsed while their outcome waited to be written): they
        move to the new token, and must not be sent again."""
        again: set[int] = set()
        ids = set(delivery_ids)
        for delivery_id in ids:
            previous = self._owner.get(delivery_id)
            if previous is not None:
                again.add(delivery_id)
                self._held[previous].discard(delivery_id)
                if not self._held[previous]:
                    self._drop(previous)
            self._owner[delivery_id] = token
        if ids:
            self._held[token] = ids
            self._extend(token, since)
        return again

    def by_token(self) -> list[tuple[str, list[int]]]:
        """Every token with rows, and its rows (what the heartbeat renews)."""
        return [(token, sorted(ids)) for token, ids in self._held.items() if ids]

    def renewed(self, token: str, asked: Iterable[int], kept: Iterable[int], since: float) -> None:
        """The store renewed ``kept`` of the rows ``asked`` (at loop time ``since``); the rest
        were taken over by another worker: their sends stop."""
        still = set(kept)
        lost = [i for i in asked if i not in still and self._owner.get(i) == token]
        if lost:
            log.warning("%d leases taken over by another worker", len(lost))
            for delivery_id in lost:
                self._stop_send(delivery_id)
                self.forget(delivery_id)
        if token in self._held:
            self._extend(token, since)

    def forget(self, delivery_id: int) -> None:
        """The row's outcome or release is written (or dropped), or its send gave up."""
        token = self._owner.pop(delivery_id, None)
        if token is None:
            return
        ids = self._held.get(token)
        if ids is not None:
            ids.discard(delivery_id)
            if not ids:
                self._drop(token)

    def sending(self, delivery_id: int) -> _Sending:
        """Wrap one send: refused once the row's lease has lapsed, and cancelled (raising
        :class:`LeaseLost`) if it lapses while the send runs."""
        token = self._owner.get(delivery_id)
        loop = asyncio.get_running_loop()
        if token is None or loop.time() >= self._deadline.get(token, 0.0):
            raise LeaseLost(delivery_id)
        task = asyncio.current_task()
        assert task is not None
        return _Sending(self, delivery_id, task)

    def _extend(self, token: str, since: float) -> None:
        deadline = since + self.lease_seconds - self.margin
        self._deadline[token] = deadline
        timer = self._timers.pop(token, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[token] = loop.call_at(deadline, self._lapse, token)

    def _lapse(self, token: str) -> None:
        self._timers.pop(token, None)
        stopped = 0
        for delivery_id in list(self._held.get(token, ())):
            stopped += self._stop_send(delivery_id)
        if stopped:
            log.warning("lease not renewed in time: %d sends stopped", stopped)

    def _stop_send(self, delivery_id: int) -> int:
        task = self._sending.pop(delivery_id, None)
        if task is None or task.done():
            return 0
        self._lapsed.add(task)
        task.cancel()
        return 1

    def _drop(self, token: str) -> None:
        self._held.pop(token, None)
        self._deadline.pop(token, None)
        timer = self._timers.pop(token, None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        for token in list(self._timers):
            self._drop(token)


class _Sending:
    """One send under its lease (see :meth:`Leases.sending`); a class rather than a generator
    context manager: it wraps every send."""

    __slots__ = ("_delivery_id", "_leases", "_task")

    def __init__(self, leases: Leases, delivery_id: int, task: asyncio.Task[Any]) -> None:
        self._leases, self._delivery_id, self._task = leases, delivery_id, task

    def __enter__(self) -> None:
        self._leases._sending[self._delivery_id] = self._task

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        leases, task = self._leases, self._task
        # A send that swallowed the cancellation ends normally: its outcome is fenced.
        lapsed = task in leases._lapsed
        leases._lapsed.discard(task)
        leases._sending.pop(self._delivery_id, None)
        if kind is not None and issubclass(kind, asyncio.CancelledError) and lapsed:
            task.uncancel()
            raise LeaseLost(self._delivery_id) from None


@dataclass(frozen=True, slots=True)
class Release:
    """A claimed row given back to the queue unsent, due again at ``at`` (a rate limit's slot,
    a 429's pause, a provider that is down)."""

    delivery_id: int
    at: datetime


def _owned(outcome: Outcome, owner: str | None) -> Outcome:
    """``outcome`` under the lease ``owner`` (``dataclasses.replace`` costs 4× this per row)."""
    return assemble(Outcome, {**vars(outcome), "lease_owner": owner})


class Queue:
    """Claims due rows under a lease, renews it while they are sent, and writes their outcomes
    and releases in batches under the lease that holds each row."""

    def __init__(self, store: Store, clock: Clock, worker_id: str, lease_seconds: float) -> None:
        self.store = store
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.leases = Leases(worker_id, lease_seconds)
        self._outcomes: list[tuple[Delivery, Outcome]] = []
        self._released: list[Release] = []
        self._settling: set[int] = set()  # rows whose outcome or release waits for a write
        self._writing = 0  # outcomes in the write under way
        self.outcomes_since = 0.0  # loop time the oldest buffered outcome was decided
        self._wake_at: list[float] = []  # loop times when rows given back come due (a heap)

    @property
    def unwritten(self) -> int:
        """Outcomes and releases decided but not yet written: their rows are still leased."""
        return len(self._outcomes) + len(self._released)

    @property
    def unrecorded(self) -> int:
        """Rows sent whose outcome is not yet committed (buffered, or in the write under
        way): with the sends under way, what a crash right now could send twice."""
        return len(self._outcomes) + self._writing

    @property
    def has_releases(self) -> bool:
        return bool(self._released)

    @property
    def has_outcomes(self) -> bool:
        return bool(self._outcomes)

    async def claim(self, limit: int) -> tuple[int, list[Delivery]]:
        """Claim up to ``limit`` due rows under a new lease; returns how many were claimed and
        those to send. A row this worker still holds (its outcome not yet written) is never
        sent again: it only moves to the new lease."""
        token = self.leases.new_token()
        since = asyncio.get_running_loop().time()
        claimed = await self.store.claim_due(token, self.clock.now(), self.lease_seconds, limit)
        held = self.leases.granted(token, (d.id for d in claimed), since)
        return len(claimed), [d for d in claimed if d.id not in held]

    def settle(self, delivery: Delivery, result: Outcome | Release) -> None:
        """Buffer the decided outcome or release of a claimed row for the next write."""
        self._settling.add(delivery.id)
        if isinstance(result, Release):
            self._released.append(result)
        else:
            if not self._outcomes:
                self.outcomes_since = asyncio.get_running_loop().time()
            self._outcomes.append((delivery, result))

    def finished(self, delivery_id: int) -> None:
        """The row's send is over: without an outcome to write, its lease is let go (the row
        returns to the queue when the lease expires)."""
        if delivery_id not in self._settling:
            self.leases.forget(delivery_id)

    def next_due(self, now: float) -> float | None:
        """The loop time a row given back comes due next, if any."""
        while self._wake_at and self._wake_at[0] <= now:
            heapq.heappop(self._wake_at)
        return self._wake_at[0] if self._wake_at else None

    async def renew(self) -> None:
        """Renew the lease of every row this worker holds: one UPDATE per claim batch."""
        loop = asyncio.get_running_loop()
        for token, ids in self.leases.by_token():
            since = loop.time()
            try:
                kept = await self.store.renew(token, ids, self.clock.now(), self.lease_seconds)
            except Exception:
                log.warning("lease renewal failed; retrying", exc_info=True)
                return
            self.leases.renewed(token, ids, kept, since)

    async def heartbeat(self) -> None:
        """Renew a third of a lease apart, until cancelled."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)  # the renewal period, not synchronisation
            await self.renew()

    async def flush(self) -> Sequence[tuple[Delivery, Outcome]]:
        """Write buffered releases and outcomes, each under the lease that holds its row; on
        failure keep them. Returns the outcomes the store applied (fencing dropped the rest)."""
        if self._released:
            released, self._released = self._released, []
            # One transaction per lease, whatever the rows' times: rows given back by a rate
            # limit are each due one interval after the last, so one per time would be one
            # per row.
            by_owner: dict[str, list[tuple[int, datetime]]] = {}
            for r in released:
                owner = self.leases.owner(r.delivery_id)
                if owner is not None:
                    by_owner.setdefault(owner, []).append((r.delivery_id, r.at))
            try:
                for owner, given_back in by_owner.items():
                    await self.store.release(given_back, owner)
            except Exception:
                self._released = released + self._released
                raise
            for r in released:
                self._settled(r.delivery_id)
            loop, now = asyncio.get_running_loop(), self.clock.now()
            # Rounded up to 10 ms: never wake before a row is due, nor for every row.
            wake = {
                math.ceil((loop.time() + max(0.0, (r.at - now).total_seconds())) * 100) / 100
                for r in released
            }
            for due in wake:
                heapq.heappush(self._wake_at, due)
        if not self._outcomes:
            return ()
        batch, self._outcomes = self._outcomes, []
        since = self.outcomes_since
        self._writing = len(batch)
        try:
            applied = set(
                await self.store.record(
                    [_owned(outcome, self.leases.owner(delivery.id)) for delivery, outcome in batch]
                )
            )
        except Exception:
            self._outcomes = batch + self._outcomes
            self.outcomes_since = since  # the oldest is the batch's
            raise
        finally:
            self._writing = 0
        for delivery, _ in batch:
            self._settled(delivery.id)
        return [pair for pair in batch if pair[0].id in applied]

    def _settled(self, delivery_id: int) -> None:
        self._settling.discard(delivery_id)
        self.leases.forget(delivery_id)

    def close(self) -> None:
        self.leases.close()
