"""The seams between the domain and the outside world: protocols only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from bot.domain.models import (
    Attempt,
    ChannelName,
    Delivery,
    DeliveryState,
    Incident,
    NewDelivery,
    Outcome,
    Statement,
    TimelineEntry,
)


class Clock(Protocol):
    """Source of the current time (UTC, aware)."""

    def now(self) -> datetime: ...


@dataclass(frozen=True)
class OutboundMessage:
    """Everything a channel needs to send one delivery.

    ``bodies`` are the statement's renderings by format (``subject``, ``text``, ``html``,
    ``slack``, ``telegram``, ``sms``); ``ack_url`` is set when an acknowledgement is required
    and the channel has no button of its own; ``ack_token`` is the opaque, unguessable
    reference a button or link carries back; ``callback_token`` is what a gateway's delivery
    report carries back (never the acknowledgement token: gateway logs keep it).
    """

    delivery_id: int
    channel: ChannelName
    address: str
    recipient: str
    locale: str
    bodies: Mapping[str, str]
    require_ack: bool
    ack_token: str
    ack_url: str | None = None
    status_url: str | None = None
    idempotency_key: str = ""
    callback_token: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    # How many attempts came before this one, and since when the delivery exists: a
    # non-idempotent provider reconciles a retry with what it may already have accepted.
    attempt: int = 0
    queued_at: datetime | None = None


@dataclass(frozen=True)
class StoredSession:
    """A logged-in dashboard session as the server keeps it: the digest of the browser's
    random id, the API token it was opened with (checked against the configured tokens on
    every request), its CSRF token and its lifetime."""

    digest: str
    token_name: str
    csrf: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class Receipt:
    """A provider's acceptance of a message: its id and how far it got (sent or delivered)."""

    provider_id: str | None
    state: DeliveryState = DeliveryState.SENT
    code: str | None = None


@runtime_checkable
class Channel(Protocol):
    """One outbound channel (e-mail, webhook, Slack, Telegram, SMS).

    ``send`` returns a :class:`Receipt` or raises ``TransientError``, ``PermanentError`` or
    ``UnknownOutcome`` from :mod:`bot.domain.errors`. Limits are class attributes: ``rate`` and
    ``burst`` for the whole provider, ``destination_rate``/``destination_burst`` per address.
    """

    name: ChannelName
    rate: float
    burst: int
    destination_rate: float | None
    destination_burst: int

    async def send(self, message: OutboundMessage) -> Receipt: ...

    async def close(self) -> None: ...

    def provider_key(self, address: str) -> str:
        """The health/rate scope an address belongs to (e.g. a webhook's host)."""
        ...


@dataclass
class Changes:
    """One atomic write: what a domain service decided, committed in a single transaction."""

    incident: Incident | None = None
    new_incident: bool = False
    timeline: list[TimelineEntry] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)
    statement_updates: list[Statement] = field(default_factory=list)
    deliveries: list[NewDelivery] = field(default_factory=list)


@dataclass(frozen=True)
class Page:
    """Paging for list queries."""

    limit: int = 1000
    offset: int = 0


FIRST_PAGE = Page()


class Store(Protocol):
    """Persistence, and the delivery work queue. One contract suite runs against every backend."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied."""
        ...

    async def ping(self) -> bool: ...

    async def commit(self, changes: Changes) -> None:
        """Write ``changes`` atomically (a unique-key clash raises ``Conflict``)."""
        ...

    async def next_incident_number(self, prefix: str) -> int: ...

    async def get_incident(self, incident_id: str) -> Incident | None: ...

    async def find_incident_by_source(self, source: str, key: str) -> Incident | None: ...

    async def list_incidents(self, page: Page = FIRST_PAGE) -> list[Incident]: ...

    async def timeline(self, incident_id: str) -> list[TimelineEntry]: ...

    async def statements(self, incident_id: str) -> list[Statement]: ...

    async def get_statement(self, statement_id: str) -> Statement | None: ...

    async def get_statements(self, ids: Sequence[str]) -> list[Statement]: ...

    async def deliveries(self, incident_id: str, page: Page = FIRST_PAGE) -> list[Delivery]: ...

    async def delivery_counts(self, incident_id: str) -> dict[str, int]: ...

    async def delivery_matrix(self, incident_id: str) -> list[tuple[str, str, str, int]]:
        """Counts by (audience, channel, state)."""
        ...

    async def get_delivery(self, delivery_id: int) -> Delivery | None: ...

    async def attempts(self, delivery_ids: Sequence[int]) -> dict[int, list[Attempt]]: ...

    async def claim_due(
        self, worker: str, now: datetime, lease_seconds: float, limit: int
    ) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries (queued/retrying due, or sending with an expired
        lease) to ``worker`` and mark them ``sending``."""
        ...

    async def record(self, outcomes: Sequence[Outcome]) -> int:
        """Apply outcomes (state, attempt row, follow-up delivery) in one transaction; an
        outcome whose delivery moved on meanwhile (acknowledged, cancelled, reported delivered)
        keeps that state but gets its attempt row. Returns the number of follow-ups queued."""
        ...

    async def release(self, delivery_ids: Sequence[int], worker: str, at: datetime) -> None:
        """Give leased deliveries back to the queue, due at ``at``, without counting an attempt."""
        ...

    async def advance(
        self,
        delivery_id: int,
        state: DeliveryState,
        attempt_outcome: str,
        at: datetime,
        code: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Move a delivery forward on a provider callback (never backwards); True if it moved."""
        ...

    async def find_by_ack_token(self, token: str) -> Delivery | None: ...

    async def find_by_provider_id(self, channel: str, provider_id: str) -> Delivery | None: ...

    async def latest_ack_pending(self, channel: str, address: str) -> Delivery | None: ...

    async def remember_inbound(self, message_key: str, at: datetime) -> bool:
        """Record an inbound message by its key; False if that key was already recorded."""
        ...

    async def open_session(self, session: StoredSession) -> None:
        """Keep a new dashboard session (by the digest of its id)."""
        ...

    async def find_session(self, digest: str) -> StoredSession | None: ...

    async def revoke_session(self, digest: str, at: datetime) -> None:
        """End a dashboard session (logout); revoking twice changes nothing."""
        ...

    async def acknowledge(self, delivery_id: int, by: str, at: datetime) -> bool:
        """Acknowledge a delivery and settle the rest of its recipient chain; False if it was
        already acknowledged (idempotent) or cannot be."""
        ...

    async def due_escalations(self, now: datetime, limit: int) -> list[Delivery]: ...

    async def mark_escalated(self, delivery_id: int, follow_up: NewDelivery) -> bool:
        """Flag a delivery as escalated and queue ``follow_up``, once; False if already done
        or acknowledged meanwhile."""
        ...

    async def pending_count(self, incident_id: str | None = None) -> int: ...

    async def chain_channels(self, root_id: int) -> set[str]:
        """Channels already used for one recipient's chain (original, failovers, escalations)."""
        ...

    async def save_health(
        self, name: str, state: str, since: datetime, detail: str | None
    ) -> None: ...

    async def channel_health(self) -> list[tuple[str, str, datetime, str | None]]:
        """(provider, state, since, detail) as the workers last recorded it."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may be due (a commit here, a NOTIFY elsewhere) or after
        ``timeout`` seconds, whichever comes first."""
        ...
