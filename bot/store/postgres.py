"""PostgreSQL store (asyncpg): several workers on several machines share one queue.

Claims use ``FOR UPDATE SKIP LOCKED``; commits that add work ``NOTIFY tocsin_work`` so idle
workers wake at once (polling remains the fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any

import asyncpg

from bot.store.queries import query
from bot.store.sqlstore import IntegrityError, SqlStore

_PLACEHOLDER = re.compile(r"\?")
_CHANNEL = "tocsin_work"
# A query on a half-open connection (a database host gone without a RST) would otherwise
# wait forever; with a timeout the worker's retry loop takes over.
_COMMAND_TIMEOUT = 30.0
# Advisory-lock class of Tocsin's leaders (the migration lock is the single key 7461636).
_LEAD_CLASS = 7461636
_LEAD_TIMEOUT = 5.0


@lru_cache(maxsize=1024)
def to_dollar(sql: str) -> str:
    """``?`` placeholders → ``$1, $2…`` (the store's SQL has no literal question marks)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PgConnection:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        return list(await self._conn.fetch(to_dollar(sql), *args))

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status = await self._conn.execute(to_dollar(sql), *args)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from None
        tail = str(status).rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        try:
            await self._conn.executemany(to_dollar(sql), args)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from None

    async def script(self, sql: str) -> None:
        await self._conn.execute(sql)


class PostgresStore(SqlStore):
    """A pool of connections plus one listening connection."""

    dialect = "postgres"
    lock_rows = " FOR UPDATE"
    claim_sql = query("claim_due.postgres")

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        super().__init__()
        self.url = url.replace("postgresql+asyncpg://", "postgresql://")
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._relisten: asyncio.Task[None] | None = None
        self._closing = False
        self._sizes = (min_size, max_size)
        self._leads: dict[str, asyncpg.Connection] = {}  # one session per leader name
        self._held: set[str] = set()

    async def open(self) -> None:
        self._closing = False
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=self._sizes[0],
            max_size=self._sizes[1],
            command_timeout=_COMMAND_TIMEOUT,
        )
        try:
            await self._listen()
        except (OSError, asyncpg.PostgresError):
            self._relisten_later()  # polling works meanwhile

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.url)
        await conn.add_listener(_CHANNEL, self._on_notify)
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_notify(self, *_: object) -> None:
        self._work.set()

    def _on_listener_lost(self, *_: object) -> None:
        """The LISTEN connection died (database restart, terminated backend): listen again."""
        self._listener = None
        if not self._closing:
            self._relisten_later()

    def _relisten_later(self) -> None:
        if self._relisten is None or self._relisten.done():
            self._relisten = asyncio.create_task(self._listen_again())

    async def _listen_again(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                await self._listen()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(delay)  # backoff while the database is away
                delay = min(delay * 2, 5.0)
                continue
            self._work.set()  # work may have been committed while nobody listened
            return

    async def try_lead(self, name: str, holder: str, now: datetime, ttl: float) -> bool:
        """Leadership is a session-level advisory lock held on a connection of its own: it
        ends with that connection (a dead process, a dropped link, a restarted database), and
        another process's next try takes it."""
        conn = self._leads.get(name)
        try:
            if conn is None or conn.is_closed():
                self._held.discard(name)
                conn = await asyncpg.connect(self.url, timeout=_LEAD_TIMEOUT)
                self._leads[name] = conn
            if name in self._held:
                await conn.fetchval("SELECT 1", timeout=_LEAD_TIMEOUT)  # still our session?
                return True
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1::int, $2::int)",
                _LEAD_CLASS,
                _lead_key(name),
                timeout=_LEAD_TIMEOUT,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # The session (and the lock with it) is gone: stand by, try afresh next time.
            self._held.discard(name)
            lost = self._leads.pop(name, None)
            if lost is not None:
                lost.terminate()
            return False
        if got:
            self._held.add(name)
        return bool(got)

    async def resign(self, name: str, holder: str) -> None:
        self._held.discard(name)
        conn = self._leads.pop(name, None)
        if conn is not None:
            await _quietly_close(conn)  # closing the session releases its lock

    async def close(self) -> None:
        self._closing = True
        for name in list(self._leads):
            await self.resign(name, "")
        if self._relisten is not None:
            self._relisten.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relisten
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.wait_for(pool.close(), 10)

    async def _notify(self, conn: Any) -> None:
        await conn.execute(f"NOTIFY {_CHANNEL}")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgConnection]:
        pool = self._require()
        async with pool.acquire() as conn, conn.transaction():
            yield _PgConnection(conn)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[_PgConnection]:
        pool = self._require()
        async with pool.acquire() as conn:
            yield _PgConnection(conn)

    async def migrate(self) -> list[str]:
        # One migrator at a time across processes.
        pool = self._require()
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(7461636)")
            try:
                return await super().migrate()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(7461636)")

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool


def _lead_key(name: str) -> int:
    """A stable signed 32-bit key for a leader's name."""
    value = zlib.crc32(name.encode())
    return value - (1 << 32) if value >= (1 << 31) else value


async def _quietly_close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), _LEAD_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()
