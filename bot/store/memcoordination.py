"""The memory store's half of process coordination (see :mod:`bot.store.sqlcoordination`):
one process, so leading is a lease held in a dictionary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.domain.errors import DuplicateRequest
from bot.domain.models import (
    PENDING_STATES,
    Delivery,
    DeliveryState,
    Incident,
    IncidentStatus,
    TimelineEntry,
)
from bot.ports import IDEMPOTENCY_TTL, IdempotencyKey, IdempotentAnswer, ProgressMessage, SiteQuorum

_CLOSED = (IncidentStatus.DRAFT, IncidentStatus.RESOLVED)


@dataclass
class _State:
    leaders: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    keys: dict[tuple[str, str], IdempotentAnswer] = field(default_factory=dict)
    progress: dict[str, ProgressMessage] = field(default_factory=dict)


class MemoryCoordination:
    """Leader lease, incident numbers, idempotency keys, progress messages, site quorum."""

    incidents: dict[str, Incident]
    entries: dict[str, list[TimelineEntry]]
    rows: dict[int, Delivery]

    @property
    def _coordination(self) -> _State:
        state = self.__dict__.get("_coordination_state")
        if state is None:
            state = self.__dict__["_coordination_state"] = _State()
        return state

    async def try_lead(self, name: str, holder: str, now: datetime, ttl: float) -> bool:
        leaders = self._coordination.leaders
        current = leaders.get(name)
        if current is None or current[0] == holder or current[1] < now:
            leaders[name] = (holder, now + timedelta(seconds=ttl))
            return True
        return False

    async def resign(self, name: str, holder: str) -> None:
        current = self._coordination.leaders.get(name)
        if current is not None and current[0] == holder:
            del self._coordination.leaders[name]

    async def next_incident_number(self, prefix: str) -> int:
        numbers = [
            int(i.removeprefix(prefix))
            for i in self.incidents
            if i.startswith(prefix) and i.removeprefix(prefix).isdigit()
        ]
        counters = self._coordination.counters
        counters[prefix] = max(counters.get(prefix, 0) + 1, max(numbers, default=0) + 1)
        return counters[prefix]

    def _check_key(self, claim: IdempotencyKey) -> None:
        """Refuse a live key again (called before anything of the commit is written)."""
        found = self._coordination.keys.get((claim.principal, claim.key))
        if found is not None and found.created_at >= claim.created_at - IDEMPOTENCY_TTL:
            raise DuplicateRequest("this Idempotency-Key was already used")

    def _record_key(self, claim: IdempotencyKey) -> None:
        self._coordination.keys[(claim.principal, claim.key)] = IdempotentAnswer(
            claim.request_hash, claim.incident_id, claim.created_at
        )

    async def idempotent_answer(
        self, principal: str, key: str, since: datetime
    ) -> IdempotentAnswer | None:
        found = self._coordination.keys.get((principal, key))
        return found if found is not None and found.created_at >= since else None

    async def save_idempotent_answer(
        self, principal: str, key: str, status: int, body: str
    ) -> None:
        found = self._coordination.keys.get((principal, key))
        if found is not None:
            self._coordination.keys[(principal, key)] = IdempotentAnswer(
                found.request_hash, found.incident_id, found.created_at, status, body
            )

    async def purge_idempotency_keys(self, before: datetime) -> int:
        keys = self._coordination.keys
        old = [k for k, answer in keys.items() if answer.created_at < before]
        for k in old:
            del keys[k]
        return len(old)

    async def progress_due(self, resolved_since: datetime) -> list[str]:
        due = {d.incident_id for d in self.rows.values() if d.state in PENDING_STATES}
        due |= {i for i, m in self._coordination.progress.items() if m.pending > 0}
        due |= {
            i.id
            for i in self.incidents.values()
            if i.status != IncidentStatus.DRAFT
            and (i.resolved_at is None or i.resolved_at >= resolved_since)
        }
        return sorted(due)

    async def get_progress(self, incident_id: str) -> ProgressMessage | None:
        return self._coordination.progress.get(incident_id)

    async def save_progress(self, message: ProgressMessage) -> None:
        self._coordination.progress[message.incident_id] = message

    async def site_quorum(
        self, audience: str, deputies: Sequence[str], declared_before: datetime
    ) -> list[SiteQuorum]:
        acked: dict[tuple[str, str], set[str]] = {}
        reached: dict[tuple[str, str], bool] = {}
        for d in self.rows.values():
            incident = self.incidents.get(d.incident_id)
            if (
                incident is None
                or incident.status in _CLOSED
                or incident.created_at > declared_before
                or d.audience != audience
                or d.site is None
            ):
                continue
            key = (d.incident_id, d.site)
            people = acked.setdefault(key, set())
            reached[key] = reached.get(key, False) or d.recipient in deputies
            if d.state == DeliveryState.ACKNOWLEDGED and d.recipient not in deputies:
                people.add(d.recipient)
        found = {
            key: SiteQuorum(key[0], key[1], len(people), reached[key])
            for key, people in acked.items()
        }
        for incident_id in {i for i, _ in found}:
            for entry in self.entries.get(incident_id, []):
                site = entry.detail.get("site")
                if entry.action == "site_escalated" and isinstance(site, str):
                    before = found.get((incident_id, site))
                    found[(incident_id, site)] = SiteQuorum(
                        incident_id, site, before.confirmed if before else 0, True
                    )
        return sorted(found.values(), key=lambda q: (q.incident_id, q.site))
