"""Where a delivery goes next: failover, re-routing around a provider that is down, and
escalation of unacknowledged deliveries. Also the statement cache these decisions need."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from bot.domain.audiences import new_follow_up, next_untried_channel, statement_kind_for
from bot.domain.models import ChannelName, Delivery, NewDelivery, Statement
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


class Router:
    """Finds the next channel for a recipient and the statement to send there."""

    def __init__(
        self,
        store: Store,
        usable: Iterable[ChannelName],
        is_down: Callable[[ChannelName, str], bool],
        *,
        cache_size: int = 10_000,
    ) -> None:
        self.store = store
        self.usable = frozenset(usable)
        self.is_down = is_down
        self.statements = StatementCache(cache_size)
        # The statements of recent events, whole (a failover needs its event's other kinds).
        self._events: OrderedDict[tuple[str, int], list[Statement]] = OrderedDict()
        self._events_bound = max(1, min(256, cache_size))

    async def load(self, statement_ids: Iterable[str]) -> None:
        """Cache and pin the statements of claimed deliveries, one pin per delivery; each
        delivery unpins its statement with :meth:`done` once its outcome is decided."""
        wanted = list(statement_ids)
        for statement_id in wanted:
            self.statements.pin(statement_id)  # before loading: nothing pinned is evicted
        missing = {i for i in wanted if i not in self.statements}
        if missing:
            for statement in await self.store.get_statements(sorted(missing)):
                self.statements.put(statement)

    def done(self, statement_id: str) -> None:
        """A delivery whose statement was pinned by :meth:`load` no longer needs it."""
        self.statements.unpin(statement_id)

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

    def statement_like(
        self, delivery: Delivery, channel: ChannelName, event: Iterable[Statement] = ()
    ) -> Statement | None:
        """The statement of the same event for another channel (SMS takes the short one)."""
        current = self.statements.get(delivery.statement_id)
        if current is None:
            current = next((s for s in event if s.id == delivery.statement_id), None)
        if current is not None and current.event == "correction":
            return current  # a correction carries its own SMS wording
        kind = statement_kind_for(channel, delivery.policy.kind)
        candidates = [
            s
            for s in event
            if s.incident_id == delivery.incident_id
            and s.seq == delivery.seq
            and s.kind == kind
            and s.locale == delivery.locale
        ]
        return max(candidates, key=lambda s: s.version) if candidates else None

    async def next_hop(
        self, delivery: Delivery, now: datetime, *, avoid_down: bool
    ) -> NewDelivery | None:
        """The same person on the next channel of their policy not yet tried (wrapping round
        the policy order), skipping providers that are down when ``avoid_down``."""
        if not delivery.is_member:
            return None
        tried = await self.store.chain_channels(delivery.root_id or delivery.id)
        channel = next_untried_channel(
            delivery, tried, self.usable, self.is_down if avoid_down else None
        )
        if channel is None:
            return None
        event = await self.event_statements(delivery)
        statement = self.statement_like(delivery, channel, event)
        return None if statement is None else new_follow_up(delivery, channel, statement.id, now)

    async def escalation(self, delivery: Delivery, now: datetime) -> NewDelivery | None:
        """The escalation of an unacknowledged delivery, on the policy's escalation channel."""
        via = delivery.policy.escalate_via
        if via is None or not delivery.contacts.get(via.value) or via not in self.usable:
            return None
        event = await self.event_statements(delivery)
        statement = self.statement_like(delivery, via, event)
        if statement is None:
            return None
        return new_follow_up(delivery, via, statement.id, now, escalation=True)
