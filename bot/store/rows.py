"""Conversions between domain records and database rows (shared by the SQL backends)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import orjson

from bot.domain.models import (
    Attempt,
    ChannelName,
    Delivery,
    DeliveryPolicy,
    DeliveryState,
    Incident,
    IncidentStatus,
    NewDelivery,
    Severity,
    Statement,
    StatementKind,
    StatementStatus,
    TimelineEntry,
    assemble,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def ts(value: datetime | None) -> float | None:
    """Aware datetime → epoch seconds."""
    return value.timestamp() if value is not None else None


def dt(value: float | None) -> datetime | None:
    """Epoch seconds → aware UTC datetime."""
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def micros(value: datetime | None) -> int | None:
    """Aware datetime → integer microseconds since the epoch (exact, unlike a float)."""
    return (value - _EPOCH) // _MICROSECOND if value is not None else None


def _dt(value: float) -> datetime:
    """Epoch seconds → aware UTC datetime (never None)."""
    return datetime.fromtimestamp(value, UTC)


def dumps(value: Any) -> str:
    """Compact JSON text, UTF-8 as is (what ``json.dumps(..., ensure_ascii=False)`` gives)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def policy_to_json(policy: DeliveryPolicy) -> str:
    return dumps(
        {
            "channels": [c.value for c in policy.channels],
            "require_ack": policy.require_ack,
            "escalate_after_s": policy.escalate_after_s,
            "escalate_via": policy.escalate_via.value if policy.escalate_via else None,
            "confirm_per_site": policy.confirm_per_site,
            "kind": policy.kind.value,
        }
    )


@lru_cache(maxsize=256)
def policy_from_json(raw: str) -> DeliveryPolicy:
    """Policies repeat across thousands of rows: parse each distinct one once."""
    data = json.loads(raw)
    return DeliveryPolicy(
        channels=tuple(ChannelName(c) for c in data["channels"]),
        require_ack=data["require_ack"],
        escalate_after_s=data["escalate_after_s"],
        escalate_via=ChannelName(data["escalate_via"]) if data["escalate_via"] else None,
        confirm_per_site=data.get("confirm_per_site", 0),
        kind=StatementKind(data.get("kind", "internal")),
    )


INCIDENT_COLUMNS = (
    "id",
    "title",
    "systems",
    "unaffected",
    "impact",
    "sites",
    "severity",
    "status",
    "cause",
    "locale",
    "declared_by",
    "claims",
    "audiences",
    "created_at",
    "updated_at",
    "resolved_at",
    "source",
    "source_key",
)


def incident_row(i: Incident) -> tuple[Any, ...]:
    return (
        i.id,
        i.title,
        dumps(i.systems),
        dumps(i.unaffected),
        dumps(i.impact),
        dumps(i.sites),
        i.severity.value,
        i.status.value,
        i.cause,
        i.locale,
        i.declared_by,
        dumps(i.claims),
        dumps(i.audiences),
        ts(i.created_at),
        ts(i.updated_at),
        ts(i.resolved_at),
        i.source,
        i.source_key,
    )


def incident_from(r: Mapping[str, Any]) -> Incident:
    return Incident(
        id=r["id"],
        title=r["title"],
        systems=tuple(json.loads(r["systems"])),
        unaffected=tuple(json.loads(r["unaffected"])),
        impact=tuple(json.loads(r["impact"])),
        sites=tuple(json.loads(r["sites"])),
        severity=Severity(r["severity"]),
        status=IncidentStatus(r["status"]),
        cause=r["cause"],
        locale=r["locale"],
        declared_by=r["declared_by"],
        claims=tuple(json.loads(r["claims"])),
        audiences=tuple(json.loads(r["audiences"])),
        created_at=_dt(r["created_at"]),
        updated_at=_dt(r["updated_at"]),
        resolved_at=dt(r["resolved_at"]),
        source=r["source"],
        source_key=r["source_key"],
    )


TIMELINE_COLUMNS = ("incident_id", "seq", "at", "actor", "action", "detail")


def timeline_row(e: TimelineEntry) -> tuple[Any, ...]:
    return (e.incident_id, e.seq, ts(e.at), e.actor, e.action, dumps(dict(e.detail)))


def timeline_from(r: Mapping[str, Any]) -> TimelineEntry:
    return TimelineEntry(
        incident_id=r["incident_id"],
        seq=r["seq"],
        at=_dt(r["at"]),
        actor=r["actor"],
        action=r["action"],
        detail=json.loads(r["detail"]),
    )


STATEMENT_COLUMNS = (
    "id",
    "incident_id",
    "seq",
    "event",
    "kind",
    "locale",
    "version",
    "status",
    "text",
    "bodies",
    "author",
    "approved_by",
    "created_at",
    "claims",
    "audiences",
)


