"""What the services need to render statements: the renderer's interface, the organisation,
and the template context of an incident."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bot.domain.models import Incident, StatementKind


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
