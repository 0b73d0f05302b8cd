"""Update-cadence reminders: when an open incident has had no update for its severity's
cadence, the crisis cell is reminded (and the reminder is in the timeline)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol

from bot.domain.models import (
    IncidentStatus,
    Severity,
    Statement,
    StatementKind,
    StatementStatus,
    TimelineEntry,
)
from bot.domain.publishing import Publisher
from bot.domain.statement_context import OrganisationInfo, Renderer, new_statement_id
from bot.ports import Changes

UPDATES = frozenset({"declared", "confirmed", "updated"})
WORDING = {
    "fr": (
        "Rappel : aucune mise à jour de {id} depuis {minutes} min",
        "Rappel : aucune mise à jour publiée pour {id} ({title}) depuis {minutes} min. "
        "La cadence prévue pour un incident {severity} est de {cadence} min : "
        "merci de publier un point de situation.",
    ),
    "en": (
        "Reminder: no update of {id} for {minutes} min",
        "Reminder: no update published for {id} ({title}) for {minutes} min. "
        "The agreed cadence for a {severity} incident is {cadence} min: "
        "please publish a situation update.",
    ),
}


class Reminders:
    """Reminds the crisis cell of incidents left without an update for too long."""

    def __init__(self, publisher: Publisher, renderer: Renderer, org: OrganisationInfo) -> None:
        self.publisher = publisher
        self.renderer = renderer
        self.org = org

    async def remind_overdue(
        self,
        cadence: Mapping[Severity, float],
        audience_name: str,
        now: datetime | None = None,
    ) -> list[str]:
        """Remind the crisis cell about every open incident past its cadence; returns their
        ids."""
        audience = self.publisher.audiences.get(audience_name)
        if audience is None or not cadence:
            return []
        now = now or self.publisher.clock.now()
        reminded = []
        for incident in await self.publisher.store.list_incidents():
            if incident.status in (IncidentStatus.DRAFT, IncidentStatus.RESOLVED):
                continue
            every = cadence.get(incident.severity)
            if not every:
                continue
            timeline = await self.publisher.store.timeline(incident.id)
            last_update = max((e.at for e in timeline if e.action in UPDATES), default=None)
            last_reminder = max((e.at for e in timeline if e.action == "reminder"), default=None)
            if last_update is None:
                continue
            since = max(last_update, last_reminder or last_update)
            if now < since + timedelta(seconds=every):
                continue
            seq = (timeline[-1].seq if timeline else 0) + 1
            minutes = int((now - last_update).total_seconds() // 60)
            statements = []
            for locale in self.org.locales:
                subject, text = WORDING.get(locale, WORDING["en"])
                values = {
                    "id": incident.id,
                    "title": incident.title,
                    "minutes": minutes,
                    "severity": incident.severity.value,
                    "cadence": int(every // 60),
                }
                bodies = self.renderer.bodies_from_text(
                    StatementKind.INTERNAL, text.format(**values), subject.format(**values)
                )
                statements.append(
                    Statement(
                        id=new_statement_id(),
                        incident_id=incident.id,
                        seq=seq,
                        event="reminder",
                        kind=StatementKind.INTERNAL,
                        locale=locale,
                        version=1,
                        status=StatementStatus.PUBLISHED,
                        text=bodies["text"],
                        bodies=bodies,
                        author="tocsin",
                        approved_by=None,
                        created_at=now,
                    )
                )
            await self.publisher.commit(
                Changes(
                    statements=statements,
                    timeline=[
                        TimelineEntry(
                            incident.id,
                            seq,
                            now,
                            "tocsin",
                            "reminder",
                            {"minutes_since_update": minutes, "audience": audience_name},
                        )
                    ],
                    deliveries=self.publisher.plan(incident, seq, [audience], statements, now),
                )
            )
            reminded.append(incident.id)
        return reminded


class HasReminders(Protocol):
    """What holds the reminders (the incident service)."""

    @property
    def reminders(self) -> Reminders: ...


async def remind_overdue(
    service: HasReminders,
    cadence: Mapping[Severity, float],
    audience_name: str,
    now: datetime | None = None,
) -> list[str]:
    """:meth:`Reminders.remind_overdue` of the service's reminders."""
    return await service.reminders.remind_overdue(cadence, audience_name, now)
