"""Where a delivery goes next: failover, re-routing around a provider that is down, and
escalation of unacknowledged deliveries. Also the statement cache these decisions need."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from bot.domain.audiences import new_follow_up, next_untried_channel, statement_kind_for
from bot.domain.models import ChannelName, Delivery, NewDelivery, Statement
from bot.ports import Store


class Router:
    """Finds the next channel for a recipient and the statement to send there."""

    def __init__(
        self,
        store: Store,
        usable: Iterable[ChannelName],
        is_down: Callable[[ChannelName, str], bool],
    ) -> None:
        self.store = store
        self.usable = frozenset(usable)
        self.is_down = is_down
        self.statements: dict[str, Statement] = {}
        self._events: set[tuple[str, int]] = set()

    async def load(self, statement_ids: Iterable[str]) -> None:
        """Cache the statements of claimed deliveries (immutable per id)."""
        missing = set(statement_ids) - self.statements.keys()
        if missing:
            for statement in await self.store.get_statements(sorted(missing)):
                self.statements[statement.id] = statement
        if len(self.statements) > 10_000:
            self.statements.clear()
            self._events.clear()

    async def load_event(self, delivery: Delivery) -> None:
        """Make the other statements of a delivery's event available (e.g. the SMS one)."""
        key = (delivery.incident_id, delivery.seq)
        if key in self._events:
            return
        for statement in await self.store.statements(delivery.incident_id):
            self.statements[statement.id] = statement
        self._events.add(key)

    def statement_like(self, delivery: Delivery, channel: ChannelName) -> Statement | None:
        """The statement of the same event for another channel (SMS takes the short one)."""
        current = self.statements.get(delivery.statement_id)
        if current is not None and current.event == "correction":
            return current  # a correction carries its own SMS wording
        kind = statement_kind_for(channel, delivery.policy.kind)
        candidates = [
            s
            for s in self.statements.values()
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
        await self.load_event(delivery)
        tried = await self.store.chain_channels(delivery.root_id or delivery.id)
        channel = next_untried_channel(
            delivery, tried, self.usable, self.is_down if avoid_down else None
        )
        if channel is None:
            return None
        statement = self.statement_like(delivery, channel)
        return None if statement is None else new_follow_up(delivery, channel, statement.id, now)

    async def escalation(self, delivery: Delivery, now: datetime) -> NewDelivery | None:
        """The escalation of an unacknowledged delivery, on the policy's escalation channel."""
        via = delivery.policy.escalate_via
        if via is None or not delivery.contacts.get(via.value) or via not in self.usable:
            return None
        await self.load_event(delivery)
        statement = self.statement_like(delivery, via)
        if statement is None:
            return None
        return new_follow_up(delivery, via, statement.id, now, escalation=True)
