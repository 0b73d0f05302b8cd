"""How statements are made: the renderer's interface, the organisation, the template context
of an incident, and the statements of one event (with their ids)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from bot.domain.models import (
    APPROVAL_KINDS,
    Incident,
    Statement,
    StatementKind,
    StatementStatus,
)


class Renderer(Protocol):
    """What the services need from the template renderer."""

    def render(
        self, kind: StatementKind, event: str, locale: str, context: Mapping[str, Any]
    ) -> dict[str, str]: ...

    def bodies_from_text(self, kind: StatementKind, text: str, subject: str) -> dict[str, str]: ...

    def claim_text(self, key: str, locale: str) -> str: ...

    def known_claim(self, key: str) -> bool: ...


@dataclass(frozen=True)
class OrganisationInfo:
    """The organisation as statements present it."""

    name: str
    locale: str
    locales: tuple[str, ...]
    timezone: str


def incident_context(incident: Incident, org: OrganisationInfo) -> dict[str, Any]:
    """The template context describing an incident."""
    return {
        "org": {"name": org.name, "locale": org.locale, "timezone": org.timezone},
        "incident": {
            "id": incident.id,
            "title": incident.title,
            "systems": list(incident.systems),
            "unaffected": list(incident.unaffected),
            "impact": list(incident.impact),
            "sites": list(incident.sites),
            "severity": incident.severity.value,
            "status": incident.status.value,
            "cause": incident.cause,
            "declared_at": incident.created_at,
            "updated_at": incident.updated_at,
            "resolved_at": incident.resolved_at,
            "declared_by": incident.declared_by,
        },
    }


def event_context(
    renderer: Renderer,
    org: OrganisationInfo,
    incident: Incident,
    event: str,
    locale: str,
    now: datetime,
    update: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The template context of one event of an incident, claims worded in ``locale``."""
    context = incident_context(incident, org)
    context.update(
        event=event,
        update={**update, "at": now} if update else None,
        correction=None,
        claims=[{"key": c, "text": renderer.claim_text(c, locale)} for c in incident.claims],
    )
    return context


def render_event(
    renderer: Renderer,
    org: OrganisationInfo,
    incident: Incident,
    *,
    seq: int,
    event: str,
    author: str,
    now: datetime,
    update: Mapping[str, Any] | None = None,
) -> list[Statement]:
    """Every kind of statement in every organisation language for one event: press and public
    ones as drafts (they need a second person), the others published."""
    statements: list[Statement] = []
    for locale in org.locales:
        context = event_context(renderer, org, incident, event, locale, now, update)
        for kind in StatementKind:
            bodies = renderer.render(kind, event, locale, context)
            if kind == StatementKind.SMS:
                # The same short text for people who must answer "OK".
                asking = renderer.render(kind, event, locale, {**context, "require_ack": True})
                bodies["sms_ack"] = asking["sms"]
            statements.append(
                Statement(
                    id=new_statement_id(),
                    incident_id=incident.id,
                    seq=seq,
                    event=event,
                    kind=kind,
                    locale=locale,
                    version=1,
                    status=StatementStatus.DRAFT
                    if kind in APPROVAL_KINDS
                    else StatementStatus.PUBLISHED,
                    text=bodies.get("text", ""),
                    bodies=bodies,
                    author=author,
                    approved_by=None,
                    created_at=now,
                    # SMS templates state no claims: SMS recipients never received one.
                    claims=() if kind == StatementKind.SMS else incident.claims,
                )
            )
    return statements


def new_statement_id() -> str:
    """A short, unguessable statement id."""
    return "stm-" + secrets.token_hex(6)
