"""Domain records. Frozen dataclasses: a change is a new record, written through the store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar


class Severity(StrEnum):
    """How bad an incident is."""

    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


class IncidentStatus(StrEnum):
    """Lifecycle of an incident: draft → investigating → identified → monitoring → resolved."""

    DRAFT = "draft"
    INVESTIGATING = "investigating"
    IDENTIFIED = "identified"
    MONITORING = "monitoring"
    RESOLVED = "resolved"


class StatementKind(StrEnum):
    """Audience-specific kinds of statement."""

    INTERNAL = "internal"
    DEPARTMENT_HEADS = "department_heads"
    PRESS = "press"
    PUBLIC = "public"
    SMS = "sms"


# Statements of these kinds need a second person's approval before they go out.
APPROVAL_KINDS = frozenset({StatementKind.PRESS, StatementKind.PUBLIC})


class StatementStatus(StrEnum):
    """Approval state of one statement version."""

    DRAFT = "draft"
    APPROVED = "approved"
    PUBLISHED = "published"
    SUPERSEDED = "superseded"


class DeliveryState(StrEnum):
    """Where one (statement, recipient, channel) delivery stands."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"
    RETRYING = "retrying"
    CANCELLED = "cancelled"


# The worker still has something to do for these.
PENDING_STATES = frozenset({DeliveryState.QUEUED, DeliveryState.SENDING, DeliveryState.RETRYING})
# Forward-only order of the success path; provider callbacks never move a delivery backwards.
PROGRESS_RANK: Mapping[DeliveryState, int] = {
    DeliveryState.QUEUED: 0,
    DeliveryState.RETRYING: 0,
    DeliveryState.SENDING: 1,
    DeliveryState.SENT: 2,
    DeliveryState.DELIVERED: 3,
    DeliveryState.ACKNOWLEDGED: 4,
    DeliveryState.FAILED: 5,
    DeliveryState.CANCELLED: 5,
}


class ChannelName(str):
    """An outbound channel's name: an open set, one per registered channel module
    (``bot/channels/registry.py``); the built-in ones are constants here. A plain string
    underneath, so that comparisons, dictionary keys, JSON and SQL see ``"sms"``; ``.value``
    is kept for code written when this was an enumeration."""

    __slots__ = ()

    EMAIL: ClassVar[ChannelName]
    WEBHOOK: ClassVar[ChannelName]
    SLACK: ClassVar[ChannelName]
    TELEGRAM: ClassVar[ChannelName]
    SMS: ClassVar[ChannelName]

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"ChannelName({str.__repr__(self)})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """In settings and API models a channel name must be a registered channel's."""
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            known_channel,
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"enum": list(registered_names()), "title": "ChannelName", "type": "string"}


# The registered channels' names, in registration order (kept by ``channel_facts``).
_REGISTERED: dict[str, None] = {}


def note_channel(name: str, *, known: bool = True) -> None:
    """Record (or, with ``known=False``, forget) a registered channel's name."""
    if known:
        _REGISTERED[str(name)] = None
    else:
        _REGISTERED.pop(str(name), None)


def registered_names() -> tuple[ChannelName, ...]:
    """Every registered channel's name, in registration order."""
    if not _REGISTERED:
        raise LookupError("no channel is registered: import bot.channels.registry first")
    return tuple(ChannelName(name) for name in _REGISTERED)


def known_channel(value: str) -> ChannelName:
    """``value`` as a channel name, when a channel of that name is registered (settings, API)."""
    names = registered_names()
    if value not in names:
        from pydantic_core import PydanticCustomError

        quoted = [f"'{name}'" for name in names]
        expected = ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
        raise PydanticCustomError("enum", "Input should be {expected}", {"expected": expected})
    return ChannelName(value)


ChannelName.EMAIL = ChannelName("email")
ChannelName.WEBHOOK = ChannelName("webhook")
ChannelName.SLACK = ChannelName("slack")
ChannelName.TELEGRAM = ChannelName("telegram")
ChannelName.SMS = ChannelName("sms")


class Role(StrEnum):
    """Who may do what. ``viewer`` < ``responder`` < ``admin``; ``press`` approves statements."""

    VIEWER = "viewer"
    RESPONDER = "responder"
    ADMIN = "admin"
    PRESS = "press"
    # Machine credentials, each good for one route only: Alertmanager's (draft incidents
    # through the alert webhook) and Prometheus's (``/metrics``).
    ALERTS = "alerts"
    METRICS = "metrics"


ROLE_RANK: Mapping[Role, int] = {
    Role.VIEWER: 0,
    Role.PRESS: 1,
    Role.RESPONDER: 1,
    Role.ADMIN: 2,
    Role.ALERTS: -1,
    Role.METRICS: -1,
}


@dataclass(frozen=True)
class Actor:
    """An authenticated person or system acting on Tocsin."""

    name: str
    role: Role
    # A person with several credentials (a press token, a responder Slack account) acting
    # from the CLI holds each of their roles, and no other.
    also: tuple[Role, ...] = ()

    def can(self, needed: Role) -> bool:
        """True when this actor holds ``needed`` (admin holds every role)."""
        return any(_holds(role, needed) for role in (self.role, *self.also))


