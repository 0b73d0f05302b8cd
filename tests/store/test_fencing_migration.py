"""Migration 0004 on a database written by an older release: ``require_ack`` and
``unknown_attempts`` are back-filled from what the rows already said."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.domain.models import ChannelName, DeliveryPolicy
from bot.store import rows
from bot.store.postgres import PostgresStore
from bot.store.sqlbase import _INSERT_INCIDENT, _INSERT_STATEMENT, _placeholders
from bot.store.sqlite import SqliteStore
from bot.store.sqlstore import SqlStore
from tests import factories as f
from tests.conftest import pg_database
from tests.store.test_schema import migration_names, only_migrations

BEFORE = "0004_fencing.sql"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "old.db")
    else:
        async with pg_database() as found:
            yield found


def store_for(url: str) -> SqlStore:
    return PostgresStore(url) if url.startswith("postgres") else SqliteStore(url)


async def test_back_fill_of_require_ack_and_unknown_attempts(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialect = "postgres" if url.startswith("postgres") else "sqlite"
    names = migration_names(dialect)
    older = names[: names.index(BEFORE)]
    changes = f.declaration(0)
    statement = changes.statements[0]
    ack = DeliveryPolicy(channels=(ChannelName.SMS,), require_ack=True)
    old_rows = [
        f.new_delivery(statement, "+33612345678", ChannelName.SMS, policy=ack),
        f.new_delivery(statement, "+33612345678", ChannelName.SMS),
    ]
    # The columns the older release wrote, with today's values for them.
    columns = rows.NEW_DELIVERY_COLUMNS[: rows.NEW_DELIVERY_COLUMNS.index("updated_at") + 1]
    with monkeypatch.context() as patch:
        only_migrations(patch, dialect, older, tmp_path / "release")
        store = store_for(url)
        await store.open()
        try:
            assert await store.migrate() == older
            async with store.transaction() as conn:
                assert changes.incident is not None
                await conn.execute(_INSERT_INCIDENT, *rows.incident_row(changes.incident))
                await conn.execute(_INSERT_STATEMENT, *rows.statement_row(statement))
                await conn.executemany(
                    f"INSERT INTO deliveries ({', '.join(columns)}) "
                    f"VALUES ({_placeholders(len(columns))})",
                    [rows.new_delivery_row(d, 0.0)[: len(columns)] for d in old_rows],
                )
                await conn.execute("UPDATE deliveries SET state = 'sent', due_at = NULL")
                await conn.executemany(
                    "INSERT INTO attempts (delivery_id, at, outcome) VALUES (?, ?, ?)",
                    [(2, 1.0, "unknown"), (2, 2.0, "unknown"), (2, 3.0, "sent"), (1, 1.0, "sent")],
                )
        finally:
            await store.close()
    store = store_for(url)
    await store.open()
    try:
        assert await store.migrate() == names[len(older) :]
        first, second = await store.deliveries(statement.incident_id)
        assert (first.unknown_attempts, second.unknown_attempts) == (0, 2)
        pending = await store.latest_ack_pending("sms", "+33612345678")
        assert pending is not None and pending.id == first.id  # the newer one needs no ack
    finally:
        await store.close()
