"""From a claimed delivery to what a channel sends: the message and the buckets it passes."""

from __future__ import annotations

from bot.delivery.ratelimit import Limit
from bot.domain.ack_tokens import ACK, CALLBACK, AckKeys
from bot.domain.models import Delivery, Statement, assemble
from bot.ports import ALL_KEYS, Channel, MessageKey, OutboundMessage


def limits_for(channel: Channel, delivery: Delivery) -> list[Limit]:
    """The provider bucket, and the destination bucket when the channel limits each one."""
    limits = [
        Limit(f"provider:{channel.provider_key(delivery.address)}", channel.rate, channel.burst)
    ]
    rate: float | None = channel.destination_rate
    burst = channel.destination_burst
    per_destination = getattr(channel, "destination_limit", None)
    if rate and per_destination is not None:
        rate, burst = per_destination(delivery.address)  # e.g. Telegram groups: 20/min
    if rate:
        limits.append(Limit(destination_key(delivery), rate, burst))
    return limits


class Routes:
    """Each address's provider key and rate-limit buckets, worked out once: a fan-out sends
    to the same few providers thousands of times, and the buckets' keys and shapes depend
    only on the channel and the address. Bounded: past ``size`` addresses it starts over."""

    def __init__(self, size: int = 50_000) -> None:
        self._size = size
        self._known: dict[tuple[str, str], tuple[str, list[Limit]]] = {}

    def of(self, channel: Channel, delivery: Delivery) -> tuple[str, list[Limit]]:
        """``(provider key, limits)`` for ``delivery`` through ``channel``."""
        key = (delivery.channel, delivery.address)
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= self._size:
                self._known.clear()
            known = self._known[key] = (
                channel.provider_key(delivery.address),
                limits_for(channel, delivery),
            )
        return known


def destination_key(delivery: Delivery) -> str:
    """The rate-limit bucket of one chat, channel, number or URL."""
    return f"dest:{delivery.channel.value}:{delivery.address}"


def message_for(
    delivery: Delivery,
    statement: Statement,
    public_url: str,
    tokens: AckKeys | None = None,
    keys: frozenset[MessageKey] = ALL_KEYS,
) -> OutboundMessage:
    """The outbound message of one delivery, with, when it asks for one, its acknowledgement
    token recomputed from the deployment key (never stored), and the credentials ``keys``
    names (the channel's :attr:`~bot.ports.Channel.keys`): the gateway callback credential
    (recomputed too) and the idempotency key."""
    tokens = tokens or AckKeys(b"")
    bodies = statement.bodies
    require_ack = delivery.policy.require_ack and delivery.is_member
    ack_token = tokens.token(delivery, ACK) if require_ack else ""
    if require_ack and "sms_ack" in bodies:
        bodies = {**bodies, "sms": bodies["sms_ack"]}  # the SMS that asks for "OK"
    return assemble(
        OutboundMessage,
        {
            "delivery_id": delivery.id,
            "channel": delivery.channel,
            "address": delivery.address,
            "recipient": delivery.recipient,
            "locale": delivery.locale,
            "bodies": bodies,
            "require_ack": require_ack,
            "ack_token": ack_token,
            "ack_url": f"{public_url}/ack/{ack_token}" if require_ack else None,
            "status_url": public_url,
            "idempotency_key": (
                f"tocsin-{delivery.id}-{tokens.nonce_tag(delivery)}"
                if "idempotency_key" in keys
                else ""
            ),
            "callback_token": tokens.token(delivery, CALLBACK) if "callback_token" in keys else "",
            "labels": {
                "incident": delivery.incident_id,
                "audience": delivery.audience,
                "kind": statement.kind.value,
            },
            "attempt": delivery.attempts,
            "queued_at": delivery.created_at,
            "unknown_attempts": delivery.unknown_attempts,
        },
    )
