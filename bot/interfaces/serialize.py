"""JSON shapes of the external contract (DESIGN.md §3); personal data masked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bot.domain.masking import mask_address, scrub_provider_error
from bot.domain.models import Attempt, Delivery, DeliveryState, Incident, Statement, TimelineEntry


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def incident_json(
    incident: Incident, timeline: Sequence[TimelineEntry] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": incident.id,
        "title": incident.title,
        "status": incident.status.value,
        "severity": incident.severity.value,
        "systems": list(incident.systems),
        "unaffected": list(incident.unaffected),
        "impact": list(incident.impact),
        "sites": list(incident.sites),
        "cause": incident.cause,
        "locale": incident.locale,
        "claims": list(incident.claims),
        "audiences": list(incident.audiences),
        "declared_by": incident.declared_by,
        "created_at": iso(incident.created_at),
        "updated_at": iso(incident.updated_at),
        "resolved_at": iso(incident.resolved_at),
        "source": incident.source,
    }
    if timeline is not None:
        data["timeline"] = [timeline_json(e) for e in timeline]
    return data


def timeline_json(entry: TimelineEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "detail": dict(entry.detail),
    }


def statement_json(statement: Statement) -> dict[str, Any]:
    return {
        "id": statement.id,
        "incident_id": statement.incident_id,
        "seq": statement.seq,
        "event": statement.event,
        "kind": statement.kind.value,
        "locale": statement.locale,
        "status": statement.status.value,
        "version": statement.version,
        "text": statement.text,
        "subject": statement.bodies.get("subject", ""),
        "author": statement.author,
        "approved_by": statement.approved_by,
        "created_at": iso(statement.created_at),
        "claims": list(statement.claims),
    }


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "at": iso(attempt.at),
        "outcome": attempt.outcome,
        "provider_id": attempt.provider_id,
        "error": scrub_provider_error(attempt.error) if attempt.error else None,
        "code": attempt.code,
    }


def delivery_json(delivery: Delivery, attempts: Sequence[Attempt] = ()) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "audience": delivery.audience,
        "channel": delivery.channel.value,
        "recipient": mask_address(delivery.channel, delivery.address, personal=delivery.is_member),
        "name": delivery.recipient if delivery.is_member else None,
        "site": delivery.site,
        "state": delivery.state.value,
        "locale": delivery.locale,
        "statement_id": delivery.statement_id,
        "seq": delivery.seq,
        "attempts": [attempt_json(a) for a in attempts],
        "failover_of": delivery.failover_of,
        "escalation_of": delivery.escalation_of,
        "acknowledged_by": delivery.acknowledged_by,
        "acknowledged_at": iso(delivery.acknowledged_at),
        "updated_at": iso(delivery.updated_at),
    }


def counts_json(counts: Mapping[str, int]) -> dict[str, int]:
    """Every state, zero included, so a client never guesses."""
    return {state.value: int(counts.get(state.value, 0)) for state in DeliveryState}
