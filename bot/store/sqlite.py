"""SQLite store (aiosqlite, WAL): the embedded default."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

import bot.store.rows as rows
from bot.domain.models import Delivery, Outcome
from bot.store.queries import query
from bot.store.sqlqueue import applied, attempt_values, outcome_row
from bot.store.sqlstore import IntegrityError, SqlStore

_RECORD_BATCH = query("record_outcomes.sqlite")
_INSERT_ATTEMPTS_BATCH = query("insert_attempts.sqlite")
_LEASE_OWNERS_BATCH = query("lease_owners.sqlite")


class _SqliteConnection:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        # One round trip to the connection's thread (execute, fetch and close together); the
        # rows become dicts: sqlite3.Row finds a column by name with a linear, case-insensitive
        # scan (a delivery row's 32 columns cost 10 µs that way).
        found = list(await self._db.execute_fetchall(sql, args))
        if not found:
            return []
        names = found[0].keys()
        return [dict(zip(names, row, strict=True)) for row in found]

    async def execute(self, sql: str, *args: Any) -> int:
        # One round trip to the connection's thread: the cursor is not closed by another
        # (closing it only frees the statement, which dropping it does too).
        try:
            cursor = await self._db.execute(sql, args)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from None
        return cursor.rowcount

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        try:
            await self._db.executemany(sql, args)
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from None

    async def script(self, sql: str) -> None:
        # executescript would COMMIT the open transaction: run statement by statement instead.
        for statement in _split(sql):
            await self._db.execute(statement)


def _split(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class SqliteStore(SqlStore):
    """One connection per process; an asyncio lock serialises its use, WAL lets other
    processes (the CLI, a second worker) read and write the same file."""

    dialect = "sqlite"
    claim_sql = query("claim_due.sqlite").format(delivery=rows.json_delivery())

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA busy_timeout=10000")
        await self._db.execute("PRAGMA foreign_keys=ON")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteConnection]:
        db = self._require()
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteConnection(db)
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    def one_statement(self) -> AbstractAsyncContextManager[_SqliteConnection]:
        return self.reading()  # autocommit: the statement is its own transaction

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[_SqliteConnection]:
        db = self._require()
        async with self._lock:
            yield _SqliteConnection(db)

    def claimed(self, found: Sequence[Mapping[str, Any]]) -> list[Delivery]:
        return rows.deliveries_from_json(r["delivery"] for r in found)

    async def record(self, outcomes: Sequence[Outcome]) -> list[int]:
        """The shared :meth:`record` in three statements queued at once (aiosqlite's thread
        runs them in order), each over the whole batch as one JSON parameter: who holds each
        row, the attempts inserted only where the outcome's lease holds it, then the fenced
        update. One round trip inside the transaction instead of three, so the write lock is
        not held while the worker's loop is busy; one step of SQLite per statement, so its
        thread takes the GIL three times per batch rather than three times per row. Outcomes
        that fail a person over to another channel insert rows: the shared path writes those."""
        if not outcomes or any(o.follow_up is not None for o in outcomes):
            return await super().record(outcomes)
        ids = sorted({o.delivery_id for o in outcomes})
        owned = [o for o in outcomes if o.lease_owner is not None]
        outcome_rows = [outcome_row(o, rows.micros) for o in owned]
        attempt_rows = [
            (*row, o.lease_owner) for o in owned for row in attempt_values((o,), rows.micros)
        ]
        async with self.transaction() as conn:
            answers = await asyncio.gather(
                conn.fetch(_LEASE_OWNERS_BATCH, orjson.dumps(ids)),
                conn.execute(_INSERT_ATTEMPTS_BATCH, orjson.dumps(attempt_rows)),
                conn.execute(_RECORD_BATCH, orjson.dumps(outcome_rows)),
                return_exceptions=True,  # all three have run when the rollback is queued
            )
            for answer in answers:
                if isinstance(answer, BaseException):
                    raise answer
        found = answers[0]
        assert isinstance(found, list)
        holders = dict(orjson.loads(found[0]["owners"]))
        return [o.delivery_id for o in applied(outcomes, holders)]

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db
