"""Acknowledgements and provider delivery reports.

A person confirms reading through a link, a button or an "OK" reply; a provider reports that
a message was delivered or failed. States only move forward, and a failure report of a
person's message fails over to their next channel.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from bot.domain.ack_tokens import ACK, CALLBACK, AckKeys
from bot.domain.audiences import new_follow_up, next_untried_channel, statement_kind_for
from bot.domain.errors import NotFound
from bot.domain.models import ChannelName, Delivery, DeliveryState
from bot.ports import Changes, Clock, Store

REPLY_CLOCK_SLACK = timedelta(minutes=1)


class Acknowledgements:
    """Acknowledgements and reports, over the store, the clock and the token keys."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        tokens: AckKeys,
        usable_channels: frozenset[ChannelName] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.tokens = tokens
        self.usable_channels = usable_channels

    async def find(self, token: str, purpose: str = ACK) -> Delivery | None:
        """The delivery whose ``purpose`` token this is, or None (unknown, forged, made for
        another purpose, or expired: ``delivery.ack_ttl`` after the incident's resolution)."""
        delivery_id = self.tokens.delivery_id(token)
        delivery = await self.store.get_delivery(delivery_id) if delivery_id else None
        if delivery is None or not self.tokens.matches(token, delivery, purpose):
            return None
        if purpose == ACK:
            incident = await self.store.get_incident(delivery.incident_id)
            if self.tokens.expired(incident, self.clock.now()):
                return None
        return delivery

    async def by_token(self, token: str, by: str) -> Delivery:
        """Acknowledge the delivery behind an acknowledgement token; pressing twice changes
        nothing."""
        delivery = await self.find(token)
        if delivery is None:
            raise NotFound("unknown or expired acknowledgement link")
        await self.store.acknowledge(delivery.id, by, self.clock.now())
        refreshed = await self.store.get_delivery(delivery.id)
        assert refreshed is not None
        return refreshed

    async def by_reply(
        self, channel: ChannelName, address: str, by: str, written_at: datetime | None = None
    ) -> Delivery | None:
        """An "OK" reply from a known address acknowledges that person's latest pending
        delivery on that channel; None when there is nothing to acknowledge. A reply written
        (``written_at``, when the provider says) before that delivery was sent answers an
        earlier message, not this one: it acknowledges nothing."""
        delivery = await self.store.latest_ack_pending(channel.value, address)
        if delivery is None:
            return None
        if written_at is not None:
            sent = [
                a.at
                for a in (await self.store.attempts([delivery.id]))[delivery.id]
                if a.outcome in ("sent", "delivered")
            ]
            # Provider clocks are coarse (whole seconds) and may drift: a minute's grace.
            if sent and min(sent) > written_at + REPLY_CLOCK_SLACK:
                return None
        await self.store.acknowledge(delivery.id, by, self.clock.now())
        return await self.store.get_delivery(delivery.id)

    async def report(
        self,
        token: str,
        state: DeliveryState,
        *,
        outcome: str,
        code: str | None = None,
        error: str | None = None,
    ) -> Delivery | None:
        """A provider's delivery report (SMS DLR, status callback), carrying the delivery's
        callback credential (never its acknowledgement token)."""
        delivery = await self.find(token, CALLBACK)
        if delivery is None:
            return None
        now = self.clock.now()
        moved = await self.store.advance(delivery.id, state, outcome, now, code, error)
        if moved and state == DeliveryState.FAILED and delivery.is_member:
            await self._fail_over(delivery, now)
        return await self.store.get_delivery(delivery.id)

    async def _fail_over(self, delivery: Delivery, now: datetime) -> None:
        tried = await self.store.chain_channels(delivery.root_id or delivery.id)
        channel = next_untried_channel(delivery, tried, self.usable_channels)
        if channel is None:
            return
        kind = statement_kind_for(channel, delivery.policy.kind)
        same_event = [
            s
            for s in await self.store.statements(delivery.incident_id)
            if s.seq == delivery.seq and s.kind == kind and s.locale == delivery.locale
        ]
        if same_event:
            statement = max(same_event, key=lambda s: s.version)
            follow_up = new_follow_up(delivery, channel, statement.id, now)
            await self.store.commit(Changes(deliveries=[follow_up]))
