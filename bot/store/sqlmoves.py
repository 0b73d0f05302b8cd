"""Addresses a provider moved (a group that became a supergroup), in SQL."""

from __future__ import annotations

from datetime import datetime

import bot.store.rows as rows
from bot.store.sqlbase import SqlBase

# The first time of a move is kept when the same move is noted again (every send to the old
# address notes it); a move to yet another address replaces it.
_NOTE_MOVE = (
    "INSERT INTO address_moves (channel, old_address, new_address, at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (channel, old_address) DO UPDATE SET "
    "at = CASE WHEN address_moves.new_address = excluded.new_address "
    "THEN address_moves.at ELSE excluded.at END, new_address = excluded.new_address"
)


class SqlAddressMoves(SqlBase):
    """``note_address_moved`` and ``address_moves`` of the Store contract."""

    async def note_address_moved(self, channel: str, old: str, new: str, at: datetime) -> None:
        async with self.transaction() as conn:
            await conn.execute(_NOTE_MOVE, channel, old, new, at.timestamp())

    async def address_moves(self) -> list[tuple[str, str, str, datetime]]:
        found = await self._many("SELECT * FROM address_moves ORDER BY channel, old_address")
        return [
            (r["channel"], r["old_address"], r["new_address"], rows._dt(r["at"])) for r in found
        ]
