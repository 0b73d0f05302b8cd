"""The leases one worker holds: a token per claim, renewal while sends run, and the deadline
past which a send may no longer start or continue.

Each claim takes its rows under a fresh token (``<worker>:<n>``); outcomes and releases are
written under the token that holds the row, and the store drops a write whose token no longer
holds it (fencing). While this worker cannot renew (paused, cut off from the database), its
leases run out locally a little before they do in the database: every send still under way
is cancelled then, so that it never overlaps the send of a worker that took the row over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

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

    @contextmanager
    def sending(self, delivery_id: int) -> Iterator[None]:
        """Wrap one send: refused once the row's lease has lapsed, and cancelled (raising
        :class:`LeaseLost`) if it lapses while the send runs."""
        token = self._owner.get(delivery_id)
        loop = asyncio.get_running_loop()
        if token is None or loop.time() >= self._deadline.get(token, 0.0):
            raise LeaseLost(delivery_id)
        task = asyncio.current_task()
        assert task is not None
        self._sending[delivery_id] = task
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._lapsed:
                raise
            task.uncancel()
            raise LeaseLost(delivery_id) from None
        finally:
            # A send that swallowed the cancellation ends normally: its outcome is fenced.
            self._lapsed.discard(task)
            self._sending.pop(delivery_id, None)

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
