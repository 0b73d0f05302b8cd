"""Rate-limit budgets shared by every worker of a deployment: one token bucket per key.

Each worker keeps its own small stash of tokens and refills it from the bucket row with one
atomic upsert per chunk (PostgreSQL's row lock, SQLite's write transaction serialise the
takers), so N workers together send no faster than the provider allows. A 429 pauses the
row for everyone.
"""

from __future__ import annotations

from typing import Any

from bot.store.sqlbase import SqlBase

# The level now: what was left plus the refill since the last take, capped at the burst.
# (A clock behind the last taker's refills nothing rather than taking tokens back.)
_LEVEL = (
    "(CASE WHEN ? > rate_buckets.updated_at THEN (CASE WHEN rate_buckets.tokens + "
    "(? - rate_buckets.updated_at) * ? > ? THEN ? ELSE rate_buckets.tokens + "
    "(? - rate_buckets.updated_at) * ? END) ELSE rate_buckets.tokens END)"
)
# The whole tokens of a level (never negative): the one expression the dialects spell apart.
_WHOLE = {"sqlite": "CAST({x} AS INTEGER)", "postgres": "FLOOR({x})"}
# What is granted: all that was asked for, else the whole tokens there are (none while paused).
_GRANT = (
    "(CASE WHEN rate_buckets.paused_until > ? THEN 0 WHEN {level} >= ? THEN ? ELSE {whole} END)"
)
_LATER = "CASE WHEN rate_buckets.{col} > ? THEN rate_buckets.{col} ELSE ? END"

_TAKE = """
INSERT INTO rate_buckets (key, tokens, updated_at, paused_until, last_taken)
VALUES (?, ?, ?, 0, ?)
ON CONFLICT (key) DO UPDATE SET
    last_taken = {grant},
    tokens = {level} - {grant},
    updated_at = {later}
RETURNING tokens, paused_until, last_taken
"""


def take_sql(dialect: str) -> str:
    """The take upsert in ``dialect``."""
    grant = _GRANT.format(level=_LEVEL, whole=_WHOLE[dialect].format(x=_LEVEL))
    return _TAKE.format(grant=grant, level=_LEVEL, later=_LATER.format(col="updated_at"))


_PAUSE = f"""
INSERT INTO rate_buckets (key, tokens, updated_at, paused_until, last_taken)
VALUES (?, 0, ?, ?, 0)
ON CONFLICT (key) DO UPDATE SET
    tokens = 0,
    updated_at = {_LATER.format(col="updated_at")},
    paused_until = {_LATER.format(col="paused_until")}
"""


def _level_args(rate: float, burst: float, now: float) -> tuple[float, ...]:
    return (now, now, rate, burst, burst, now, rate)


def _grant_args(rate: float, burst: float, want: int, now: float) -> tuple[Any, ...]:
    level = _level_args(rate, burst, now)
    return (now, *level, want, want, *level)


def granted_of(level: float, want: int, paused: bool) -> int:
    """The grant rule of the upsert, for stores without SQL."""
    return 0 if paused else want if level >= want else max(0, int(level))


def grant_size(want: int, burst: float) -> int:
    """A take asks for at least one token and never more than the bucket can hold."""
    return max(1, min(int(want), int(burst)))


def wait_after(granted: int, tokens: float, paused_until: float, rate: float, now: float) -> float:
    """Seconds until the bucket can grant a token again (0 when this take got some)."""
    if granted > 0:
        return 0.0
    if paused_until > now:
        return paused_until - now
    return max(1.0 - tokens, 0.0) / rate or 1.0 / rate


class SqlBuckets(SqlBase):
    """The rate-limit half of the Store contract."""

    async def take_tokens(
        self, key: str, rate: float, burst: float, want: int, now: float
    ) -> tuple[int, float]:
        want = grant_size(want, burst)
        rate, burst = float(rate), float(burst)
        args = (
            key,
            burst - want,
            now,
            float(want),
            *_grant_args(rate, burst, want, now),
            *_level_args(rate, burst, now),
            *_grant_args(rate, burst, want, now),
            now,
            now,
        )
        async with self.transaction() as conn:
            [row] = await conn.fetch(take_sql(self.dialect), *args)
        granted = int(row["last_taken"])
        return granted, wait_after(granted, row["tokens"], row["paused_until"], rate, now)

    async def pause_bucket(self, key: str, until: float) -> None:
        async with self.transaction() as conn:
            await conn.execute(_PAUSE, key, until, until, until, until, until, until)
