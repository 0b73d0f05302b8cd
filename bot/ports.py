"""The seams between the domain and the outside world: protocols only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

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

_EPOCH = datetime.fromtimestamp(0, UTC)


class Clock(Protocol):
    """Source of the current time (UTC, aware)."""

    def now(self) -> datetime: ...

    def timestamp(self) -> float:
        """``now()`` in epoch seconds."""
        ...


@dataclass(frozen=True)
class OutboundMessage:
    """Everything a channel needs to send one delivery.

    ``bodies`` are the statement's renderings by format (``subject``, ``text``, ``html``,
    ``slack``, ``telegram``, ``sms``); ``ack_url`` is set when an acknowledgement is required
    and the channel has no button of its own; ``ack_token`` is the opaque, unguessable
    reference a button or link carries back (empty when no acknowledgement is asked);
    ``callback_token`` is what a gateway's delivery report carries back (never the
    acknowledgement token: gateway logs keep it). ``callback_token`` and ``idempotency_key``
    are empty unless the channel names them in its ``keys``.
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
    # Earlier attempts that ended ``unknown`` (the request may have reached the provider): the
    # channel reconciles with the provider before sending again where the provider allows it.
    unknown_attempts: int = 0


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
    # Where the message went when the provider moved the address (a Telegram group upgraded to
    # a supergroup): the new address, for the operator and the record.
    moved_to: str | None = None


MessageKey = Literal["callback_token", "idempotency_key"]
ALL_KEYS: frozenset[MessageKey] = frozenset(("callback_token", "idempotency_key"))


@runtime_checkable
class Channel(Protocol):
    """One outbound channel (e-mail, webhook, Slack, Telegram, SMS).

    ``send`` returns a :class:`Receipt` or raises ``TransientError``, ``PermanentError`` or
    ``UnknownOutcome`` from :mod:`bot.domain.errors`. Limits are class attributes: ``rate`` and
    ``burst`` for the whole provider, ``destination_rate``/``destination_burst`` per address.
    ``keys`` names the derived credentials of :class:`OutboundMessage` the adapter reads
    (``callback_token``, ``idempotency_key``): only those are made for its messages (an HMAC
    and a hash each), and a channel is never handed a credential it has no use for.
    """

    name: ChannelName
    keys: frozenset[MessageKey]
    rate: float
    burst: int
    destination_rate: float | None
    destination_burst: int

    async def send(self, message: OutboundMessage) -> Receipt: ...

    async def close(self) -> None: ...

    def provider_key(self, address: str) -> str:
        """The health/rate scope an address belongs to (e.g. a webhook's host)."""
        ...


IDEMPOTENCY_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class IdempotencyKey:
    """A client's ``Idempotency-Key`` for one request: stored with the change it made.

    ``request_hash`` fingerprints the request (method, path, body): the same key with another
    request is refused. ``incident_id`` is filled in by the service that commits the change.
    """

    principal: str
    key: str
    request_hash: str
    created_at: datetime
    incident_id: str = ""


@dataclass(frozen=True)
class IdempotentAnswer:
    """What a request with an ``Idempotency-Key`` made, and the answer given (once saved)."""

    request_hash: str
    incident_id: str
    created_at: datetime
    status: int | None = None
    body: str | None = None


@dataclass(frozen=True)
class SiteQuorum:
    """One site of an open incident: how many of an audience's people (deputies aside)
    acknowledged, and whether the site was already escalated to its deputies."""

    incident_id: str
    site: str
    confirmed: int
    escalated: bool


@dataclass(frozen=True)
class ProgressMessage:
    """The incident channel's progress message of one incident (``ts`` empty: given up)."""

    incident_id: str
    channel: str
    ts: str
    last_text: str
    pending: int


