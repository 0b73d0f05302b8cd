"""Domain services: declare, confirm, update, resolve, edit/approve statements, acknowledge.

Each service renders what it must, then commits the incident change, its timeline entry, its
statements and every delivery they imply in one transaction: nothing is sent before that.
:class:`IncidentService` is the crisis cell's verbs, and composes the collaborators that each
take the ports they use: the press desk, the claims registry, acknowledgements, reminders, the
quorum watch and reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.domain.ack_tokens import AckKeys
from bot.domain.acknowledgements import Acknowledgements
from bot.domain.audiences import Audience
from bot.domain.cadence import Reminders
from bot.domain.claims import ClaimsRegistry, ClaimView
from bot.domain.declarations import IncidentDraft, parse_status
from bot.domain.errors import Conflict, DuplicateRequest, InvalidInput
from bot.domain.models import (
    APPROVAL_KINDS,
    Actor,
    ChannelName,
    Delivery,
    DeliveryState,
    Incident,
    IncidentStatus,
    Role,
    Statement,
    StatementKind,
    TimelineEntry,
)
from bot.domain.publishing import Publisher, require
from bot.domain.quorum import Quorum
from bot.domain.report import Reports
from bot.domain.statement_context import (
    OrganisationInfo,
    Renderer,
    event_context,
    incident_context,
    render_event,
)
from bot.domain.statements import PressDesk
from bot.ports import Changes, Clock, IdempotencyKey, Store

__all__ = ["IncidentService", "OrganisationInfo", "Renderer", "incident_context"]


class IncidentService:
    """The crisis cell's verbs. Interfaces parse and authorise, then call these."""

    def __init__(
        self,
        store: Store,
        renderer: Renderer,
        clock: Clock,
        org: OrganisationInfo,
        audiences: Mapping[str, Audience],
        default_audiences: Sequence[str],
        usable_channels: frozenset[ChannelName] | None = None,
        tokens: AckKeys | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens or AckKeys(b"")
        self.renderer = renderer
        self.clock = clock
        self.org = org
        self.default_audiences = tuple(default_audiences)
        self.usable_channels = usable_channels
        self.publisher = Publisher(store, clock, audiences, usable_channels)
        self.audiences = self.publisher.audiences  # one mapping, shared with the publisher
        self.published = self.publisher.published  # called after each publication
        self.press_desk = PressDesk(self.publisher, renderer)
        self.claims_registry = ClaimsRegistry(self.publisher, renderer, org)
        self.acknowledgements = Acknowledgements(store, clock, self.tokens, usable_channels)
        self.reminders = Reminders(self.publisher, renderer, org)
        self.quorum = Quorum(self.publisher)
        self.reports = Reports(self.publisher, self.claims_registry, self.quorum)

    # --- reading -----------------------------------------------------------------------
    async def get(self, incident_id: str) -> Incident:
        """The incident, or NotFound."""
        return await self.publisher.incident(incident_id)

    async def statement(self, statement_id: str) -> Statement:
        """The statement, or NotFound."""
        return await self.publisher.statement(statement_id)

    # --- declaring ---------------------------------------------------------------------
    def check_draft(self, draft: IncidentDraft) -> None:
        """InvalidInput naming every field of ``draft`` this deployment does not know."""
        self._check_draft(draft)

    def _check_draft(self, draft: IncidentDraft) -> None:
        problems: dict[str, str] = {}
        unknown = [a for a in (draft.audiences or ()) if a not in self.audiences]
        if unknown:
            problems["audiences"] = f"unknown audience(s): {', '.join(unknown)}"
        if draft.locale and draft.locale not in self.org.locales:
            problems["locale"] = f"not one of the organisation's locales {list(self.org.locales)}"
        bad_claims = [c for c in draft.claims if not self.renderer.known_claim(c)]
        if bad_claims:
            problems["claims"] = f"unknown claim(s): {', '.join(bad_claims)}"
        if problems:
            raise InvalidInput("invalid declaration", detail=problems)

    async def _new_id(self, now: datetime) -> str:
        local = now.astimezone(ZoneInfo(self.org.timezone))
        prefix = f"INC-{local:%Y-%m%d}-"
        number = await self.store.next_incident_number(prefix)
        return f"{prefix}{number:02d}"

    async def declare(
        self,
        actor: Actor,
        draft: IncidentDraft,
        *,
        as_draft: bool = False,
        source: str = "manual",
        source_key: str | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> Incident:
        """Declare an outage: render every statement and queue every delivery, atomically.

        ``as_draft`` opens a draft that a person must confirm (monitoring alerts): nothing is
        sent until :meth:`confirm`. With ``idempotency``, the key is stored in the same
        transaction; a second use raises :class:`DuplicateRequest` and changes nothing.
        """
        self.require(actor, Role.RESPONDER)
        self._check_draft(draft)
        for _ in range(5):
            now = self.clock.now()
            incident = Incident(
                id=await self._new_id(now),
                title=draft.title,
                systems=draft.systems,
                unaffected=draft.unaffected,
                impact=draft.impact,
                sites=draft.sites,
                severity=draft.severity,
                status=IncidentStatus.DRAFT if as_draft else IncidentStatus.INVESTIGATING,
                cause=draft.cause,
                locale=draft.locale or self.org.locale,
                declared_by=actor.name,
                claims=draft.claims,
                audiences=draft.audiences
                if draft.audiences is not None
                else self.default_audiences,
                created_at=now,
                updated_at=now,
                source=source,
                source_key=source_key,
            )
            entry = TimelineEntry(
                incident.id,
                1,
                now,
                actor.name,
                "drafted" if as_draft else "declared",
                {
                    "severity": incident.severity.value,
                    "systems": list(incident.systems),
                    "audiences": list(incident.audiences),
                    "source": source,
                },
            )
            changes = Changes(
                incident=incident,
                new_incident=True,
                timeline=[entry],
                idempotency=_for(idempotency, incident.id),
            )
            if not as_draft:
                self._fan_out(changes, incident, 1, "declared", actor, now)
            try:
                await self.store.commit(changes)
            except DuplicateRequest:
                raise
            except Conflict:
                continue  # another declaration took the same number: take the next one
            return incident
        raise Conflict("could not allocate an incident id")

    async def confirm(self, actor: Actor, incident_id: str) -> Incident:
        """Confirm a draft (e.g. from an alert): it becomes ``investigating`` and is sent."""
        self.require(actor, Role.RESPONDER)
        incident = await self.get(incident_id)
        if incident.status != IncidentStatus.DRAFT:
            raise Conflict(f"{incident_id} is not a draft")
        now = self.clock.now()
        seq = await self.next_seq(incident_id)
        incident = replace(incident, status=IncidentStatus.INVESTIGATING, updated_at=now)
        changes = Changes(
            incident=incident,
            timeline=[TimelineEntry(incident_id, seq, now, actor.name, "confirmed", {})],
        )
        self._fan_out(changes, incident, seq, "declared", actor, now)
        await self.store.commit(changes)
        return incident

    async def revise_draft(self, actor: Actor, incident_id: str, draft: IncidentDraft) -> Incident:
        """Replace the details of a draft (e.g. a repeated alert notification); nothing is sent."""
        self.require(actor, Role.RESPONDER)
        self._check_draft(draft)
        incident = await self.get(incident_id)
        if incident.status != IncidentStatus.DRAFT:
            raise Conflict(f"{incident_id} is not a draft")
        now = self.clock.now()
        revised = replace(
            incident,
            title=draft.title,
            systems=draft.systems,
            unaffected=draft.unaffected,
            impact=draft.impact,
            sites=draft.sites,
            severity=draft.severity,
            cause=draft.cause,
            updated_at=now,
        )
        seq = await self.next_seq(incident_id)
        await self.store.commit(
            Changes(
                incident=revised,
                timeline=[
                    TimelineEntry(
                        incident_id,
                        seq,
                        now,
                        actor.name,
                        "draft_revised",
                        {"severity": revised.severity.value, "systems": list(revised.systems)},
                    )
                ],
            )
        )
        return revised

    async def note(
        self, actor: Actor, incident_id: str, action: str, detail: Mapping[str, Any]
    ) -> TimelineEntry:
        """Append an entry to the incident's timeline (alerts resolved, reminders, re-routings).

        ``detail`` must be JSON-serialisable."""
        incident = await self.get(incident_id)
        for _ in range(5):
            seq = await self.next_seq(incident.id)
            entry = TimelineEntry(
                incident.id, seq, self.clock.now(), actor.name, action, dict(detail)
            )
            try:
                await self.store.commit(Changes(timeline=[entry]))
            except Conflict:
                continue  # a concurrent change took this sequence number
            return entry
        raise Conflict("could not append to the timeline")

    async def update(
        self,
        actor: Actor,
        incident_id: str,
        status: str | None,
        message: str | None,
        idempotency: IdempotencyKey | None = None,
    ) -> Incident:
        """A status change and/or a message: new statements to the incident's audiences
        (``idempotency`` as in :meth:`declare`)."""
        self.require(actor, Role.RESPONDER)
        if status is None and not (message and message.strip()):
            raise InvalidInput(
                "an update needs a status or a message", detail={"status": "or message required"}
            )
        new_status = parse_status(status) if status is not None else None
        if message is not None and len(message) > 2000:
            raise InvalidInput("message too long", detail={"message": "at most 2000 characters"})
        if new_status == IncidentStatus.RESOLVED:
            return await self.resolve(actor, incident_id, message, idempotency)
        incident = await self.get(incident_id)
        self._require_open(incident)
        now = self.clock.now()
        seq = await self.next_seq(incident_id)
        incident = replace(incident, status=new_status or incident.status, updated_at=now)
        detail = {"status": incident.status.value, "message": (message or "").strip()}
        changes = Changes(
            incident=incident,
            timeline=[TimelineEntry(incident_id, seq, now, actor.name, "updated", detail)],
            idempotency=_for(idempotency, incident_id),
        )
        self._fan_out(changes, incident, seq, "update", actor, now, update=detail)
        await self.store.commit(changes)
        return incident

    async def resolve(
        self,
        actor: Actor,
        incident_id: str,
        message: str | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> Incident:
        """Close the incident and send the resolution statements."""
        self.require(actor, Role.RESPONDER)
        incident = await self.get(incident_id)
        self._require_open(incident)
        now = self.clock.now()
        seq = await self.next_seq(incident_id)
        incident = replace(
            incident, status=IncidentStatus.RESOLVED, updated_at=now, resolved_at=now
        )
        detail = {"status": "resolved", "message": (message or "").strip()}
        changes = Changes(
            incident=incident,
            timeline=[TimelineEntry(incident_id, seq, now, actor.name, "resolved", detail)],
            idempotency=_for(idempotency, incident_id),
        )
        self._fan_out(changes, incident, seq, "resolved", actor, now, update=detail)
        await self.store.commit(changes)
        return incident

    # --- statements (the press desk: bot/domain/statements.py) ---------------------------
    async def edit_statement(self, actor: Actor, statement_id: str, text: str) -> Statement:
        """A person's edit makes a new draft version (see :class:`PressDesk`)."""
        return await self.press_desk.edit(actor, statement_id, text)

    async def approve_statement(self, actor: Actor, statement_id: str) -> Statement:
        """Four-eyes approval and publication (see :class:`PressDesk`)."""
        return await self.press_desk.approve(actor, statement_id)

    # --- acknowledgements --------------------------------------------------------------
    async def claims(self, incident_id: str) -> list[ClaimView]:
        """The incident's claims with their reach (see :class:`ClaimsRegistry`)."""
        return await self.claims_registry.views(incident_id)

    async def retract_claim(
        self, actor: Actor, incident_id: str, key: str, reason: str
    ) -> list[Statement]:
        """Draft corrections of a claim for the audiences that received it."""
        return await self.claims_registry.retract(actor, incident_id, key, reason)

    async def acknowledge(self, token: str, by: str) -> Delivery:
        """Acknowledge the delivery behind an opaque token (see :mod:`acknowledgements`)."""
        return await self.acknowledgements.by_token(token, by)

    async def acknowledge_by_reply(
        self, channel: ChannelName, address: str, by: str
    ) -> Delivery | None:
        """An "OK" reply from a known address (see :mod:`acknowledgements`)."""
        return await self.acknowledgements.by_reply(channel, address, by)

    async def delivery_report(
        self,
        token: str,
        state: DeliveryState,
        *,
        outcome: str,
        code: str | None = None,
        error: str | None = None,
    ) -> Delivery | None:
        """A provider's delivery report (see :mod:`acknowledgements`)."""
        return await self.acknowledgements.report(
            token, state, outcome=outcome, code=code, error=error
        )

    # --- helpers -----------------------------------------------------------------------
    def _fan_out(
        self,
        changes: Changes,
        incident: Incident,
        seq: int,
        event: str,
        actor: Actor,
        now: datetime,
        update: Mapping[str, Any] | None = None,
    ) -> None:
        """Render every kind in every locale and plan the deliveries of the non-approval kinds."""
        statements = render_event(
            self.renderer,
            self.org,
            incident,
            seq=seq,
            event=event,
            author=actor.name,
            now=now,
            update=update,
        )
        changes.statements.extend(statements)
        changes.deliveries.extend(
            self.publisher.plan(
                incident,
                seq,
                self.publisher.audiences_named(incident.audiences),
                statements,
                now,
                kinds=frozenset(StatementKind) - APPROVAL_KINDS,
            )
        )

    def context_for(
        self,
        incident: Incident,
        event: str,
        locale: str,
        now: datetime,
        update: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The template context of one event of an incident."""
        return event_context(self.renderer, self.org, incident, event, locale, now, update)

    async def next_seq(self, incident_id: str) -> int:
        """The next timeline sequence number of an incident."""
        return await self.publisher.next_seq(incident_id)

    @staticmethod
    def require(actor: Actor, role: Role) -> None:
        """Forbidden unless the actor holds ``role``."""
        require(actor, role)

    @staticmethod
    def _require_open(incident: Incident) -> None:
        if incident.status == IncidentStatus.RESOLVED:
            raise Conflict(f"{incident.id} is already resolved")
        if incident.status == IncidentStatus.DRAFT:
            raise Conflict(f"{incident.id} is a draft: confirm it first")


def _for(idempotency: IdempotencyKey | None, incident_id: str) -> IdempotencyKey | None:
    """The request's key, naming the incident it changed."""
    return replace(idempotency, incident_id=incident_id) if idempotency else None
