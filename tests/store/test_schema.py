"""The SQLite and PostgreSQL schemas are one schema, and each equals its migrations applied.

Both backends run the same SQL (``bot/store/sql*.py``), so their schemas must agree: the
same migrations, tables, columns in the same order, compatible types, the same nullability,
defaults, keys and indexes. Each is introspected from a real database after migrating.
The schema a database ends with must not depend on its history: migrating a fresh database,
running the migration files by hand, and upgrading from any earlier migration give the same.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from bot.store import rows
from bot.store.postgres import PostgresStore, to_dollar
from bot.store.sqlite import SqliteStore
from bot.store.sqlstore import SqlStore
from tests.conftest import pg_database

# Declared types by family: what a value of the column is, whatever the dialect calls it.
TYPE_FAMILIES = {
    "text": "text",
    "real": "real",
    "double precision": "real",
    "integer": "integer",
    "bigint": "integer",
    "smallint": "integer",
    "boolean": "integer",
}


@dataclass(frozen=True)
class Column:
    name: str
    family: str
    required: bool
    default: str | None


@dataclass(frozen=True)
class Index:
    table: str
    columns: tuple[str, ...]
    unique: bool
    partial: bool


@dataclass(frozen=True)
class Schema:
    """What the code relies on, in dialect-neutral terms."""

    columns: dict[str, tuple[Column, ...]]
    primary_keys: dict[str, tuple[str, ...]]
    unique: dict[str, frozenset[tuple[str, ...]]]
    indexes: dict[str, Index]
    migrations: tuple[str, ...]


def migration_names(dialect: str) -> list[str]:
    folder = resources.files("bot.store").joinpath("sql", dialect)
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))


def family(declared: str) -> str:
    base = re.sub(r"\(.*\)", "", declared).strip().lower()
    if base not in TYPE_FAMILIES:
        raise AssertionError(f"no known family for column type {declared!r}")
    return TYPE_FAMILIES[base]


def default(raw: str | None) -> str | None:
    """``'0'``, ``0`` and ``'0'::bigint`` are the same default."""
    if raw is None:
        return None
    return re.sub(r"::[\w ]+$", "", raw).strip("'() ")


# --- introspection ------------------------------------------------------------------------
def sqlite_schema(path: Path) -> Schema:
    db = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        columns: dict[str, tuple[Column, ...]] = {}
        keys: dict[str, tuple[str, ...]] = {}
        unique: dict[str, frozenset[tuple[str, ...]]] = {}
        indexes: dict[str, Index] = {}
        for table in tables:
            info = db.execute(f"PRAGMA table_info({table})").fetchall()
            columns[table] = tuple(
                Column(name, family(kind), bool(notnull) or pk > 0, default(dflt))
                for _, name, kind, notnull, dflt, pk in info
            )
            keys[table] = tuple(r[1] for r in sorted(info, key=lambda r: r[5]) if r[5] > 0)
            found = set()
            for _, name, is_unique, origin, partial in db.execute(
                f"PRAGMA index_list({table})"
            ).fetchall():
                cols = tuple(r[2] for r in db.execute(f"PRAGMA index_info({name})"))
                if origin == "u":
                    found.add(cols)
                elif origin == "c":
                    indexes[name] = Index(table, cols, bool(is_unique), bool(partial))
            unique[table] = frozenset(found)
        migrations = (
            tuple(r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY name"))
            if "schema_migrations" in tables
            else ()
        )
    finally:
        db.close()
    return Schema(columns, keys, unique, indexes, migrations)


async def postgres_schema(url: str) -> Schema:
    conn = await asyncpg.connect(url)
    try:
        info = await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "is_identity FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position"
        )
        columns: dict[str, tuple[Column, ...]] = {}
        for r in info:
            columns[r["table_name"]] = (
                *columns.get(r["table_name"], ()),
                Column(
                    r["column_name"],
                    family(r["data_type"]),
                    r["is_nullable"] == "NO",
                    default(r["column_default"]),
                ),
            )
        constraints = await conn.fetch("""
            SELECT t.relname AS table, c.contype::text AS kind, c.conindid AS index,
                   array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n
                         ORDER BY k.o) AS columns
            FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
            JOIN pg_namespace s ON s.oid = t.relnamespace
            WHERE s.nspname = 'public' AND c.contype IN ('p', 'u')""")
        keys = {r["table"]: tuple(r["columns"]) for r in constraints if r["kind"] == "p"}
        unique = {
            table: frozenset(
                tuple(r["columns"]) for r in constraints if r["kind"] == "u" and r["table"] == table
            )
            for table in columns
        }
        backing = {r["index"] for r in constraints}
        found = await conn.fetch("""
            SELECT i.oid, i.relname AS name, t.relname AS table, x.indisunique AS unique,
                   x.indpred IS NOT NULL AS partial,
                   array(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(n, o)
                         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n
                         ORDER BY k.o) AS columns
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace s ON s.oid = t.relnamespace
            WHERE s.nspname = 'public'""")
        indexes = {
            r["name"]: Index(r["table"], tuple(r["columns"]), r["unique"], r["partial"])
            for r in found
            if r["oid"] not in backing
        }
        migrations = (
            tuple(
                r["name"]
                for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
            )
            if "schema_migrations" in columns
            else ()
        )
    finally:
        await conn.close()
    return Schema(columns, keys, unique, indexes, migrations)


# --- building databases -------------------------------------------------------------------
def only_migrations(
    monkeypatch: pytest.MonkeyPatch, dialect: str, names: Sequence[str], folder: Path
) -> None:
    """Make the stores see just ``names`` of the packaged migrations (an older release)."""
    target = folder / "sql" / dialect
    target.mkdir(parents=True, exist_ok=True)
    source = resources.files("bot.store").joinpath("sql", dialect)
    for name in names:
        (target / name).write_text(
            source.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8"
        )
    monkeypatch.setattr(
        "bot.store.sqlbase.resources", SimpleNamespace(files=lambda _package: folder)
    )


async def migrated(store: SqlStore) -> list[str]:
    await store.open()
    try:
        return await store.migrate()
    finally:
        await store.close()


def by_hand_sqlite(path: Path) -> None:
    """Each migration file run as it is, in order, without the store."""
    db = sqlite3.connect(path)
    try:
        for name in migration_names("sqlite"):
            db.executescript(
                resources.files("bot.store")
                .joinpath("sql", "sqlite", name)
                .read_text(encoding="utf-8")
            )
    finally:
        db.close()


async def by_hand_postgres(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for name in migration_names("postgres"):
            await conn.execute(
                resources.files("bot.store")
                .joinpath("sql", "postgres", name)
                .read_text(encoding="utf-8")
            )
    finally:
        await conn.close()


def without_bookkeeping(schema: Schema) -> Schema:
    """The schema minus ``schema_migrations``, for databases migrated by hand."""
    return Schema(
        {t: c for t, c in schema.columns.items() if t != "schema_migrations"},
        {t: k for t, k in schema.primary_keys.items() if t != "schema_migrations"},
        {t: u for t, u in schema.unique.items() if t != "schema_migrations"},
        schema.indexes,
        (),
    )


# --- the checks ---------------------------------------------------------------------------
def test_both_dialects_have_the_same_migrations() -> None:
    names = migration_names("sqlite")
    assert names == migration_names("postgres")
    assert names
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", n) for n in names)
    numbers = [int(n[:4]) for n in names]
    assert numbers == list(range(1, len(names) + 1)), "migrations are numbered without gaps"


async def test_sqlite_schema_is_its_migrations_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = tmp_path / "fresh.db"
    assert await migrated(SqliteStore(str(fresh))) == migration_names("sqlite")
    assert await migrated(SqliteStore(str(fresh))) == []  # a second run changes nothing
    schema = sqlite_schema(fresh)
    assert schema.migrations == tuple(migration_names("sqlite"))

    by_hand_sqlite(tmp_path / "by_hand.db")
    assert without_bookkeeping(sqlite_schema(tmp_path / "by_hand.db")) == without_bookkeeping(
        schema
    )

    names = migration_names("sqlite")
    for done in range(len(names)):
        with monkeypatch.context() as patch:
            only_migrations(patch, "sqlite", names[:done], tmp_path / f"release{done}")
            older = tmp_path / f"upgraded{done}.db"
            assert await migrated(SqliteStore(str(older))) == names[:done]
        assert await migrated(SqliteStore(str(older))) == names[done:]
        assert sqlite_schema(older) == schema, f"upgrading from {names[:done]} differs"


@pytest.mark.postgres
async def test_postgres_schema_is_its_migrations_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pg_database() as url:
        assert await migrated(PostgresStore(url)) == migration_names("postgres")
        assert await migrated(PostgresStore(url)) == []
        schema = await postgres_schema(url)
    assert schema.migrations == tuple(migration_names("postgres"))

    async with pg_database() as url:
        await by_hand_postgres(url)
        assert without_bookkeeping(await postgres_schema(url)) == without_bookkeeping(schema)

    names = migration_names("postgres")
    for done in range(len(names)):
        async with pg_database() as url:
            with monkeypatch.context() as patch:
                only_migrations(patch, "postgres", names[:done], tmp_path / f"release{done}")
                assert await migrated(PostgresStore(url)) == names[:done]
            assert await migrated(PostgresStore(url)) == names[done:]
            assert await postgres_schema(url) == schema, f"upgrading from {names[:done]} differs"


@pytest.mark.postgres
async def test_sqlite_and_postgres_schemas_are_equivalent(tmp_path: Path) -> None:
    await migrated(SqliteStore(str(tmp_path / "q.db")))
    lite = sqlite_schema(tmp_path / "q.db")
    async with pg_database() as url:
        await migrated(PostgresStore(url))
        pg = await postgres_schema(url)
    assert sorted(lite.columns) == sorted(pg.columns), "the same tables"
    for table in lite.columns:
        assert lite.columns[table] == pg.columns[table], f"columns of {table}"
    assert lite.primary_keys == pg.primary_keys
    assert lite.unique == pg.unique
    assert lite.indexes == pg.indexes
    assert lite.migrations == pg.migrations


def test_the_code_writes_only_columns_that_exist(tmp_path: Path) -> None:
    """The column lists the SQL store writes name real columns (checked on SQLite; the test
    above holds PostgreSQL to the same columns)."""
    asyncio.run(migrated(SqliteStore(str(tmp_path / "q.db"))))
    schema = sqlite_schema(tmp_path / "q.db")
    written: dict[str, Any] = {
        "incidents": rows.INCIDENT_COLUMNS,
        "timeline": rows.TIMELINE_COLUMNS,
        "statements": rows.STATEMENT_COLUMNS,
        "deliveries": rows.NEW_DELIVERY_COLUMNS,
    }
    for table, names in written.items():
        missing = set(names) - {c.name for c in schema.columns[table]}
        assert not missing, f"{table}: the code writes unknown columns {sorted(missing)}"


def _plan_nodes(plan: Any) -> list[str]:
    """Every node type of a PostgreSQL JSON plan."""
    nodes = [plan["Node Type"]]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


@pytest.mark.postgres
async def test_postgres_claims_read_due_rows_in_order_from_an_index() -> None:
    """A claim takes the first due rows ``ORDER BY due_at, id``: an index must give them in
    that order. Otherwise every claim sorts every due row — 65 ms a claim with 100,000 rows
    due, most of one worker's time in a large fan-out."""
    async with pg_database() as url:
        await migrated(PostgresStore(url))
        conn = await asyncpg.connect(url)
        try:
            # As with a large table: an index path that gives the order wins, if there is one.
            for setting in ("enable_seqscan", "enable_bitmapscan"):
                await conn.execute(f"SET {setting} = off")
            explained = await conn.fetchval(
                "EXPLAIN (FORMAT JSON) " + to_dollar(PostgresStore.claim_sql),
                "w",
                1.0,
                1.0,
                1.0,
                1.0,
                50,
            )
        finally:
            await conn.close()
    nodes = _plan_nodes(json.loads(explained)[0]["Plan"])
    # An incremental sort is no better: one declaration's rows share one due time.
    assert not [n for n in nodes if "Sort" in n], f"the claim sorts the due rows: {nodes}"


def test_sqlite_claims_read_due_rows_in_order_from_an_index(tmp_path: Path) -> None:
    asyncio.run(migrated(SqliteStore(str(tmp_path / "q.db"))))
    due = SqliteStore.claim_sql.split("WHERE id IN (", 1)[1].split("\n)", 1)[0]
    db = sqlite3.connect(tmp_path / "q.db")
    try:
        plan = [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + due, (1.0, 50))]
    finally:
        db.close()
    assert not any("TEMP B-TREE" in step for step in plan), plan
