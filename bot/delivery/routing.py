"""Where a delivery goes next: failover, re-routing around a provider that is down, and
escalation of unacknowledged deliveries. It decides; the statements it reads come from
:class:`bot.delivery.statements.StatementSource`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from bot.delivery.statements import StatementSource
from bot.domain.audiences import new_follow_up, next_untried_channel, statement_kind_for
from bot.domain.models import ChannelName, Delivery, NewDelivery, Statement
from bot.ports import Store


class Router:
    """Finds the next channel for a recipient and the statement to send there."""

    def __init__(
        self,
        store: Store,
        statements: StatementSource,
        usable: Iterable[ChannelName],
        is_down: Callable[[ChannelName, str], bool],
    ) -> None:
        self.store = store
        self.statements = statements
        self.usable = frozenset(usable)
        self.is_down = is_down

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
        event = await self.statements.event_statements(delivery)
        statement = self.statement_like(delivery, channel, event)
        return None if statement is None else new_follow_up(delivery, channel, statement.id, now)

    async def escalation(self, delivery: Delivery, now: datetime) -> NewDelivery | None:
        """The escalation of an unacknowledged delivery, on the policy's escalation channel."""
        via = delivery.policy.escalate_via
        if via is None or not delivery.contacts.get(via.value) or via not in self.usable:
            return None
        event = await self.statements.event_statements(delivery)
        statement = self.statement_like(delivery, via, event)
        if statement is None:
            return None
        return new_follow_up(delivery, via, statement.id, now, escalation=True)
