"""The SQL store: every query once, over a small driver seam (SQLite or PostgreSQL).

Queries use ``?`` placeholders; the PostgreSQL driver rewrites them to ``$n``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from importlib import resources
from typing import Any, Protocol

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
from bot.ports import FIRST_PAGE, Changes, Page
from bot.store import rows

_PENDING = tuple(s.value for s in PENDING_STATES)
_ACKABLE = (DeliveryState.SENT.value, DeliveryState.DELIVERED.value)


class Connection(Protocol):
    """One database session, as the SQL store uses it."""

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]: ...

    async def execute(self, sql: str, *args: Any) -> int: ...

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None: ...

    async def script(self, sql: str) -> None: ...


class IntegrityError(Exception):
    """A unique or foreign-key constraint refused a write."""


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


_INSERT_INCIDENT = (
    f"INSERT INTO incidents ({', '.join(rows.INCIDENT_COLUMNS)}) "
    f"VALUES ({_placeholders(len(rows.INCIDENT_COLUMNS))})"
)
_UPDATE_INCIDENT = (
    "UPDATE incidents SET "
    + ", ".join(f"{c} = ?" for c in rows.INCIDENT_COLUMNS[1:])
    + " WHERE id = ?"
)
_INSERT_TIMELINE = (
    f"INSERT INTO timeline ({', '.join(rows.TIMELINE_COLUMNS)}) "
    f"VALUES ({_placeholders(len(rows.TIMELINE_COLUMNS))})"
)
_INSERT_STATEMENT = (
    f"INSERT INTO statements ({', '.join(rows.STATEMENT_COLUMNS)}) "
    f"VALUES ({_placeholders(len(rows.STATEMENT_COLUMNS))})"
)
_UPDATE_STATEMENT = (
    "UPDATE statements SET "
    + ", ".join(f"{c} = ?" for c in rows.STATEMENT_COLUMNS[1:])
    + " WHERE id = ?"
)
_INSERT_DELIVERY = (
    f"INSERT INTO deliveries ({', '.join(rows.NEW_DELIVERY_COLUMNS)}) "
    f"VALUES ({_placeholders(len(rows.NEW_DELIVERY_COLUMNS))})"
)
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, at, outcome, provider_id, error, code) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# An outcome moves the row only while it is still ``sending``: an acknowledgement, a
# cancellation or an early delivery report that came first is never overwritten.
_RECORD = """
UPDATE deliveries SET
    state = CASE WHEN state = 'sending' THEN ? ELSE state END,
    attempts = attempts + ?,
    provider_id = COALESCE(?, provider_id),
    last_error = ?,
    next_attempt_at = ?,
    due_at = CASE WHEN state = 'sending' THEN ? ELSE due_at END,
    escalate_at = COALESCE(?, escalate_at),
    lease_owner = NULL, lease_until = NULL, updated_at = ?
