"""The SQL store's foundation: the driver seam every backend implements, and the helpers the
query modules share. Queries use ``?`` placeholders; the PostgreSQL driver rewrites them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from importlib import resources
from typing import Any, Protocol

import bot.store.rows as rows
from bot.domain.models import (
    PENDING_STATES,
    Delivery,
    DeliveryState,
    NewDelivery,
)

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
class SqlBase:
    """Connection handling, schema migrations and the in-process work signal."""

    dialect = "sqlite"
    claim_sql = ""
    # Appended to a SELECT that a fenced write relies on: PostgreSQL locks the rows read
    # (a claim skips them); SQLite's write transaction already excludes every other writer.
    lock_rows = ""

    def __init__(self) -> None:
        self._work = asyncio.Event()

    def claimed(self, found: Sequence[Mapping[str, Any]]) -> list[Delivery]:
        """The deliveries of the rows :attr:`claim_sql` returned."""
        return [rows.delivery_from(r) for r in found]

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        raise NotImplementedError

    def reading(self) -> AbstractAsyncContextManager[Connection]:
        raise NotImplementedError

    def one_statement(self) -> AbstractAsyncContextManager[Connection]:
        """A connection for one writing statement, atomic by itself. SQLite runs it without
        an explicit transaction: its write lock is held only while the statement runs, never
        across round trips to the connection's thread. Elsewhere: a transaction."""
        return self.transaction()

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def _notify(self, conn: Connection) -> None:
        """Tell other processes that work was committed (PostgreSQL: NOTIFY)."""

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

    async def _insert_deliveries(
        self, conn: Connection, deliveries: Sequence[NewDelivery], now: float
    ) -> None:
        if deliveries:
            await conn.executemany(
                _INSERT_DELIVERY, [rows.new_delivery_row(d, now) for d in deliveries]
            )

    async def wait_for_work(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
        self._work.clear()

    async def _one(self, sql: str, *args: Any) -> Mapping[str, Any] | None:
        async with self.reading() as conn:
            found = await conn.fetch(sql, *args)
        return found[0] if found else None

    async def _many(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        async with self.reading() as conn:
            return await conn.fetch(sql, *args)
