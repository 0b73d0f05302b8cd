"""Acknowledgement tokens and gateway callback credentials, derived, never stored.

A delivery row keeps a random 128-bit *nonce* (the ``ack_token`` column). Neither the
acknowledgement token nor the gateway callback credential is stored: each is an HMAC-SHA256
of the delivery's id, nonce, channel and address under a per-deployment key (the
``auth.secret_key_env`` variable), with a distinct label per purpose, cut to 128 bits::

    <delivery id>.<base64url(HMAC(key, purpose | id | nonce | channel | address)[:16])>

So a copy of the database holds no working link, the worker recomputes the token it puts in
a message, a token only fits the delivery (channel and recipient) it was made for, and what
a gateway sees in a ``dlr-url`` or ``StatusCallback`` cannot acknowledge anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta

from bot.domain.models import Delivery, Incident, IncidentStatus

ACK = "ack"
CALLBACK = "callback"


class AckKeys:
    """Makes and checks the tokens of deliveries under one deployment key."""

    def __init__(self, key: bytes, ttl: timedelta = timedelta(days=7)) -> None:
        self._key = hashlib.sha256(b"tocsin-delivery-tokens:" + key).digest()
        # Keyed once; each token copies it (half the cost of keying HMAC every time).
        self._keyed = hmac.new(self._key, digestmod=hashlib.sha256)
        self.ttl = ttl

    def _mac(self, purpose: str, delivery: Delivery) -> str:
        message = "\x1f".join(
            (
                purpose,
                str(delivery.id),
                delivery.ack_token,
                delivery.channel.value,
                delivery.address,
            )
        ).encode()
        mac = self._keyed.copy()
        mac.update(message)
        digest = mac.digest()[:16]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def token(self, delivery: Delivery, purpose: str = ACK) -> str:
        """The token of ``delivery`` for ``purpose`` (``ack`` or ``callback``)."""
        return f"{delivery.id}.{self._mac(purpose, delivery)}"

    @staticmethod
    def delivery_id(token: str) -> int | None:
        """The delivery id a token names (not yet checked), or None when malformed."""
        head, dot, mac = token.partition(".")
        if not dot or not head.isdigit() or len(head) > 18 or not mac:
            return None
        return int(head)

    def matches(self, token: str, delivery: Delivery, purpose: str = ACK) -> bool:
        """True when ``token`` is this delivery's token for ``purpose`` (constant time)."""
        return hmac.compare_digest(token.encode(), self.token(delivery, purpose).encode())

    def expired(self, incident: Incident | None, now: datetime) -> bool:
        """An acknowledgement link expires ``ttl`` after its incident's resolution."""
        if incident is None:
            return True
        if incident.status != IncidentStatus.RESOLVED or incident.resolved_at is None:
            return False
        return now > incident.resolved_at + self.ttl

    @staticmethod
    def nonce_tag(delivery: Delivery) -> str:
        """A short, non-secret tag of the delivery's nonce (for idempotency keys)."""
        return hashlib.sha256(delivery.ack_token.encode()).hexdigest()[:8]
