"""Shared fixtures: real-server requirements, the network guard, stores."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

# What every entry point does through the configuration: make the channels known to the
# domain (masking, audiences, rendering formats), so that a domain test may run alone.
import bot.channels.registry  # noqa: F401
from tests.pg_cluster import ThrowawayCluster
from tests.pg_cluster import free_port as pg_free_port

os.environ.setdefault("PTB_TIMEDELTA", "true")

# Every log line of the whole suite is scanned for phone numbers, addresses and secrets.
pytest_plugins = ["tests.log_capture"]

IN_CI = os.environ.get("CI", "").lower() == "true"


# --- The event loop of the in-process tests ----------------------------------------------------
# `tocsin serve` and `tocsin worker` run on uvloop by default (server.event_loop), so every
# drill that starts them runs on it. TOCSIN_TEST_EVENT_LOOP=uvloop runs the in-process tests on
# it too (the whole suite was run both ways before uvloop became the default).
if os.environ.get("TOCSIN_TEST_EVENT_LOOP") == "uvloop":

    def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


# --- PostgreSQL: the one place the suite's server address is decided ------------------------
# TOCSIN_TEST_PG when set; else the machine's server on 127.0.0.1:5432 (PGPORT) when it lets
# `postgres` in without a password; else a throwaway cluster of the suite's own
# (tests/pg_cluster.py), started on first use: nothing depends on the machine's pg_hba.conf.
MACHINE_PG_URL = f"postgresql://postgres@127.0.0.1:{os.environ.get('PGPORT', '5432')}/postgres"


def _trusted(url: str) -> bool:
    import asyncio

    import asyncpg

    async def attempt() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except Exception:  # refused, no such server, or a password/peer rule: not trusted
            return False
        await conn.close()
        return True

    return asyncio.run(attempt())


_THROWAWAY: ThrowawayCluster | None = None
if "TOCSIN_TEST_PG" in os.environ:
    PG_ADMIN_URL = os.environ["TOCSIN_TEST_PG"]
elif _trusted(MACHINE_PG_URL):
    PG_ADMIN_URL = MACHINE_PG_URL
else:
    _THROWAWAY = ThrowawayCluster(pg_free_port())
    PG_ADMIN_URL = _THROWAWAY.admin_url


def require(condition: bool, what: str) -> None:
    """Skip when a real server is missing, but fail on CI, where it must be there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required on CI (CI=true) but is not available")
    pytest.skip(f"{what} not available")


def _loopback(address: Any) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str | bytes) and not isinstance(address, tuple):
        return True  # AF_UNIX paths (the local PostgreSQL socket)
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def _no_real_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that tries to reach a host other than this machine."""
    original = socket.socket.connect
    original_ex = socket.socket.connect_ex

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            raise AssertionError(f"test tried to reach the real network: {address!r}")
        return original(self, address)

    def guarded_ex(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            raise AssertionError(f"test tried to reach the real network: {address!r}")
        return original_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_ex)


async def _pg_available() -> bool:
    import asyncio

    import asyncpg

    if _THROWAWAY is not None and not await asyncio.to_thread(_THROWAWAY.start):
        return False

    try:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    async with pg_database() as url:
        yield url


@asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """Create a fresh database, yield its URL, drop it (CI fails if PostgreSQL is missing)."""
    import asyncpg

    where = "a throwaway cluster" if _THROWAWAY is not None else PG_ADMIN_URL.split("@")[-1]
    if _THROWAWAY is not None and _THROWAWAY.problem:
        where += f" ({_THROWAWAY.problem})"
    require(await _pg_available(), f"PostgreSQL ({where})")
    name = f"tocsin_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
