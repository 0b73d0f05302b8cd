"""Stores: the in-memory fake, SQLite (embedded default) and PostgreSQL, behind ``ports.Store``."""

from __future__ import annotations

from bot.ports import Store


def open_store(url: str) -> Store:
    """The store for a ``storage.url``: ``sqlite:///path``, ``postgresql://…`` or ``memory://``."""
    if url.startswith("memory:"):
        from bot.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        from bot.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///").removeprefix("sqlite://"))
    if url.startswith(("postgresql:", "postgres:")):
        from bot.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported storage url scheme: {url.split(':', 1)[0]!r}")
