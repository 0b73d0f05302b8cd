"""What the composition root hands to the inbound interfaces: one typed key per collaborator.

Each handler reads exactly the collaborators it uses (the domain services for writes, the
query service for reads, the authenticator, the clock, the settings); none of them reaches
the process's whole runtime or the store behind the services. The records an interface
keeps for itself (dashboard sessions, idempotency answers, inbound SMS seen) go through the
narrow protocols below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import aiohttp
from aiohttp import web

from bot.config import Settings
from bot.domain.access import Authenticator
from bot.domain.queries import IncidentQueries
from bot.domain.services import IncidentService
from bot.ports import Clock, IdempotentAnswer, StoredSession


class InterfaceRecords(Protocol):
    """What the interfaces record of their own: not incidents, only their own plumbing."""

    async def idempotent_answer(
        self, principal: str, key: str, since: datetime
    ) -> IdempotentAnswer | None: ...

    async def save_idempotent_answer(
        self, principal: str, key: str, status: int, body: str
    ) -> None: ...

    async def remember_inbound(self, message_key: str, at: datetime) -> bool: ...

    async def open_session(self, session: StoredSession) -> None: ...

    async def find_session(self, digest: str) -> StoredSession | None: ...

    async def revoke_session(self, digest: str, at: datetime) -> None: ...


SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", IncidentService)
QUERIES = web.AppKey("queries", IncidentQueries)
AUTH = web.AppKey("auth", Authenticator)
CLOCK = web.AppKey("clock", Clock)
RECORDS = web.AppKey("records", InterfaceRecords)
# The channels this process built, and since when it runs (a channel never recorded down is
# shown up since then).
CHANNEL_NAMES: web.AppKey[frozenset[str]] = web.AppKey("channel_names")
STARTED_AT = web.AppKey("started_at", datetime)
# Whether this process's worker is alive (True when the process runs none).
WORKER_ALIVE: web.AppKey[Callable[[], bool]] = web.AppKey("worker_alive")


@dataclass(frozen=True)
class ChatDeps:
    """What the chat interfaces (Slack, Telegram) use: the services they call, who may act,
    the clock, the settings of their own channel and the process's shared HTTP session."""

    settings: Settings
    service: IncidentService
    auth: Authenticator
    clock: Clock
    session: aiohttp.ClientSession
