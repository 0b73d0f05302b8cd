"""What the interfaces read, with the reader's role checked here as the services check writes.

Reads that show incidents, statements or deliveries take the calling :class:`Actor` and need
the ``viewer`` role; the few reads that serve public or operational pages (the status page,
Prometheus gauges) return only what those pages publish, and say so in their names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from bot.domain.errors import Forbidden, NotFound
from bot.domain.models import (
    Actor,
    Attempt,
    Delivery,
    Incident,
    IncidentStatus,
    Role,
    Statement,
    StatementKind,
    StatementStatus,
    TimelineEntry,
)
from bot.ports import FIRST_PAGE, Page, Store

# Deliveries are read page by page: a large fan-out never lands in one query.
_BATCH = 1000


class ChannelHealth(NamedTuple):
    """A provider endpoint's recorded state (``up``, ``down``, ``probing``) and since when."""

    name: str
    state: str
    since: datetime
    detail: str | None


class AddressMove(NamedTuple):
    """An address the provider moved (a Telegram group become a supergroup)."""

    channel: str
    old: str
    new: str
    at: datetime


@dataclass(frozen=True)
class DeliveryTotals:
    """Counts for the operations gauges: no incident text, no recipient."""

    deliveries: dict[tuple[str, str], int]  # (channel, state) over unresolved incidents
    incidents: dict[str, int]  # incident status → count, over the scanned incidents
    queue_depth: int
    providers: dict[str, str]  # provider → up/down/probing (down while any endpoint is)


class IncidentQueries:
    """The read side of the domain, over the store's read methods."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def _may_read(actor: Actor) -> None:
        if not actor.can(Role.VIEWER):
            raise Forbidden(f"the {Role.VIEWER.value} role is required")

    async def incidents(self, actor: Actor, page: Page = FIRST_PAGE) -> list[Incident]:
        """A page of incidents, newest first."""
        self._may_read(actor)
        return await self._store.list_incidents(page)

    async def incident(self, actor: Actor, incident_id: str) -> Incident:
        """One incident, or :class:`NotFound`."""
        self._may_read(actor)
        incident = await self._store.get_incident(incident_id)
        if incident is None:
            raise NotFound(f"no incident {incident_id}")
        return incident

    async def find_incident(self, actor: Actor, incident_id: str) -> Incident | None:
        """One incident, or None."""
        self._may_read(actor)
        return await self._store.get_incident(incident_id)

    async def from_source(self, actor: Actor, source: str, key: str) -> Incident | None:
        """The incident opened from ``source``'s ``key`` (an alert group), if any."""
        self._may_read(actor)
        return await self._store.find_incident_by_source(source, key)

    async def timeline(self, actor: Actor, incident_id: str) -> list[TimelineEntry]:
        """The incident's timeline, oldest first."""
        self._may_read(actor)
        return await self._store.timeline(incident_id)

    async def statements(self, actor: Actor, incident_id: str) -> list[Statement]:
        """Every statement of the incident, every version."""
        self._may_read(actor)
        return await self._store.statements(incident_id)

    async def statement(self, actor: Actor, statement_id: str) -> Statement:
        """One statement version, or :class:`NotFound`."""
        self._may_read(actor)
        statement = await self._store.get_statement(statement_id)
        if statement is None:
            raise NotFound(f"no statement {statement_id}")
        return statement

    async def deliveries(
        self, actor: Actor, incident_id: str, page: Page = FIRST_PAGE
    ) -> list[Delivery]:
        """A page of the incident's deliveries."""
        self._may_read(actor)
        return await self._store.deliveries(incident_id, page)

    async def all_deliveries(self, actor: Actor, incident_id: str) -> list[Delivery]:
        """Every delivery of the incident, read page by page."""
        self._may_read(actor)
        rows: list[Delivery] = []
        while True:
            batch = await self._store.deliveries(incident_id, Page(_BATCH, len(rows)))
            rows.extend(batch)
            if len(batch) < _BATCH:
                return rows

    async def attempts(self, actor: Actor, delivery_ids: Sequence[int]) -> dict[int, list[Attempt]]:
        """The attempts of each delivery."""
        self._may_read(actor)
        return await self._store.attempts(delivery_ids)

    async def delivery_counts(self, actor: Actor, incident_id: str) -> dict[str, int]:
        """The incident's deliveries counted by state (all rows, whatever the page)."""
        self._may_read(actor)
        return await self._store.delivery_counts(incident_id)

    async def delivery_matrix(
        self, actor: Actor, incident_id: str
    ) -> list[tuple[str, str, str, int]]:
        """The incident's deliveries counted by (audience, channel, state)."""
        self._may_read(actor)
        return await self._store.delivery_matrix(incident_id)

    async def pending_count(self, actor: Actor, incident_id: str) -> int:
        """How many of the incident's deliveries are queued, sending or retrying."""
        self._may_read(actor)
        return await self._store.pending_count(incident_id)

    async def channel_health(self, actor: Actor) -> list[ChannelHealth]:
        """Each provider endpoint's recorded state."""
        self._may_read(actor)
        return [ChannelHealth(*row) for row in await self._store.channel_health()]

    async def address_moves(self, actor: Actor) -> list[AddressMove]:
        """Addresses the providers moved, oldest first."""
        self._may_read(actor)
        return [AddressMove(*row) for row in await self._store.address_moves()]

    async def wait_for_change(self, timeout: float) -> None:
        """Return once deliveries may have changed (another process's worker included), or
        after ``timeout`` seconds: for views that follow a fan-out."""
        await self._store.wait_for_work(timeout)

    # --- public and operational reads (no personal data) ---------------------------------
    async def published_statements(self, limit: int) -> list[tuple[Incident, list[Statement]]]:
        """Declared incidents with their published, approved public statements (newest
        incident first): what the public status page may show, and nothing else."""
        shown: list[tuple[Incident, list[Statement]]] = []
        for incident in await self._store.list_incidents(Page(limit=limit)):
            if incident.status == IncidentStatus.DRAFT:
                continue
            published = [
                s
                for s in await self._store.statements(incident.id)
                if s.kind == StatementKind.PUBLIC
                and s.status == StatementStatus.PUBLISHED
                and s.approved_by
            ]
            shown.append((incident, published))
        return shown

    async def totals(self, scanned_incidents: int) -> DeliveryTotals:
        """Counts for the operations gauges over the newest ``scanned_incidents``."""
        deliveries: dict[tuple[str, str], int] = {}
        incidents: dict[str, int] = {}
        for incident in await self._store.list_incidents(Page(limit=scanned_incidents)):
            incidents[incident.status.value] = incidents.get(incident.status.value, 0) + 1
            if incident.status == IncidentStatus.RESOLVED:
                continue
            for _, channel, state, count in await self._store.delivery_matrix(incident.id):
                deliveries[(channel, state)] = deliveries.get((channel, state), 0) + count
        depth = await self._store.pending_count()
        providers: dict[str, str] = {}
        for name, state, _, _ in await self._store.channel_health():
            # "smtp:host:port" → "smtp": internal hosts stay out of the exposition; a
            # provider is up only while all of its endpoints are.
            provider = name.partition(":")[0]
            if providers.get(provider, "up") == "up":
                providers[provider] = state
        return DeliveryTotals(deliveries, incidents, depth, providers)

    async def ready(self) -> bool:
        """Whether the store answers (readiness)."""
        return await self._store.ping()
