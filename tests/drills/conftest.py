"""Fixtures the drills share: a queue on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.ports import Store
from bot.store import open_store
from tests.conftest import pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
    else:
        async with pg_database() as url:
            yield url


@pytest.fixture
async def store(storage_url: str) -> AsyncIterator[Store]:
    backend = open_store(storage_url)
    await backend.open()
    try:
        await backend.migrate()
        yield backend
    finally:
        await backend.close()
