"""The delivery work queue in SQL: claims with leases, outcomes, releases, provider reports,
acknowledgements, escalations and channel health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import orjson

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
_RECORD_JSON = query("record_outcomes.sqlite")
_INSERT_ATTEMPTS_JSON = query("insert_attempts.sqlite")
_LEASE_OWNERS_JSON = query("lease_owners.sqlite")
_CHUNK = 500

log = logging.getLogger("tocsin.store")


def _last(outcome: Outcome, name: str) -> Any:
    return getattr(outcome.attempts[-1], name) if outcome.attempts else None


def _record_row(o: Outcome) -> tuple[Any, ...]:
    """The parameters of ``record_outcome.sql`` for one outcome."""
    return (
        o.state.value,
        len(o.attempts) if o.count_attempt else 0,
        _last(o, "provider_id"),
        _last(o, "error"),
        rows.ts(o.next_attempt_at),
        rows.ts(o.next_attempt_at) if o.state in PENDING_STATES else None,
        rows.ts(o.escalate_at),
        sum(a.outcome == "unknown" for a in o.attempts),
        _last(o, "at").timestamp() if o.attempts else None,
        o.delivery_id,
        o.lease_owner,
    )


def _attempt_rows(outcomes: Sequence[Outcome]) -> list[tuple[Any, ...]]:
    """The parameters of the attempts insert, one row per attempt."""
    return [
        (o.delivery_id, rows.ts(a.at), a.outcome, a.provider_id, a.error, a.code)
        for o in outcomes
        for a in o.attempts
    ]


def _outcome_json(o: Outcome) -> list[Any]:
    """One outcome for ``record_outcomes.sqlite.sql``: :func:`_record_row`, led by the id and
    the lease owner, times in integer microseconds."""
    last = o.attempts[-1] if o.attempts else None
    return [
        o.delivery_id,
        o.lease_owner,
        o.state.value,
        len(o.attempts) if o.count_attempt else 0,
        last.provider_id if last else None,
        last.error if last else None,
        rows.micros(o.next_attempt_at),
        rows.micros(o.next_attempt_at) if o.state in PENDING_STATES else None,
        rows.micros(o.escalate_at),
        sum(a.outcome == "unknown" for a in o.attempts),
        rows.micros(last.at) if last else None,
    ]


def _attempts_json(outcomes: Sequence[Outcome]) -> list[list[Any]]:
    """The attempts of ``outcomes`` for ``insert_attempts.sqlite.sql``."""
    return [
        [o.delivery_id, o.lease_owner, rows.micros(a.at), a.outcome, a.provider_id, a.error, a.code]
        for o in outcomes
        for a in o.attempts
    ]


def _applied(outcomes: Sequence[Outcome], holders: Mapping[int, str | None]) -> list[Outcome]:
    """The outcomes whose lease still holds their row (the rest are dropped, and logged)."""
    applied = []
    for o in outcomes:
        if o.lease_owner is not None and holders.get(o.delivery_id) == o.lease_owner:
            applied.append(o)
        else:
            log.warning("outcome of delivery %d dropped: lease lost", o.delivery_id)
    return applied


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
        if (
            self.pipelined
            and len(outcomes) <= _CHUNK
            and all(o.follow_up is None for o in outcomes)
        ):
            return await self._record_pipelined(outcomes)
        async with self.transaction() as conn:
            holders = await self._lease_owners(conn, [o.delivery_id for o in outcomes])
            applied = _applied(outcomes, holders)
            await conn.executemany(_RECORD, [_record_row(o) for o in applied])
            await conn.executemany(_INSERT_ATTEMPT, _attempt_rows(applied))
            follow_ups = [o.follow_up for o in applied if o.follow_up is not None]
            if follow_ups:
                # Created when the worker decided them: the latest attempt of the batch.
                times = [a.at for o in applied for a in o.attempts]
                decided = max(times or [f.next_attempt_at for f in follow_ups])
                await self._insert_deliveries(conn, follow_ups, decided.timestamp())
            if follow_ups or any(o.state in PENDING_STATES for o in applied):
                await self._notify(conn)
        if follow_ups:
            self._work.set()
        return [o.delivery_id for o in applied]

    async def _record_pipelined(self, outcomes: Sequence[Outcome]) -> list[int]:
        """:meth:`record` in three statements queued at once (a driver that runs them in
        order), each over the whole batch as one JSON parameter: who holds each row, the
        attempts inserted only where the outcome's lease holds it, then the fenced update.
        One round trip inside the transaction instead of three, so the write lock is not held
        while the worker's loop is busy; one step of SQLite per statement, so its thread takes
        the GIL three times per batch rather than three times per row."""
        ids = sorted({o.delivery_id for o in outcomes})
        owned = [o for o in outcomes if o.lease_owner is not None]
        async with self.transaction() as conn:
            answers = await asyncio.gather(
                conn.fetch(_LEASE_OWNERS_JSON, orjson.dumps(ids)),
                conn.execute(_INSERT_ATTEMPTS_JSON, orjson.dumps(_attempts_json(owned))),
                conn.execute(_RECORD_JSON, orjson.dumps([_outcome_json(o) for o in owned])),
                return_exceptions=True,  # all three have run when the rollback is queued
            )
            for answer in answers:
                if isinstance(answer, BaseException):
                    raise answer
        found = cast(list[Mapping[str, Any]], answers[0])
        holders = dict(orjson.loads(found[0]["owners"]))
        return [o.delivery_id for o in _applied(outcomes, holders)]

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

    async def release(self, delivery_ids: Sequence[int], worker: str, at: datetime) -> None:
        if not delivery_ids:
            return
        due = at.timestamp()
        async with self.transaction() as conn:
            await conn.executemany(_RELEASE, [(due, due, i, worker) for i in delivery_ids])

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
