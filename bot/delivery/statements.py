"""The statements the worker sends: loaded once per batch, kept in a bounded cache, and pinned
while a delivery that needs them is under way; the last few events are kept whole for the
router's failovers and escalations."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator

from bot.domain.models import Delivery, Statement
from bot.ports import Store


class StatementCache:
    """Statements by id (immutable per id), least recently used first, within ``bound``.

    A statement pinned by a delivery being sent is never evicted, so a batch never loses its
    statements to another batch's loading; the cache may exceed its bound by what is pinned.
    """

    def __init__(self, bound: int = 10_000) -> None:
        self.bound = max(1, bound)
        self._entries: OrderedDict[str, Statement] = OrderedDict()
        self._pins: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, statement_id: object) -> bool:
        return statement_id in self._entries

    def get(self, statement_id: str) -> Statement | None:
        statement = self._entries.get(statement_id)
        if statement is not None:
            self._entries.move_to_end(statement_id)
        return statement

    def values(self) -> Iterator[Statement]:
        return iter(list(self._entries.values()))

    def put(self, statement: Statement) -> None:
        self._entries[statement.id] = statement
        self._entries.move_to_end(statement.id)
        self._evict()

    def pin(self, statement_id: str) -> None:
        self._pins[statement_id] += 1

    def unpin(self, statement_id: str) -> None:
        self._pins[statement_id] -= 1
        if self._pins[statement_id] <= 0:
            del self._pins[statement_id]
        self._evict()

    def _evict(self) -> None:
        if len(self._entries) <= self.bound:
            return
        for statement_id in list(self._entries):
            if len(self._entries) <= self.bound:
                return
            if statement_id not in self._pins:
                del self._entries[statement_id]


class StatementSource:
    """Loads statements from the store and keeps them in a :class:`StatementCache`."""

    def __init__(self, store: Store, cache_size: int = 10_000) -> None:
        self.store = store
        self.cache = StatementCache(cache_size)
        # The statements of recent events, whole (a failover needs its event's other kinds).
        self._events: OrderedDict[tuple[str, int], list[Statement]] = OrderedDict()
        self._events_bound = max(1, min(256, cache_size))

    def __len__(self) -> int:
        return len(self.cache)

    def get(self, statement_id: str) -> Statement | None:
        """A cached statement (loaded by :meth:`load`), or None."""
        return self.cache.get(statement_id)

    async def load(self, statement_ids: Iterable[str]) -> None:
        """Cache and pin the statements of claimed deliveries, one pin per delivery; each
        delivery unpins its statement with :meth:`done` once its outcome is decided."""
        wanted = list(statement_ids)
        for statement_id in wanted:
            self.cache.pin(statement_id)  # before loading: nothing pinned is evicted
        missing = {i for i in wanted if i not in self.cache}
        if missing:
            for statement in await self.store.get_statements(sorted(missing)):
                self.cache.put(statement)

    def done(self, statement_id: str) -> None:
        """A delivery whose statement was pinned by :meth:`load` no longer needs it."""
        self.cache.unpin(statement_id)

    async def event_statements(self, delivery: Delivery) -> list[Statement]:
        """The statements of a delivery's event (e.g. the SMS one), for a failover or an
        escalation; the last few events are kept whole."""
        key = (delivery.incident_id, delivery.seq)
        event = self._events.get(key)
        if event is None:
            found = await self.store.statements(delivery.incident_id)
            event = [s for s in found if s.seq == delivery.seq]
            self._events[key] = event
            while len(self._events) > self._events_bound:
                self._events.popitem(last=False)
        self._events.move_to_end(key)
        return event