def _holds(role: Role, needed: Role) -> bool:
    """True when one role holds ``needed`` (admin holds every role)."""
    if role == Role.ADMIN or role == needed:
        return True
    if role in (Role.ALERTS, Role.METRICS):
        return False  # a machine credential does its one thing only
    if needed == Role.ALERTS:
        return role == Role.RESPONDER
    if needed == Role.METRICS:
        return True  # whoever may read the dashboard may read the metrics
    if needed == Role.PRESS:
        return False
    if role == Role.PRESS:
        return needed == Role.VIEWER
    return ROLE_RANK[role] >= ROLE_RANK[needed]


@dataclass(frozen=True)
class Incident:
    """An outage being communicated."""

    id: str
    title: str
    systems: tuple[str, ...]
    unaffected: tuple[str, ...]
    impact: tuple[str, ...]
    sites: tuple[str, ...]
    severity: Severity
    status: IncidentStatus
    cause: str
    locale: str
    declared_by: str
    claims: tuple[str, ...]
    audiences: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None
    source: str = "manual"
    source_key: str | None = None


@dataclass(frozen=True)
class TimelineEntry:
    """One append-only event in an incident's history: who, when, what."""

    incident_id: str
    seq: int
    at: datetime
    actor: str
    action: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Statement:
    """One rendered message of a kind in a locale, for one event (``seq``) of an incident.

    ``bodies`` holds one rendering per format (``subject``, ``text``, ``html``, ``slack``,
    ``telegram``, ``sms``); channels pick the formats they need.
    """

    id: str
    incident_id: str
    seq: int
    event: str
    kind: StatementKind
    locale: str
    version: int
    status: StatementStatus
    text: str
    bodies: Mapping[str, str]
    author: str
    approved_by: str | None
    created_at: datetime
    claims: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeliveryPolicy:
    """How an audience is reached: channel preference, acknowledgement and escalation."""

    channels: tuple[ChannelName, ...] = ()
    require_ack: bool = False
    escalate_after_s: float | None = None
    escalate_via: ChannelName | None = None
    confirm_per_site: int = 0
    # The audience's statement kind, so a failover off SMS finds the full statement again.
    kind: StatementKind = StatementKind.INTERNAL


R = TypeVar("R")


def assemble(cls: type[R], values: dict[str, Any]) -> R:
    """A record of the frozen dataclass ``cls`` from a value for each of its fields, without
    its ``__init__``, which sets every field through ``object.__setattr__`` (a delivery's 30
    fields cost 3 µs that way, 0.5 µs this way). For the send path only, where the caller
    names every field (or copies them from another record): the store contract suite and
    ``tests/delivery/test_outbound.py`` check the callers that name them."""
    record: R = object.__new__(cls)
    record.__dict__.update(values)
    return record


@dataclass(frozen=True)
class Delivery:
    """One (statement, recipient, channel) send, and the work-queue row behind it."""

    id: int
    incident_id: str
    seq: int
    statement_id: str
    audience: str
    recipient: str
    channel: ChannelName
    address: str
    state: DeliveryState
    locale: str
    site: str | None
    contacts: Mapping[str, str]
    policy: DeliveryPolicy
    ack_token: str
    attempts: int = 0
    next_attempt_at: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    provider_id: str | None = None
    last_error: str | None = None
    failover_of: int | None = None
    escalation_of: int | None = None
    root_id: int | None = None
    escalate_at: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    lane: int = 1  # 0 urgent (claimed first), 1 normal: see audiences.lane_of
    # Attempts whose result the provider left unknown (a timeout after the request left): a
    # channel reconciles with the provider before sending again.
    unknown_attempts: int = 0

    @property
    def is_member(self) -> bool:
        """A person (with contacts to fail over to), not a channel/list destination."""
        return bool(self.contacts)


@dataclass(frozen=True)
class NewDelivery:
    """A delivery to be inserted (the store assigns its id)."""

    incident_id: str
    seq: int
    statement_id: str
    audience: str
    recipient: str
    channel: ChannelName
    address: str
    locale: str
    site: str | None
    contacts: Mapping[str, str]
    policy: DeliveryPolicy
    ack_token: str
    next_attempt_at: datetime
    failover_of: int | None = None
    escalation_of: int | None = None
    root_id: int | None = None
    lane: int = 1


@dataclass(frozen=True)
class Attempt:
    """One try at sending a delivery, as the provider answered it."""

    delivery_id: int
    at: datetime
    outcome: str
    provider_id: str | None = None
    error: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What the worker learned from one attempt; the store applies it atomically."""

    delivery_id: int
    state: DeliveryState
    attempts: tuple[Attempt, ...]
    next_attempt_at: datetime | None = None
    escalate_at: datetime | None = None
    count_attempt: bool = True
    follow_up: NewDelivery | None = None
    # The lease under which the attempt ran: the store applies the outcome only while that
    # lease still holds the row (fencing); an outcome without one is never applied.
    lease_owner: str | None = None