@dataclass
class Changes:
    """One atomic write: what a domain service decided, committed in a single transaction."""

    incident: Incident | None = None
    new_incident: bool = False
    timeline: list[TimelineEntry] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)
    statement_updates: list[Statement] = field(default_factory=list)
    deliveries: list[NewDelivery] = field(default_factory=list)
    # Written first: a second request with the same key raises ``DuplicateRequest``.
    idempotency: IdempotencyKey | None = None

    @property
    def decided_at(self) -> datetime:
        """When the change was decided, on the deciding service's clock: its latest timeline
        entry, else the incident's last update, else the earliest of its deliveries."""
        if self.timeline:
            return max(e.at for e in self.timeline)
        if self.incident is not None:
            return self.incident.updated_at
        return min((d.next_attempt_at for d in self.deliveries), default=_EPOCH)


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

    async def next_incident_number(self, prefix: str) -> int:
        """Allocate the next number of a day's incident ids (never the same one twice)."""
        ...

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

    async def record(self, outcomes: Sequence[Outcome]) -> list[int]:
        """Apply outcomes (state, attempt rows, follow-up delivery) in one transaction, each
        only while its ``lease_owner`` still holds the row (fencing): a stale holder's outcome
        changes nothing and leaves no attempt row. An outcome whose delivery moved on meanwhile
        (acknowledged, cancelled, reported delivered) keeps that state but gets its attempt
        rows. The time written is the outcome's last attempt's. Returns the ids applied."""
        ...

    async def renew(
        self, owner: str, delivery_ids: Sequence[int], now: datetime, lease_seconds: float
    ) -> list[int]:
        """Extend ``owner``'s lease on these deliveries to ``now + lease_seconds`` (a renewed
        row is not due); returns the ids ``owner`` still holds (the others were taken)."""
        ...

    async def release(self, due: Sequence[tuple[int, datetime]], worker: str) -> None:
        """Give deliveries leased by ``worker`` (the lease owner) back to the queue, each
        ``(id, time)`` due at its own time, in one transaction, without counting an attempt;
        rows another owner holds are left alone."""
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

    async def mark_escalated(self, delivery_id: int, follow_up: NewDelivery, at: datetime) -> bool:
        """Flag a delivery as escalated (at ``at``) and queue ``follow_up``, once; False if
        already done or acknowledged meanwhile."""
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

    async def note_address_moved(self, channel: str, old: str, new: str, at: datetime) -> None:
        """Record that the provider moved ``old`` to ``new`` (a group upgraded to a
        supergroup); noting the same move again keeps its first time."""
        ...

    async def address_moves(self) -> list[tuple[str, str, str, datetime]]:
        """(channel, old address, new address, since) for every move noted."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may be due (a commit here, a NOTIFY elsewhere) or after
        ``timeout`` seconds, whichever comes first."""
        ...

    # --- coordination between processes (bot/store/sqlcoordination.py) -----------------
    async def try_lead(self, name: str, holder: str, now: datetime, ttl: float) -> bool:
        """True while ``holder`` leads ``name`` (one leader per deployment); call again at
        least every ``ttl`` seconds to keep leading."""
        ...

    async def resign(self, name: str, holder: str) -> None:
        """Give up leading ``name`` at once (an orderly shutdown)."""
        ...

    async def site_quorum(
        self, audience: str, deputies: Sequence[str], declared_before: datetime
    ) -> list[SiteQuorum]:
        """Per open incident declared before ``declared_before`` that reached ``audience``,
        per site of its deliveries to people other than ``deputies``: the number of those
        people who acknowledged, and whether the site was escalated."""
        ...

    async def idempotent_answer(
        self, principal: str, key: str, since: datetime
    ) -> IdempotentAnswer | None:
        """The request made with ``key`` by ``principal`` since ``since``, if any."""
        ...

    async def save_idempotent_answer(
        self, principal: str, key: str, status: int, body: str
    ) -> None: ...

    async def purge_idempotency_keys(self, before: datetime) -> int: ...

    async def progress_due(self, resolved_since: datetime) -> list[str]:
        """Incidents whose progress message may be behind: deliveries pending, a message last
        written while some were, every incident declared and not resolved before
        ``resolved_since`` (a fan-out may have started and ended between two looks)."""
        ...

    async def get_progress(self, incident_id: str) -> ProgressMessage | None: ...

    async def save_progress(self, message: ProgressMessage) -> None: ...
    async def take_tokens(
        self, key: str, rate: float, burst: float, want: int, now: float
    ) -> tuple[int, float]:
        """Take up to ``want`` tokens from the deployment-wide bucket ``key`` (``rate`` per
        second, holding at most ``burst``; created full on first use) at epoch ``now``.
        Returns ``(granted, wait_s)``: all that was asked for, else the whole tokens left;
        when none, the seconds until a token can be granted (it refills, or a pause ends)."""
        ...

    async def pause_bucket(self, key: str, until: float) -> None:
        """A provider answered 429: bucket ``key`` grants nothing before epoch ``until`` (for
        every worker) and refills from empty after it."""
        ...
