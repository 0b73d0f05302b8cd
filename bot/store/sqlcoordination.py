"""Coordination between the processes that share one database, in SQL: the scheduler's
leader, incident numbers, Idempotency-Keys, the progress message and the site-quorum query.

SQLite leads with a lease row (one file, a few processes at most); PostgreSQL overrides
:meth:`try_lead` with a session-level advisory lock (:mod:`bot.store.postgres`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import bot.store.rows as rows
from bot.domain.errors import DuplicateRequest
from bot.ports import (
    IDEMPOTENCY_TTL,
    IdempotencyKey,
    IdempotentAnswer,
    ProgressMessage,
    SiteQuorum,
)
from bot.store.sqlbase import _PENDING, Connection, IntegrityError, SqlBase, _placeholders

_OPEN = "i.status NOT IN ('draft', 'resolved')"

_LEAD = """
INSERT INTO leaders (name, holder, until) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
WHERE leaders.holder = excluded.holder OR leaders.until < ?
"""

# The counter never goes below what the incidents table already holds (ids written before
# the counter existed): the row is seeded, or caught up, from that scan.
_ALLOCATE = """
INSERT INTO incident_counters (prefix, last_number) VALUES (?, ?)
ON CONFLICT (prefix) DO UPDATE SET last_number = CASE
    WHEN incident_counters.last_number + 1 > excluded.last_number
    THEN incident_counters.last_number + 1 ELSE excluded.last_number END
RETURNING last_number
"""

_SAVE_PROGRESS = """
INSERT INTO progress_messages (incident_id, channel, ts, last_text, pending)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (incident_id) DO UPDATE SET channel = excluded.channel, ts = excluded.ts,
    last_text = excluded.last_text, pending = excluded.pending
