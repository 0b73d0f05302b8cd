"""In-memory store: a fake for fast tests, held to the same contract suite as the real ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from bot.domain.errors import Conflict
from bot.domain.models import (
    PENDING_STATES,
    PROGRESS_RANK,
    Attempt,
    Delivery,
    DeliveryState,
    Incident,
    NewDelivery,
    Outcome,
    Statement,
    TimelineEntry,
)
from bot.ports import FIRST_PAGE, Changes, Page, StoredSession
from bot.store.memcoordination import MemoryCoordination
from bot.store.sqlbuckets import grant_size, granted_of, wait_after

_ACKABLE = (DeliveryState.SENT, DeliveryState.DELIVERED)
log = logging.getLogger("tocsin.store")


class MemoryStore(MemoryCoordination):
    """Dictionaries and lists; every method is atomic because none awaits mid-change."""

    def __init__(self) -> None:
        self.incidents: dict[str, Incident] = {}
        self.entries: dict[str, list[TimelineEntry]] = {}
        self.statement_rows: dict[str, Statement] = {}
        self.rows: dict[int, Delivery] = {}
        self.attempt_rows: dict[int, list[Attempt]] = {}
        self.escalated: set[int] = set()
        self.health: dict[str, tuple[str, str, datetime, str | None]] = {}
        self.moves: dict[tuple[str, str], tuple[str, datetime]] = {}
        self.buckets: dict[str, tuple[float, float, float]] = {}  # tokens, updated, paused
        self._next_id = 1
        self._work = asyncio.Event()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def migrate(self) -> list[str]:
        return []

    async def ping(self) -> bool:
        return True

    def _insert(self, deliveries: Sequence[NewDelivery], now: datetime) -> None:
        for d in deliveries:
            self.rows[self._next_id] = Delivery(
                id=self._next_id,
                incident_id=d.incident_id,
                seq=d.seq,
                statement_id=d.statement_id,
                audience=d.audience,
                recipient=d.recipient,
                channel=d.channel,
                address=d.address,
                state=DeliveryState.QUEUED,
                locale=d.locale,
                site=d.site,
                contacts=dict(d.contacts),
                policy=d.policy,
                ack_token=d.ack_token,
                next_attempt_at=d.next_attempt_at,
                failover_of=d.failover_of,
                escalation_of=d.escalation_of,
                root_id=d.root_id,
                created_at=now,
                updated_at=now,
                lane=d.lane,
            )
            self.attempt_rows[self._next_id] = []
            self._next_id += 1
        if deliveries:
            self._work.set()

    async def commit(self, changes: Changes) -> None:
        if changes.idempotency is not None:
            self._check_key(changes.idempotency)
        incident = changes.incident
        if incident is not None and changes.new_incident and incident.id in self.incidents:
            raise Conflict(f"incident {incident.id} exists")
        for entry in changes.timeline:
            if any(e.seq == entry.seq for e in self.entries.get(entry.incident_id, [])):
                raise Conflict(f"timeline {entry.incident_id}#{entry.seq} exists")
        tokens = {d.ack_token for d in self.rows.values()}
        if any(d.ack_token in tokens for d in changes.deliveries):
            raise Conflict("duplicate acknowledgement token")
        if changes.idempotency is not None:
            self._record_key(changes.idempotency)
        if incident is not None:
            self.incidents[incident.id] = incident
        for entry in changes.timeline:
            self.entries.setdefault(entry.incident_id, []).append(entry)
        for statement in [*changes.statements, *changes.statement_updates]:
            self.statement_rows[statement.id] = statement
        self._insert(changes.deliveries, changes.decided_at)

    @staticmethod
    def _due_at(d: Delivery) -> datetime | None:
        if d.state == DeliveryState.SENDING:
            return d.lease_until
        if d.state in PENDING_STATES:
            return d.next_attempt_at
        return None

    async def claim_due(
        self, worker: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        due = [
            (d.lane, at, d.id)
            for d in self.rows.values()
            if (at := self._due_at(d)) is not None and at <= now
        ]
        claimed = []
        for _, _, delivery_id in sorted(due)[:limit]:
            d = replace(
                self.rows[delivery_id],
                state=DeliveryState.SENDING,
                lease_owner=worker,
                lease_until=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            self.rows[delivery_id] = d
            claimed.append(d)
        return claimed

    async def record(self, outcomes: Sequence[Outcome]) -> list[int]:
        follow_ups = []
        applied = []
        for o in outcomes:
            d = self.rows[o.delivery_id]
            if o.lease_owner is None or d.lease_owner != o.lease_owner:
                log.warning("outcome of delivery %d dropped: lease lost", o.delivery_id)
                continue
            applied.append(o)
            self.rows[o.delivery_id] = replace(
                d,
                state=o.state if d.state == DeliveryState.SENDING else d.state,
                attempts=d.attempts + (len(o.attempts) if o.count_attempt else 0),
                provider_id=(o.attempts[-1].provider_id if o.attempts else None) or d.provider_id,
                last_error=o.attempts[-1].error if o.attempts else None,
                next_attempt_at=o.next_attempt_at,
                escalate_at=o.escalate_at or d.escalate_at,
                lease_owner=None,
                lease_until=None,
                updated_at=o.attempts[-1].at if o.attempts else d.updated_at,
                unknown_attempts=d.unknown_attempts
                + sum(a.outcome == "unknown" for a in o.attempts),
            )
            self.attempt_rows[o.delivery_id].extend(o.attempts)
            if o.follow_up is not None:
                follow_ups.append(o.follow_up)
        if follow_ups:
            times = [a.at for o in applied for a in o.attempts]
            self._insert(follow_ups, max(times or [f.next_attempt_at for f in follow_ups]))
        return [o.delivery_id for o in applied]

    async def renew(
        self, owner: str, delivery_ids: Sequence[int], now: datetime, lease_seconds: float
    ) -> list[int]:
        kept = []
        for i in delivery_ids:
            d = self.rows.get(i)
            if d is not None and d.lease_owner == owner:
                self.rows[i] = replace(d, lease_until=now + timedelta(seconds=lease_seconds))
                kept.append(i)
        return sorted(kept)

    async def release(self, due: Sequence[tuple[int, datetime]], worker: str) -> None:
        for i, at in due:
            d = self.rows[i]
            if d.state == DeliveryState.SENDING and d.lease_owner == worker:
                self.rows[i] = replace(
                    d,
                    state=DeliveryState.RETRYING if d.attempts else DeliveryState.QUEUED,
                    next_attempt_at=at,
                    lease_owner=None,
                    lease_until=None,
                )

    async def advance(
        self,
        delivery_id: int,
        state: DeliveryState,
        attempt_outcome: str,
        at: datetime,
        code: str | None = None,
        error: str | None = None,
    ) -> bool:
        d = self.rows.get(delivery_id)
        if d is None:
            return False
        self.attempt_rows[delivery_id].append(
            Attempt(delivery_id, at, attempt_outcome, None, error, code)
        )
        if state == DeliveryState.FAILED:
            allowed = d.state in (DeliveryState.SENT, DeliveryState.SENDING)
        else:
            allowed = PROGRESS_RANK[d.state] < PROGRESS_RANK[state]
        if not allowed:
            return False
        self.rows[delivery_id] = replace(
            d,
            state=state,
            last_error=error or d.last_error,
            next_attempt_at=None,
            updated_at=at,
        )
        return True

    async def acknowledge(self, delivery_id: int, by: str, at: datetime) -> bool:
        d = self.rows.get(delivery_id)
        if d is None or d.state not in (*_ACKABLE, DeliveryState.SENDING):
            return False
        root = d.root_id or d.id
        for other in list(self.rows.values()):
            if other.id != root and other.root_id != root:
                continue
            if other.id == delivery_id or other.state in _ACKABLE:
                self.rows[other.id] = replace(
                    other,
                    state=DeliveryState.ACKNOWLEDGED,
                    acknowledged_by=by,
                    acknowledged_at=at,
                    updated_at=at,
                )
            elif other.state in (DeliveryState.QUEUED, DeliveryState.RETRYING):
                self.rows[other.id] = replace(other, state=DeliveryState.CANCELLED, updated_at=at)
        self.attempt_rows[delivery_id].append(Attempt(delivery_id, at, "acknowledged"))
        return True

    async def due_escalations(self, now: datetime, limit: int) -> list[Delivery]:
        due = [
            d
            for d in self.rows.values()
            if d.id not in self.escalated
            and d.escalate_at is not None
            and d.escalate_at <= now
            and d.state in _ACKABLE
        ]
        return sorted(due, key=lambda d: (d.escalate_at or now, d.id))[:limit]

    async def mark_escalated(self, delivery_id: int, follow_up: NewDelivery, at: datetime) -> bool:
        d = self.rows[delivery_id]
        if delivery_id in self.escalated or d.state not in _ACKABLE:
            return False
        self.escalated.add(delivery_id)
        self.rows[delivery_id] = replace(d, updated_at=at)
        self._insert([follow_up], at)
        return True

    async def wait_for_work(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        self._work.clear()

    async def get_incident(self, incident_id: str) -> Incident | None:
        return self.incidents.get(incident_id)

    async def find_incident_by_source(self, source: str, key: str) -> Incident | None:
        found = [i for i in self.incidents.values() if i.source == source and i.source_key == key]
        return max(found, key=lambda i: i.created_at) if found else None

    async def list_incidents(self, page: Page = FIRST_PAGE) -> list[Incident]:
        ordered = sorted(self.incidents.values(), key=lambda i: (i.created_at, i.id), reverse=True)
        return ordered[page.offset : page.offset + page.limit]

    async def timeline(self, incident_id: str) -> list[TimelineEntry]:
        return sorted(self.entries.get(incident_id, []), key=lambda e: e.seq)

    async def statements(self, incident_id: str) -> list[Statement]:
        found = [s for s in self.statement_rows.values() if s.incident_id == incident_id]
        return sorted(found, key=lambda s: (s.seq, s.kind.value, s.locale, s.version))

    async def get_statement(self, statement_id: str) -> Statement | None:
        return self.statement_rows.get(statement_id)

    async def get_statements(self, ids: Sequence[str]) -> list[Statement]:
        return [self.statement_rows[i] for i in ids if i in self.statement_rows]

    def _of(self, incident_id: str) -> list[Delivery]:
        return [d for d in self.rows.values() if d.incident_id == incident_id]

    async def deliveries(self, incident_id: str, page: Page = FIRST_PAGE) -> list[Delivery]:
        return self._of(incident_id)[page.offset : page.offset + page.limit]

    async def delivery_counts(self, incident_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in self._of(incident_id):
            counts[d.state.value] = counts.get(d.state.value, 0) + 1
        return counts

    async def delivery_matrix(self, incident_id: str) -> list[tuple[str, str, str, int]]:
        counts: dict[tuple[str, str, str], int] = {}
        for d in self._of(incident_id):
            key = (d.audience, d.channel.value, d.state.value)
            counts[key] = counts.get(key, 0) + 1
        return [(*key, n) for key, n in sorted(counts.items())]

    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        return self.rows.get(delivery_id)

    async def attempts(self, delivery_ids: Sequence[int]) -> dict[int, list[Attempt]]:
        return {i: list(self.attempt_rows.get(i, [])) for i in delivery_ids}

    async def find_by_ack_token(self, token: str) -> Delivery | None:
        return next((d for d in self.rows.values() if d.ack_token == token), None)

    async def find_by_provider_id(self, channel: str, provider_id: str) -> Delivery | None:
        found = [
            d
            for d in self.rows.values()
            if d.channel.value == channel and d.provider_id == provider_id
        ]
        return found[-1] if found else None

    async def latest_ack_pending(self, channel: str, address: str) -> Delivery | None:
        found = [
            d
            for d in self.rows.values()
            if d.channel.value == channel
            and d.address == address
            and d.state in _ACKABLE
            and d.policy.require_ack
        ]
        return found[-1] if found else None

    async def chain_channels(self, root_id: int) -> set[str]:
        return {
            d.channel.value for d in self.rows.values() if d.id == root_id or d.root_id == root_id
        }

    async def save_health(self, name: str, state: str, since: datetime, detail: str | None) -> None:
        self.health[name] = (name, state, since, detail)

    async def channel_health(self) -> list[tuple[str, str, datetime, str | None]]:
        return [self.health[k] for k in sorted(self.health)]

    async def note_address_moved(self, channel: str, old: str, new: str, at: datetime) -> None:
        known = self.moves.get((channel, old))
        if known is None or known[0] != new:
            self.moves[(channel, old)] = (new, at)

    async def address_moves(self) -> list[tuple[str, str, str, datetime]]:
        return [(c, o, *self.moves[(c, o)]) for c, o in sorted(self.moves)]

    async def pending_count(self, incident_id: str | None = None) -> int:
        rows = self.rows.values() if incident_id is None else self._of(incident_id)
        return sum(1 for d in rows if d.state in PENDING_STATES)

    async def take_tokens(
        self, key: str, rate: float, burst: float, want: int, now: float
    ) -> tuple[int, float]:
        want = grant_size(want, burst)
        tokens, updated, paused = self.buckets.get(key, (float(burst), now, 0.0))
        level = min(float(burst), tokens + (now - updated) * rate) if now > updated else tokens
        granted = granted_of(level, want, paused > now)
        self.buckets[key] = (level - granted, max(updated, now), paused)
        return granted, wait_after(granted, level - granted, paused, rate, now)

    async def pause_bucket(self, key: str, until: float) -> None:
        _, updated, paused = self.buckets.get(key, (0.0, until, until))
        self.buckets[key] = (0.0, max(updated, until), max(paused, until))

    # --- inbound replies and dashboard sessions ------------------------------------------
    def _trust_tables(self) -> tuple[dict[str, datetime], dict[str, StoredSession]]:
        tables: tuple[dict[str, datetime], dict[str, StoredSession]]
        tables = self.__dict__.setdefault("_trust", ({}, {}))
        return tables

    async def remember_inbound(self, message_key: str, at: datetime) -> bool:
        replies, _ = self._trust_tables()
        if message_key in replies:
            return False
        replies[message_key] = at
        return True

    async def open_session(self, session: StoredSession) -> None:
        self._trust_tables()[1][session.digest] = session

    async def find_session(self, digest: str) -> StoredSession | None:
        return self._trust_tables()[1].get(digest)

    async def revoke_session(self, digest: str, at: datetime) -> None:
        sessions = self._trust_tables()[1]
        found = sessions.get(digest)
        if found is not None and found.revoked_at is None:
            sessions[digest] = replace(found, revoked_at=at)
