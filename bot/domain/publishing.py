"""The incident record as the domain services write it: look-ups that raise NotFound, the next
timeline number, deliveries planned for the usable channels, and the commit that publishes.

Declarations, the press desk, corrections, reminders and quorum escalations all write the
same way; they share this one collaborator instead of the whole incident service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Protocol

from bot.domain.audiences import Audience, StatementIndex, plan_deliveries
from bot.domain.errors import Forbidden, NotFound
from bot.domain.models import (
    Actor,
    ChannelName,
    Delivery,
    Incident,
    NewDelivery,
    Role,
    Statement,
    StatementKind,
)
from bot.ports import Changes, Clock, Page, Store


class HoldsStore(Protocol):
    """Anything that holds the store (the publisher, the incident service)."""

    @property
    def store(self) -> Store: ...


def require(actor: Actor, role: Role) -> None:
    """Forbidden unless the actor holds ``role``."""
    if not actor.can(role):
        raise Forbidden(f"{role.value} role required")


async def all_deliveries(holder: HoldsStore, incident_id: str) -> list[Delivery]:
    """Every delivery of an incident, page by page."""
    rows: list[Delivery] = []
    while True:
        batch = await holder.store.deliveries(incident_id, Page(limit=1000, offset=len(rows)))
        rows.extend(batch)
        if len(batch) < 1000:
            return rows


class Publisher:
    """Reads and writes the incident record for the domain services."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        audiences: Mapping[str, Audience],
        usable_channels: frozenset[ChannelName] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.audiences = dict(audiences)
        self.usable_channels = usable_channels
        self.published: list[Callable[[], None]] = []  # called after each publication

    async def incident(self, incident_id: str) -> Incident:
        """The incident, or NotFound."""
        incident = await self.store.get_incident(incident_id)
        if incident is None:
            raise NotFound(f"no incident {incident_id}")
        return incident

    async def statement(self, statement_id: str) -> Statement:
        """The statement, or NotFound."""
        statement = await self.store.get_statement(statement_id)
        if statement is None:
            raise NotFound(f"no statement {statement_id}")
        return statement

    async def next_seq(self, incident_id: str) -> int:
        """The next timeline sequence number of an incident."""
        entries = await self.store.timeline(incident_id)
        return (entries[-1].seq if entries else 0) + 1

    def audiences_named(self, names: Iterable[str]) -> list[Audience]:
        """The configured audiences among ``names``, in that order."""
        return [self.audiences[a] for a in names if a in self.audiences]

    def plan(
        self,
        incident: Incident,
        seq: int,
        audiences: list[Audience],
        statements: list[Statement],
        now: datetime,
        *,
        kinds: frozenset[StatementKind] | None = None,
        locale_only: str | None = None,
    ) -> list[NewDelivery]:
        """The deliveries of ``statements`` to ``audiences`` on the usable channels."""
        return plan_deliveries(
            incident_id=incident.id,
            seq=seq,
            audiences=audiences,
            statements=StatementIndex(statements, incident.locale),
            default_locale=incident.locale,
            now=now,
            kinds=kinds,
            locale_only=locale_only,
            usable=self.usable_channels,
        )

    async def commit(self, changes: Changes, *, publication: bool = False) -> None:
        """Commit ``changes`` in one transaction; a publication tells the listeners (the
        status page's cache) once it is committed."""
        await self.store.commit(changes)
        if publication:
            for listener in self.published:
                listener()
