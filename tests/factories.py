"""Small builders of domain records for tests."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from bot.domain.models import (
    ChannelName,
    DeliveryPolicy,
    Incident,
    IncidentStatus,
    NewDelivery,
    Severity,
    Statement,
    StatementKind,
    StatementStatus,
    TimelineEntry,
)
from bot.ports import Changes

T0 = datetime(2023, 8, 30, 12, 0, tzinfo=UTC)


def incident(incident_id: str = "INC-2023-0830-01", **over: object) -> Incident:
    fields: dict[str, object] = dict(
        id=incident_id,
        title="Orbis indisponible",
        systems=("Orbis",),
        unaffected=("SAMU",),
        impact=("Identification des patients",),
        sites=("Hôpital Nord",),
        severity=Severity.CRITICAL,
        status=IncidentStatus.INVESTIGATING,
        cause="technical",
        locale="fr",
        declared_by="cellule",
        claims=("no_patient_impact",),
        audiences=("crisis-cell",),
        created_at=T0,
        updated_at=T0,
    )
    fields.update(over)
    return Incident(**fields)  # type: ignore[arg-type]


def statement(
    incident_id: str = "INC-2023-0830-01",
    kind: StatementKind = StatementKind.INTERNAL,
    locale: str = "fr",
    seq: int = 1,
    **over: object,
) -> Statement:
    fields: dict[str, object] = dict(
        id="stm-" + secrets.token_hex(6),
        incident_id=incident_id,
        seq=seq,
        event="declared",
        kind=kind,
        locale=locale,
        version=1,
        status=StatementStatus.PUBLISHED,
        text="Orbis est indisponible.",
        bodies={"subject": "Orbis", "text": "Orbis est indisponible."},
        author="cellule",
        approved_by=None,
        created_at=T0,
    )
    fields.update(over)
    return Statement(**fields)  # type: ignore[arg-type]


def new_delivery(
    stmt: Statement,
    address: str = "staff@example.org",
    channel: ChannelName = ChannelName.EMAIL,
    **over: object,
) -> NewDelivery:
    fields: dict[str, object] = dict(
        incident_id=stmt.incident_id,
        seq=stmt.seq,
        statement_id=stmt.id,
        audience="all-staff",
        recipient=address,
        channel=channel,
        address=address,
        locale=stmt.locale,
        site=None,
        contacts={},
        policy=DeliveryPolicy(),
        ack_token=secrets.token_urlsafe(16),
        next_attempt_at=T0,
    )
    fields.update(over)
    return NewDelivery(**fields)  # type: ignore[arg-type]


def declaration(n_deliveries: int = 3, incident_id: str = "INC-2023-0830-01") -> Changes:
    """An incident with one statement and ``n`` deliveries, as one commit."""
    inc = incident(incident_id)
    stmt = statement(incident_id)
    return Changes(
        incident=inc,
        new_incident=True,
        timeline=[TimelineEntry(incident_id, 1, T0, "cellule", "declared", {"x": 1})],
        statements=[stmt],
        deliveries=[new_delivery(stmt, f"list{i}@example.org") for i in range(n_deliveries)],
    )
