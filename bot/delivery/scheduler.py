"""Periodic work that needs no provider: update-cadence reminders, site quorum, the incident
channel's progress message, the expiry of idempotency keys.

It runs in ``tocsin serve``, exactly once per deployment: every ``serve`` process runs a
scheduler, but only the one that leads (the store's :meth:`try_lead`: an advisory lock on
PostgreSQL, a lease row on SQLite) does the work; the others try again at every step and one
of them takes over when the leader dies. ``tocsin worker`` never runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bot.domain.models import Severity
from bot.domain.services import IncidentService
from bot.ports import IDEMPOTENCY_TTL, Clock, Store

log = logging.getLogger("tocsin.scheduler")

LEADER = "scheduler"


@dataclass
class Job:
    """One periodic task: ``run`` every ``every`` seconds while this process leads."""

    name: str
    every: float
    run: Callable[[], Awaitable[object]]
    next_at: float = 0.0


class Scheduler:
    """Tries to lead every ``step`` seconds (at most 1 s); runs its due jobs while it leads.

    ``lease`` is how long a lead lasts without renewal where leading is a lease (SQLite, the
    memory store): another ``serve`` takes over that long after the leader died.
    """

    def __init__(self, store: Store, clock: Clock, *, lease: float = 10.0) -> None:
        self.store = store
        self.clock = clock
        self.lease = lease
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.jobs: list[Job] = []
        self.leading = False

    def add(self, name: str, every: float, run: Callable[[], Awaitable[object]]) -> None:
        """Run ``run`` every ``every`` seconds (the first time as soon as this process leads)."""
        self.jobs.append(Job(name, every, run))

    @property
    def step(self) -> float:
        return min([1.0, *(job.every for job in self.jobs)])

    async def lead(self) -> bool:
        """Try to lead (or keep leading); a failing store means not leading this round."""
        try:
            leading = await self.store.try_lead(LEADER, self.holder, self.clock.now(), self.lease)
        except Exception:  # the database is away: stand by, try again next step
            log.warning("cannot reach the store to lead the scheduler", exc_info=True)
            leading = False
        if leading != self.leading:
            log.info("scheduler %s", "leading" if leading else "standing by")
            self.leading = leading
        return leading

    async def run_due(self) -> None:
        """Run every job whose time has come; a failing job is logged and retried next time."""
        loop = asyncio.get_running_loop()
        for job in list(self.jobs):
            if loop.time() < job.next_at:
                continue
            job.next_at = loop.time() + job.every
            try:
                await job.run()
            except Exception:  # the next round retries; the worker keeps sending meanwhile
                log.exception("scheduled %s failed", job.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Lead and work until ``stop``; then give the lead up at once."""
        try:
            while not stop.is_set():
                if await self.lead():
                    await self.run_due()
                else:
                    for job in self.jobs:
                        job.next_at = 0.0  # a new leader starts with every job due
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.step)
        finally:
            if self.leading:
                with contextlib.suppress(Exception):
                    await self.store.resign(LEADER, self.holder)


def add_incident_checks(
    scheduler: Scheduler,
    service: IncidentService,
    cadence: Mapping[Severity, float],
    reminder_audience: str,
    every: float,
) -> None:
    """Cadence reminders and site quorum every ``every`` seconds; old idempotency keys hourly."""

    async def reminders() -> None:
        reminded = await service.reminders.remind_overdue(cadence, reminder_audience)
        if reminded:
            log.info("reminded %d incident(s)", len(reminded))

    async def quorum() -> None:
        escalated = await service.quorum.escalate_sites()
        if escalated:
            log.info("escalated %d site(s)", len(escalated))

    async def purge() -> None:
        await service.store.purge_idempotency_keys(service.clock.now() - IDEMPOTENCY_TTL)

    scheduler.add("reminders", every, reminders)
    scheduler.add("site quorum", every, quorum)
    scheduler.add("idempotency keys", 3600.0, purge)