"""


class SqlCoordination(SqlBase):
    """Leader lease, incident numbers, idempotency keys, progress messages, site quorum."""

    # --- the scheduler's leader --------------------------------------------------------
    async def try_lead(self, name: str, holder: str, now: datetime, ttl: float) -> bool:
        at = now.timestamp()
        async with self.transaction() as conn:
            await conn.execute(_LEAD, name, holder, at + ttl, at)
            found = await conn.fetch("SELECT holder FROM leaders WHERE name = ?", name)
        return bool(found) and found[0]["holder"] == holder

    async def resign(self, name: str, holder: str) -> None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM leaders WHERE name = ? AND holder = ?", name, holder)

    # --- incident numbers --------------------------------------------------------------
    async def next_incident_number(self, prefix: str) -> int:
        async with self.transaction() as conn:
            found = await conn.fetch(
                "SELECT id FROM incidents WHERE id LIKE ?", prefix.replace("%", "") + "%"
            )
            numbers = [
                int(r["id"].removeprefix(prefix))
                for r in found
                if r["id"].removeprefix(prefix).isdigit()
            ]
            allocated = await conn.fetch(_ALLOCATE, prefix, max(numbers, default=0) + 1)
        return int(allocated[0]["last_number"])

    # --- Idempotency-Key ---------------------------------------------------------------
    async def _claim_key(self, conn: Connection, claim: IdempotencyKey) -> None:
        """Insert the key row inside the commit's transaction; a live duplicate refuses it."""
        expired = (claim.created_at - IDEMPOTENCY_TTL).timestamp()
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE principal = ? AND request_key = ? "
            "AND created_at < ?",
            claim.principal,
            claim.key,
            expired,
        )
        try:
            await conn.execute(
                "INSERT INTO idempotency_keys (principal, request_key, request_hash, "
                "incident_id, created_at) VALUES (?, ?, ?, ?, ?)",
                claim.principal,
                claim.key,
                claim.request_hash,
                claim.incident_id,
                claim.created_at.timestamp(),
            )
        except IntegrityError:
            raise DuplicateRequest("this Idempotency-Key was already used") from None

    async def idempotent_answer(
        self, principal: str, key: str, since: datetime
    ) -> IdempotentAnswer | None:
        row = await self._one(
            "SELECT * FROM idempotency_keys WHERE principal = ? AND request_key = ? "
            "AND created_at >= ?",
            principal,
            key,
            since.timestamp(),
        )
        if row is None:
            return None
        return IdempotentAnswer(
            request_hash=row["request_hash"],
            incident_id=row["incident_id"],
            created_at=rows._dt(row["created_at"]),
            status=row["status"],
            body=row["body"],
        )

    async def save_idempotent_answer(
        self, principal: str, key: str, status: int, body: str
    ) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE idempotency_keys SET status = ?, body = ? "
                "WHERE principal = ? AND request_key = ?",
                status,
                body,
                principal,
                key,
            )

    async def purge_idempotency_keys(self, before: datetime) -> int:
        async with self.transaction() as conn:
            return await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", before.timestamp()
            )

    # --- the progress message ----------------------------------------------------------
    async def progress_due(self, resolved_since: datetime) -> list[str]:
        # due_at is set exactly while a delivery is pending: the partial index finds them.
        found = await self._many(
            "SELECT DISTINCT incident_id FROM deliveries WHERE due_at IS NOT NULL "
            f"AND state IN ({_placeholders(len(_PENDING))}) "
            "UNION SELECT incident_id FROM progress_messages WHERE pending > 0 "
            "UNION SELECT id AS incident_id FROM incidents WHERE status <> 'draft' "
            "AND (resolved_at IS NULL OR resolved_at >= ?)",
            *_PENDING,
            resolved_since.timestamp(),
        )
        return sorted(r["incident_id"] for r in found)

    async def get_progress(self, incident_id: str) -> ProgressMessage | None:
        row = await self._one("SELECT * FROM progress_messages WHERE incident_id = ?", incident_id)
        if row is None:
            return None
        return ProgressMessage(
            row["incident_id"], row["channel"], row["ts"], row["last_text"], int(row["pending"])
        )

    async def save_progress(self, message: ProgressMessage) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                _SAVE_PROGRESS,
                message.incident_id,
                message.channel,
                message.ts,
                message.last_text,
                message.pending,
            )

    # --- site quorum -------------------------------------------------------------------
    async def site_quorum(
        self, audience: str, deputies: Sequence[str], declared_before: datetime
    ) -> list[SiteQuorum]:
        if deputies:
            among = f"d.recipient IN ({_placeholders(len(deputies))})"
            outside = f"d.recipient NOT IN ({_placeholders(len(deputies))})"
        else:
            among, outside = "1 = 0", "1 = 1"
        cutoff = declared_before.timestamp()
        counted = await self._many(
            "SELECT d.incident_id, d.site, "
            f"COUNT(DISTINCT CASE WHEN d.state = 'acknowledged' AND {outside} "
            "THEN d.recipient END) AS confirmed, "
            f"MAX(CASE WHEN {among} THEN 1 ELSE 0 END) AS reached "
            "FROM deliveries d JOIN incidents i ON i.id = d.incident_id "
            f"WHERE {_OPEN} AND i.created_at <= ? AND d.audience = ? AND d.site IS NOT NULL "
            "GROUP BY d.incident_id, d.site",
            *deputies,
            *deputies,
            cutoff,
            audience,
        )
        escalations = await self._many(
            "SELECT t.incident_id, t.detail FROM timeline t "
            "JOIN incidents i ON i.id = t.incident_id "
            f"WHERE t.action = 'site_escalated' AND {_OPEN} AND i.created_at <= ?",
            cutoff,
        )
        found: dict[tuple[str, str], SiteQuorum] = {}
        for r in counted:
            found[(r["incident_id"], r["site"])] = SiteQuorum(
                r["incident_id"], r["site"], int(r["confirmed"]), bool(r["reached"])
            )
        incidents = {incident for incident, _ in found}
        for r in escalations:
            site = json.loads(r["detail"]).get("site")
            if r["incident_id"] not in incidents or not isinstance(site, str):
                continue
            before = found.get((r["incident_id"], site))
            found[(r["incident_id"], site)] = SiteQuorum(
                r["incident_id"], site, before.confirmed if before else 0, True
            )
        return sorted(found.values(), key=lambda q: (q.incident_id, q.site))
