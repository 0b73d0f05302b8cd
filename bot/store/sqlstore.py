"""The SQL store: every query once, over a small driver seam (SQLite or PostgreSQL).

:mod:`sqlbase` holds the seam and migrations, :mod:`sqlqueue` the work queue; this module adds
the atomic commit of a domain change and the reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import bot.store.rows as rows
from bot.domain.errors import Conflict
from bot.domain.models import (
    Attempt,
    Delivery,
    Incident,
    Statement,
    TimelineEntry,
)
from bot.ports import FIRST_PAGE, Changes, Page, StoredSession
from bot.store.sqlbase import (
    _INSERT_INCIDENT,
    _INSERT_STATEMENT,
    _INSERT_TIMELINE,
    _UPDATE_INCIDENT,
    _UPDATE_STATEMENT,
    Connection,
    IntegrityError,
    _placeholders,
)
from bot.store.sqlbuckets import SqlBuckets
from bot.store.sqlcoordination import SqlCoordination
from bot.store.sqlmoves import SqlAddressMoves
from bot.store.sqlqueue import SqlQueue

__all__ = ["Connection", "IntegrityError", "SqlStore"]


class SqlStore(SqlAddressMoves, SqlCoordination, SqlBuckets, SqlQueue):
    """The Store contract in SQL; subclasses provide the connection and the claim query."""

    async def commit(self, changes: Changes) -> None:
        now = changes.decided_at.timestamp()
        try:
            async with self.transaction() as conn:
                if changes.idempotency is not None:
                    await self._claim_key(conn, changes.idempotency)
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

    async def find_by_provider_id(self, channel: str, provider_id: str) -> Delivery | None:
        row = await self._one(
            "SELECT * FROM deliveries WHERE channel = ? AND provider_id = ? "
            "ORDER BY id DESC LIMIT 1",
            channel,
            provider_id,
        )
        return rows.delivery_from(row) if row else None

    # --- inbound replies and dashboard sessions ------------------------------------------
    async def remember_inbound(self, message_key: str, at: datetime) -> bool:
        async with self.transaction() as conn:
            added = await conn.execute(
                "INSERT INTO inbound_replies (message_key, received_at) VALUES (?, ?) "
                "ON CONFLICT (message_key) DO NOTHING",
                message_key,
                at.timestamp(),
            )
        return added == 1

    async def open_session(self, session: StoredSession) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO dashboard_sessions (digest, token_name, csrf, created_at, "
                "expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, NULL)",
                session.digest,
                session.token_name,
                session.csrf,
                session.created_at.timestamp(),
                session.expires_at.timestamp(),
            )

    async def find_session(self, digest: str) -> StoredSession | None:
        row = await self._one("SELECT * FROM dashboard_sessions WHERE digest = ?", digest)
        if row is None:
            return None
        revoked = row["revoked_at"]
        return StoredSession(
            row["digest"],
            row["token_name"],
            row["csrf"],
            rows._dt(row["created_at"]),
            rows._dt(row["expires_at"]),
            rows._dt(revoked) if revoked is not None else None,
        )

    async def revoke_session(self, digest: str, at: datetime) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE dashboard_sessions SET revoked_at = ? "
                "WHERE digest = ? AND revoked_at IS NULL",
                at.timestamp(),
                digest,
            )
