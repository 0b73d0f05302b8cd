"""Periodic checks that need no provider: update-cadence reminders and site quorum.

Runs in ``tocsin serve`` only (one per deployment), beside the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from bot.domain.cadence import remind_overdue
from bot.domain.models import Severity
from bot.domain.quorum import escalate_sites
from bot.domain.services import IncidentService

log = logging.getLogger("tocsin.scheduler")


class Scheduler:
    """Every ``every`` seconds: remind overdue incidents, escalate sites short of quorum."""

    def __init__(
        self,
        service: IncidentService,
        cadence: Mapping[Severity, float],
        reminder_audience: str,
        every: float = 30.0,
    ) -> None:
        self.service = service
        self.cadence = dict(cadence)
        self.reminder_audience = reminder_audience
        self.every = every

    async def tick(self) -> None:
        """One round of checks."""
        reminded = await remind_overdue(self.service, self.cadence, self.reminder_audience)
        escalated = await escalate_sites(self.service)
        if reminded or escalated:
            log.info("reminded %d incident(s), escalated %d site(s)", len(reminded), len(escalated))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop``; a failing round is logged and retried next time."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # the next round retries; the worker keeps sending meanwhile
                log.exception("scheduled checks failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
