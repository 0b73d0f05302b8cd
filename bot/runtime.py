"""What a running Tocsin holds, one per process: built and closed by ``bot.app``.

A typed container, not a locator: the composition root hands each interface the parts it
uses when it mounts that interface's routes; only the entry points (the CLI, the demo) and
tests hold the whole of it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from bot.config import Settings
from bot.delivery.scheduler import Scheduler
from bot.delivery.worker import Dispatcher
from bot.domain.access import Authenticator
from bot.domain.models import ChannelName
from bot.domain.queries import IncidentQueries
from bot.domain.rendering import StatementRenderer
from bot.domain.services import IncidentService
from bot.ports import Channel, Clock, Store


@dataclass
class Runtime:
    """Everything a running Tocsin holds; one per process."""

    settings: Settings
    store: Store
    renderer: StatementRenderer
    clock: Clock
    service: IncidentService
    queries: IncidentQueries
    auth: Authenticator
    session: aiohttp.ClientSession | None = None
    channels: dict[ChannelName, Channel] = field(default_factory=dict)
    dispatcher: Dispatcher | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    worker_task: asyncio.Task[None] | None = None
    scheduler: Scheduler | None = None
    scheduler_task: asyncio.Task[None] | None = None

    def worker_alive(self) -> bool:
        """Whether this process's worker still runs (True when it runs none)."""
        return self.worker_task is None or not self.worker_task.done()
