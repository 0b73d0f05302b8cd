"""The delivery work queue in SQL: claims with leases, outcomes, releases, provider reports,
acknowledgements, escalations and channel health."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import bot.store.rows as rows
from bot.domain.models import (
    PENDING_STATES,
    PROGRESS_RANK,
    Delivery,
    DeliveryState,
    NewDelivery,
    Outcome,
)
from bot.store.queries import query
from bot.store.sqlbase import (
    _ACKABLE,
    _INSERT_ATTEMPT,
    _PENDING,
    Connection,
    SqlBase,
    _placeholders,
)

_RECORD = query("record_outcome")
_RENEW = query("renew")
_RELEASE = query("release")
_LEASE_OWNERS = query("lease_owners")
_CHUNK = 500

log = logging.getLogger("tocsin.store")


Time = Callable[[datetime | None], Any]


def outcome_row(o: Outcome, time: Time) -> tuple[Any, ...]:
    """The parameters of ``record_outcome.sql`` for one outcome, times through ``time``
    (epoch seconds; integer microseconds in SQLite's JSON batch, which takes the same rows):
    state, attempts added, provider id, last error, next attempt, due time, escalation time,
    unknown attempts added, update time, delivery id, lease owner."""
    last = o.attempts[-1] if o.attempts else None
    return (
        o.state.value,
        len(o.attempts) if o.count_attempt else 0,
        last.provider_id if last else None,
        last.error if last else None,
        time(o.next_attempt_at),
        time(o.next_attempt_at) if o.state in PENDING_STATES else None,
        time(o.escalate_at),
        sum(a.outcome == "unknown" for a in o.attempts),
        time(last.at) if last else None,
        o.delivery_id,
        o.lease_owner,
    )


def attempt_values(outcomes: Sequence[Outcome], time: Time) -> list[tuple[Any, ...]]:
    """The attempts of ``outcomes``, one row each: delivery id, time (through ``time``),
    outcome, provider id, error, code."""
    return [
        (o.delivery_id, time(a.at), a.outcome, a.provider_id, a.error, a.code)
        for o in outcomes
        for a in o.attempts
    ]


def applied(outcomes: Sequence[Outcome], holders: Mapping[int, str | None]) -> list[Outcome]:
    """The outcomes whose lease still holds their row (the rest are dropped, and logged)."""
    kept = []
    for o in outcomes:
        if o.lease_owner is not None and holders.get(o.delivery_id) == o.lease_owner:
            kept.append(o)
        else:
            log.warning("outcome of delivery %d dropped: lease lost", o.delivery_id)
    return kept


class SqlQueue(SqlBase):
    """The queue half of the Store contract."""

    async def claim_due(
        self, worker: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        at = now.timestamp()
        until = at + lease_seconds
        async with self.one_statement() as conn:
            found = await conn.fetch(self.claim_sql, worker, until, until, at, at, limit)
        return sorted(self.claimed(found), key=lambda d: d.id)

    async def record(self, outcomes: Sequence[Outcome]) -> list[int]:
        if not outcomes:
            return []
        async with self.transaction() as conn:
            holders = await self._lease_owners(conn, [o.delivery_id for o in outcomes])
            kept = applied(outcomes, holders)
            await conn.executemany(_RECORD, [outcome_row(o, rows.ts) for o in kept])
            await conn.executemany(_INSERT_ATTEMPT, attempt_values(kept, rows.ts))
            follow_ups = [o.follow_up for o in kept if o.follow_up is not None]
            if follow_ups:
                # Created when the worker decided them: the latest attempt of the batch.
                times = [a.at for o in kept for a in o.attempts]
                decided = max(times or [f.next_attempt_at for f in follow_ups])
                await self._insert_deliveries(conn, follow_ups, decided.timestamp())
            if follow_ups or any(o.state in PENDING_STATES for o in kept):
                await self._notify(conn)
        if follow_ups:
            self._work.set()
        return [o.delivery_id for o in kept]

    async def _lease_owners(self, conn: Connection, ids: Sequence[int]) -> dict[int, str | None]:
        """Who holds each row now, the rows locked until the transaction ends (PostgreSQL), so
        that no claim slips between this read and the fenced write."""
        owners: dict[int, str | None] = {}
        unique = sorted(set(ids))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            found = await conn.fetch(
                _LEASE_OWNERS.format(ids=_placeholders(len(chunk)), lock=self.lock_rows), *chunk
            )
            owners.update((r["id"], r["lease_owner"]) for r in found)
        return owners

    async def renew(
        self, owner: str, delivery_ids: Sequence[int], now: datetime, lease_seconds: float
    ) -> list[int]:
        if not delivery_ids:
            return []
        until = now.timestamp() + lease_seconds
        kept: list[int] = []
        async with self.transaction() as conn:
            for start in range(0, len(delivery_ids), _CHUNK):
                chunk = list(delivery_ids[start : start + _CHUNK])
                found = await conn.fetch(
                    _RENEW.format(ids=_placeholders(len(chunk)), lock=self.lock_rows),
                    until,
                    until,
                    owner,
                    *chunk,
                )
                kept.extend(r["id"] for r in found)
        return sorted(kept)

    async def release(self, due: Sequence[tuple[int, datetime]], worker: str) -> None:
        if not due:
            return
        params = [(at.timestamp(), at.timestamp(), i, worker) for i, at in due]
        async with self.transaction() as conn:
            await conn.executemany(_RELEASE, params)

    async def advance(
        self,
        delivery_id: int,
        state: DeliveryState,
        attempt_outcome: str,
        at: datetime,
        code: str | None = None,
        error: str | None = None,
    ) -> bool:
        lower = [s.value for s, rank in PROGRESS_RANK.items() if rank < PROGRESS_RANK[state]]
        moved: int
        async with self.transaction() as conn:
            if state == DeliveryState.FAILED:
                # A provider's failure report only counts for a message it had accepted.
                lower = [DeliveryState.SENT.value, DeliveryState.SENDING.value]
            moved = await conn.execute(
                f"UPDATE deliveries SET state = ?, last_error = COALESCE(?, last_error), "
                f"due_at = NULL, updated_at = ? WHERE id = ? AND state IN "
                f"({_placeholders(len(lower))})",
                state.value,
                error,
                at.timestamp(),
                delivery_id,
                *lower,
            )
            await conn.execute(
                _INSERT_ATTEMPT, delivery_id, at.timestamp(), attempt_outcome, None, error, code
            )
        return moved > 0

    async def acknowledge(self, delivery_id: int, by: str, at: datetime) -> bool:
        stamp = at.timestamp()
        async with self.transaction() as conn:
            found = await conn.fetch(
                "SELECT id, root_id, state FROM deliveries WHERE id = ?", delivery_id
            )
            if not found or found[0]["state"] not in (*_ACKABLE, DeliveryState.SENDING.value):
                return False
            root = found[0]["root_id"] or delivery_id
            await conn.execute(
                "UPDATE deliveries SET state = 'acknowledged', acknowledged_by = ?, "
                "acknowledged_at = ?, due_at = NULL, updated_at = ? WHERE id = ?",
                by,
                stamp,
                stamp,
                delivery_id,
            )
            # The rest of this person's chain (failovers, escalations) is settled too.
            await conn.execute(
                "UPDATE deliveries SET state = 'acknowledged', acknowledged_by = ?, "
                "acknowledged_at = ?, updated_at = ? WHERE (id = ? OR root_id = ?) "
                "AND id <> ? AND state IN ('sent', 'delivered')",
                by,
                stamp,
                stamp,
                root,
                root,
                delivery_id,
            )
            await conn.execute(
                "UPDATE deliveries SET state = 'cancelled', due_at = NULL, updated_at = ? "
                "WHERE (id = ? OR root_id = ?) AND id <> ? AND state IN ('queued', 'retrying')",
                stamp,
                root,
                root,
                delivery_id,
            )
            await conn.execute(
                _INSERT_ATTEMPT, delivery_id, stamp, "acknowledged", None, None, None
            )
        return True

    async def due_escalations(self, now: datetime, limit: int) -> list[Delivery]:
        async with self.reading() as conn:
            found = await conn.fetch(
                "SELECT * FROM deliveries WHERE escalated = 0 AND escalate_at <= ? "
                "AND state IN ('sent', 'delivered') ORDER BY escalate_at LIMIT ?",
                now.timestamp(),
                limit,
            )
        return [rows.delivery_from(r) for r in found]

    async def mark_escalated(self, delivery_id: int, follow_up: NewDelivery, at: datetime) -> bool:
        now = at.timestamp()
        async with self.transaction() as conn:
            changed = await conn.execute(
                "UPDATE deliveries SET escalated = 1, updated_at = ? WHERE id = ? "
                "AND escalated = 0 AND state IN ('sent', 'delivered')",
                now,
                delivery_id,
            )
            if not changed:
                return False
            await self._insert_deliveries(conn, [follow_up], now)
            await self._notify(conn)
        self._work.set()
        return True

    async def chain_channels(self, root_id: int) -> set[str]:
        found = await self._many(
            "SELECT DISTINCT channel FROM deliveries WHERE id = ? OR root_id = ?",
            root_id,
            root_id,
        )
        return {r["channel"] for r in found}

    async def latest_ack_pending(self, channel: str, address: str) -> Delivery | None:
        row = await self._one(
            "SELECT * FROM deliveries WHERE channel = ? AND address = ? "
            "AND state IN ('sent', 'delivered') AND require_ack = 1 "
            "ORDER BY id DESC LIMIT 1",
            channel,
            address,
        )
        return rows.delivery_from(row) if row else None

    async def save_health(self, name: str, state: str, since: datetime, detail: str | None) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO channel_health (name, state, since, detail) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
                "since = excluded.since, detail = excluded.detail",
                name,
                state,
                since.timestamp(),
                detail,
            )

    async def channel_health(self) -> list[tuple[str, str, datetime, str | None]]:
        found = await self._many("SELECT * FROM channel_health ORDER BY name")
        return [(r["name"], r["state"], rows._dt(r["since"]), r["detail"]) for r in found]

    async def pending_count(self, incident_id: str | None = None) -> int:
        states = _placeholders(len(_PENDING))
        if incident_id is None:
            row = await self._one(
                f"SELECT COUNT(*) AS n FROM deliveries WHERE state IN ({states})", *_PENDING
            )
        else:
            row = await self._one(
                f"SELECT COUNT(*) AS n FROM deliveries WHERE incident_id = ? "
                f"AND state IN ({states})",
                incident_id,
                *_PENDING,
            )
        return int(row["n"]) if row else 0

    async def find_by_ack_token(self, token: str) -> Delivery | None:
        row = await self._one("SELECT * FROM deliveries WHERE ack_token = ?", token)
        return rows.delivery_from(row) if row else None