WHERE id = ?
"""


def _last(outcome: Outcome, name: str) -> Any:
    return getattr(outcome.attempts[-1], name) if outcome.attempts else None


class SqlStore:
    """The Store contract in SQL; subclasses provide the connection and the claim query."""

    dialect = "sqlite"
    claim_sql = ""

    def __init__(self) -> None:
        self._work = asyncio.Event()

    # --- driver seam ---------------------------------------------------------------
    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        raise NotImplementedError

    def reading(self) -> AbstractAsyncContextManager[Connection]:
        raise NotImplementedError

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _notify(self, conn: Connection) -> None:
        """Tell other processes that work was committed (PostgreSQL: NOTIFY)."""

    # --- schema --------------------------------------------------------------------
    async def migrate(self) -> list[str]:
        folder = resources.files("bot.store").joinpath("sql", self.dialect)
        names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
        applied: list[str] = []
        async with self.transaction() as conn:
            await conn.script(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name in names:
                if name in done:
                    continue
                await conn.script(folder.joinpath(name).read_text(encoding="utf-8"))
                await conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    name,
                    datetime.now().timestamp(),  # noqa: DTZ005 - epoch is zone-free
                )
                applied.append(name)
        return applied

    async def ping(self) -> bool:
        try:
            async with self.reading() as conn:
                await conn.fetch("SELECT 1 AS one")
        except Exception:
            return False
        return True

    # --- writes --------------------------------------------------------------------
    async def commit(self, changes: Changes) -> None:
        now = datetime.now().timestamp()  # noqa: DTZ005
        try:
            async with self.transaction() as conn:
                if changes.incident is not None:
                    row = rows.incident_row(changes.incident)
                    if changes.new_incident:
                        await conn.execute(_INSERT_INCIDENT, *row)
                    else:
                        await conn.execute(_UPDATE_INCIDENT, *row[1:], row[0])
                if changes.timeline:
                    await conn.executemany(
                        _INSERT_TIMELINE, [rows.timeline_row(e) for e in changes.timeline]
                    )
                if changes.statements:
                    await conn.executemany(
                        _INSERT_STATEMENT, [rows.statement_row(s) for s in changes.statements]
                    )
                for statement in changes.statement_updates:
                    row = rows.statement_row(statement)
                    await conn.execute(_UPDATE_STATEMENT, *row[1:], row[0])
                await self._insert_deliveries(conn, changes.deliveries, now)
                if changes.deliveries:
                    await self._notify(conn)
        except IntegrityError as exc:
            raise Conflict(str(exc)) from None
        if changes.deliveries:
            self._work.set()

    async def _insert_deliveries(
        self, conn: Connection, deliveries: Sequence[NewDelivery], now: float
    ) -> None:
        if deliveries:
            await conn.executemany(
                _INSERT_DELIVERY, [rows.new_delivery_row(d, now) for d in deliveries]
            )

    async def next_incident_number(self, prefix: str) -> int:
        async with self.reading() as conn:
            found = await conn.fetch(
                "SELECT id FROM incidents WHERE id LIKE ?", prefix.replace("%", "") + "%"
            )
        numbers = [
            int(r["id"].removeprefix(prefix))
            for r in found
            if r["id"].removeprefix(prefix).isdigit()
        ]
        return max(numbers, default=0) + 1

    # --- queue ---------------------------------------------------------------------
    async def claim_due(
        self, worker: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        at = now.timestamp()
        until = at + lease_seconds
        async with self.transaction() as conn:
            found = await conn.fetch(self.claim_sql, worker, until, until, at, at, limit)
        return sorted((rows.delivery_from(r) for r in found), key=lambda d: d.id)

    async def record(self, outcomes: Sequence[Outcome]) -> int:
        if not outcomes:
            return 0
        now = datetime.now().timestamp()  # noqa: DTZ005
        async with self.transaction() as conn:
            await conn.executemany(
                _RECORD,
                [
                    (
                        o.state.value,
                        len(o.attempts) if o.count_attempt else 0,
                        _last(o, "provider_id"),
                        _last(o, "error"),
                        rows.ts(o.next_attempt_at),
                        rows.ts(o.next_attempt_at) if o.state in PENDING_STATES else None,
                        rows.ts(o.escalate_at),
                        now,
                        o.delivery_id,
                    )
                    for o in outcomes
                ],
            )
            await conn.executemany(
                _INSERT_ATTEMPT,
                [
                    (o.delivery_id, rows.ts(a.at), a.outcome, a.provider_id, a.error, a.code)
                    for o in outcomes
                    for a in o.attempts
                ],
            )
            follow_ups = [o.follow_up for o in outcomes if o.follow_up is not None]
            await self._insert_deliveries(conn, follow_ups, now)
            if follow_ups or any(o.state in PENDING_STATES for o in outcomes):
                await self._notify(conn)
        if follow_ups:
            self._work.set()
        return len(follow_ups)

    async def release(self, delivery_ids: Sequence[int], worker: str, at: datetime) -> None:
        if not delivery_ids:
            return
        due = at.timestamp()
        async with self.transaction() as conn:
            await conn.executemany(
                "UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' "
                "ELSE 'queued' END, due_at = ?, next_attempt_at = ?, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ? AND state = 'sending' AND lease_owner = ?",
                [(due, due, i, worker) for i in delivery_ids],
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

    async def mark_escalated(self, delivery_id: int, follow_up: NewDelivery) -> bool:
        now = datetime.now().timestamp()  # noqa: DTZ005
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

    async def wait_for_work(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        self._work.clear()

    # --- reads ---------------------------------------------------------------------
    async def _one(self, sql: str, *args: Any) -> Mapping[str, Any] | None:
        async with self.reading() as conn:
            found = await conn.fetch(sql, *args)
        return found[0] if found else None

    async def _many(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        async with self.reading() as conn:
            return await conn.fetch(sql, *args)

    async def get_incident(self, incident_id: str) -> Incident | None:
        row = await self._one("SELECT * FROM incidents WHERE id = ?", incident_id)
        return rows.incident_from(row) if row else None

    async def find_incident_by_source(self, source: str, key: str) -> Incident | None:
        row = await self._one(
            "SELECT * FROM incidents WHERE source = ? AND source_key = ? "
            "ORDER BY created_at DESC LIMIT 1",
            source,
            key,
        )
        return rows.incident_from(row) if row else None

    async def list_incidents(self, page: Page = FIRST_PAGE) -> list[Incident]:
        found = await self._many(
            "SELECT * FROM incidents ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            page.limit,
            page.offset,
        )
        return [rows.incident_from(r) for r in found]

    async def timeline(self, incident_id: str) -> list[TimelineEntry]:
        found = await self._many(
            "SELECT * FROM timeline WHERE incident_id = ? ORDER BY seq", incident_id
        )
        return [rows.timeline_from(r) for r in found]

    async def statements(self, incident_id: str) -> list[Statement]:
        found = await self._many(
            "SELECT * FROM statements WHERE incident_id = ? ORDER BY seq, kind, locale, version",
            incident_id,
        )
        return [rows.statement_from(r) for r in found]

    async def get_statement(self, statement_id: str) -> Statement | None:
        row = await self._one("SELECT * FROM statements WHERE id = ?", statement_id)
        return rows.statement_from(row) if row else None

    async def get_statements(self, ids: Sequence[str]) -> list[Statement]:
        if not ids:
            return []
        found = await self._many(
            f"SELECT * FROM statements WHERE id IN ({_placeholders(len(ids))})", *ids
        )
        return [rows.statement_from(r) for r in found]

    async def deliveries(self, incident_id: str, page: Page = FIRST_PAGE) -> list[Delivery]:
        found = await self._many(
            "SELECT * FROM deliveries WHERE incident_id = ? ORDER BY id LIMIT ? OFFSET ?",
            incident_id,
            page.limit,
            page.offset,
        )
        return [rows.delivery_from(r) for r in found]

    async def delivery_counts(self, incident_id: str) -> dict[str, int]:
        found = await self._many(
            "SELECT state, COUNT(*) AS n FROM deliveries WHERE incident_id = ? GROUP BY state",
            incident_id,
        )
        return {r["state"]: int(r["n"]) for r in found}

    async def delivery_matrix(self, incident_id: str) -> list[tuple[str, str, str, int]]:
        found = await self._many(
            "SELECT audience, channel, state, COUNT(*) AS n FROM deliveries "
            "WHERE incident_id = ? GROUP BY audience, channel, state "
            "ORDER BY audience, channel, state",
            incident_id,
        )
        return [(r["audience"], r["channel"], r["state"], int(r["n"])) for r in found]

    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        row = await self._one("SELECT * FROM deliveries WHERE id = ?", delivery_id)
        return rows.delivery_from(row) if row else None

    async def attempts(self, delivery_ids: Sequence[int]) -> dict[int, list[Attempt]]:
        result: dict[int, list[Attempt]] = {i: [] for i in delivery_ids}
        for start in range(0, len(delivery_ids), 500):
            chunk = list(delivery_ids[start : start + 500])
            found = await self._many(
                f"SELECT * FROM attempts WHERE delivery_id IN ({_placeholders(len(chunk))}) "
                "ORDER BY id",
                *chunk,
            )
            for r in found:
                result[r["delivery_id"]].append(rows.attempt_from(r))
        return result

    async def find_by_ack_token(self, token: str) -> Delivery | None:
        row = await self._one("SELECT * FROM deliveries WHERE ack_token = ?", token)
        return rows.delivery_from(row) if row else None

    async def find_by_provider_id(self, channel: str, provider_id: str) -> Delivery | None:
        row = await self._one(
            "SELECT * FROM deliveries WHERE channel = ? AND provider_id = ? "
            "ORDER BY id DESC LIMIT 1",
            channel,
            provider_id,
        )
        return rows.delivery_from(row) if row else None

    async def latest_ack_pending(self, channel: str, address: str) -> Delivery | None:
        row = await self._one(
            "SELECT * FROM deliveries WHERE channel = ? AND address = ? "
            "AND state IN ('sent', 'delivered') AND policy LIKE '%\"require_ack\":true%' "
            "ORDER BY id DESC LIMIT 1",
            channel,
            address,
        )
        return rows.delivery_from(row) if row else None

    async def chain_channels(self, root_id: int) -> set[str]:
        found = await self._many(
            "SELECT DISTINCT channel FROM deliveries WHERE id = ? OR root_id = ?",
            root_id,
            root_id,
        )
        return {r["channel"] for r in found}

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
