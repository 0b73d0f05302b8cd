"""The named SQL of the delivery queue (``bot/store/sql/queries/<name>.sql``), read once.

One text serves SQLite and PostgreSQL (``?`` placeholders; the PostgreSQL driver rewrites
them) except the claim, whose PostgreSQL form skips rows locked by another worker:
``claim_due.sqlite`` and ``claim_due.postgres``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def query(name: str) -> str:
    """The text of the named query."""
    folder = resources.files("bot.store").joinpath("sql", "queries")
    return folder.joinpath(f"{name}.sql").read_text(encoding="utf-8")