def statement_row(s: Statement) -> tuple[Any, ...]:
    return (
        s.id,
        s.incident_id,
        s.seq,
        s.event,
        s.kind.value,
        s.locale,
        s.version,
        s.status.value,
        s.text,
        dumps(dict(s.bodies)),
        s.author,
        s.approved_by,
        ts(s.created_at),
        dumps(s.claims),
        dumps(s.audiences),
    )


def statement_from(r: Mapping[str, Any]) -> Statement:
    return Statement(
        id=r["id"],
        incident_id=r["incident_id"],
        seq=r["seq"],
        event=r["event"],
        kind=StatementKind(r["kind"]),
        locale=r["locale"],
        version=r["version"],
        status=StatementStatus(r["status"]),
        text=r["text"],
        bodies=json.loads(r["bodies"]),
        author=r["author"],
        approved_by=r["approved_by"],
        created_at=_dt(r["created_at"]),
        claims=tuple(json.loads(r["claims"])),
        audiences=tuple(json.loads(r["audiences"])),
    )


NEW_DELIVERY_COLUMNS = (
    "incident_id",
    "seq",
    "statement_id",
    "audience",
    "recipient",
    "channel",
    "address",
    "state",
    "locale",
    "site",
    "contacts",
    "policy",
    "ack_token",
    "due_at",
    "next_attempt_at",
    "failover_of",
    "escalation_of",
    "root_id",
    "created_at",
    "updated_at",
    "lane",
    "require_ack",
)


def new_delivery_row(d: NewDelivery, now: float) -> tuple[Any, ...]:
    due = ts(d.next_attempt_at)
    return (
        d.incident_id,
        d.seq,
        d.statement_id,
        d.audience,
        d.recipient,
        d.channel.value,
        d.address,
        DeliveryState.QUEUED.value,
        d.locale,
        d.site,
        dumps(dict(d.contacts)),
        policy_to_json(d.policy),
        d.ack_token,
        due,
        due,
        d.failover_of,
        d.escalation_of,
        d.root_id,
        now,
        now,
        d.lane,
        int(d.policy.require_ack),
    )


_STATES = {s.value: s for s in DeliveryState}
_NO_CONTACTS: Mapping[str, str] = MappingProxyType({})


def _contacts(raw: str) -> Mapping[str, str]:
    # Destinations (channels, lists) have none: most rows of a fan-out.
    return _NO_CONTACTS if raw == "{}" else orjson.loads(raw)


# A delivery row's columns are the fields of Delivery, by the same names.
DELIVERY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Delivery))
_DELIVERY_TIMES = tuple(f.name for f in fields(Delivery) if str(f.type).startswith("datetime"))


def delivery_from(r: Mapping[str, Any]) -> Delivery:
    """A delivery row → :class:`Delivery`."""
    return _delivery({name: r[name] for name in DELIVERY_FIELDS}, dt)


def json_delivery() -> str:
    """The SQLite expression of a delivery row as one JSON object, its times in integer
    microseconds (exact: SQLite writes a real number to JSON with 15 significant digits).
    One text per row crosses into Python instead of 30 values: SQLite builds it while the
    connection's thread has let go of the GIL (see :func:`deliveries_from_json`)."""
    parts = []
    for name in DELIVERY_FIELDS:
        column = f"CAST(round({name} * 1000000) AS INTEGER)" if name in _DELIVERY_TIMES else name
        parts.append(f"'{name}', {column}")
    return "json_object(" + ", ".join(parts) + ")"


def deliveries_from_json(texts: Iterable[str]) -> list[Delivery]:
    """The deliveries of :func:`json_delivery`'s texts, parsed together. The rows of a claim
    share most of their times (one declaration's creation and due time, one lease): each
    distinct time is converted once and the rows share the (immutable) datetime."""
    seen: dict[int, datetime] = {}

    def time(micros: int | None) -> datetime | None:
        if micros is None:
            return None
        found = seen.get(micros)
        if found is None:
            # Exact until 2106: below 2**32 seconds, the nearest double to a whole number of
            # microseconds is within a quarter of a microsecond of it, and fromtimestamp rounds.
            found = seen[micros] = datetime.fromtimestamp(micros / 1_000_000, UTC)
        return found

    return [_delivery(v, time) for v in orjson.loads(f"[{','.join(texts)}]")]


def _delivery(v: dict[str, Any], time: Callable[[Any], datetime | None]) -> Delivery:
    """The delivery of a dict of its stored fields (changed in place)."""
    v["channel"] = ChannelName(v["channel"])
    v["state"] = _STATES[v["state"]]
    v["contacts"] = _contacts(v["contacts"])
    v["policy"] = policy_from_json(v["policy"])
    for name in _DELIVERY_TIMES:
        v[name] = time(v[name])
    return assemble(Delivery, v)


def attempt_from(r: Mapping[str, Any]) -> Attempt:
    return Attempt(
        delivery_id=r["delivery_id"],
        at=_dt(r["at"]),
        outcome=r["outcome"],
        provider_id=r["provider_id"],
        error=r["error"],
        code=r["code"],
    )
