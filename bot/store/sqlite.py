"""SQLite store (aiosqlite, WAL): the embedded default."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

import bot.store.rows as rows
from bot.domain.models import Delivery
from bot.store.queries import query
from bot.store.sqlstore import IntegrityError, SqlStore


class _SqliteConnection:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        # One round trip to the connection's thread (execute, fetch and close together); the
        # rows become dicts: sqlite3.Row finds a column by name with a linear, case-insensitive
        # scan (a claimed delivery's 32 columns cost 10 µs that way).
        found = list(await self._db.execute_fetchall(sql, args))
        if not found:
            return []
        names = found[0].keys()
        return [dict(zip(names, row, strict=True)) for row in found]

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            async with self._db.execute(sql, args) as cursor:
                return cursor.rowcount
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from None

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
    pipelined = True

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

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db
