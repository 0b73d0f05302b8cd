"""The claims registry: what Tocsin's statements asserted, to whom, and their corrections."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bot.domain.errors import InvalidInput, NotFound
from bot.domain.models import (
    Actor,
    Role,
    Statement,
    StatementKind,
    StatementStatus,
    TimelineEntry,
)
from bot.domain.publishing import Publisher, require
from bot.domain.statement_context import OrganisationInfo, Renderer, event_context
from bot.domain.statements import CORRECTION, claim_recipients, new_statement_id
from bot.ports import Changes

APPROVED_KINDS = frozenset({StatementKind.PRESS, StatementKind.PUBLIC})


@dataclass(frozen=True)
class ClaimView:
    """One claim of an incident: its wording, status and reach."""

    key: str
    text: str
    status: str  # proposed | approved | retracted
    audiences: tuple[str, ...]
    recipients: int
    reason: str | None = None


class ClaimsRegistry:
    """Lists claims with their reach, and drafts corrections when one is retracted."""

    def __init__(self, publisher: Publisher, renderer: Renderer, org: OrganisationInfo) -> None:
        self.publisher = publisher
        self.renderer = renderer
        self.org = org

    async def views(self, incident_id: str) -> list[ClaimView]:
        """Every claim the incident made or retracted, in the order first made."""
        incident = await self.publisher.incident(incident_id)
        statements = await self.publisher.store.statements(incident.id)
        retracted = {
            e.detail["claim"]: str(e.detail.get("reason", ""))
            for e in await self.publisher.store.timeline(incident.id)
            if e.action == "claim_retracted"
        }
        keys: list[str] = []
        for key in [*incident.claims, *(c for s in statements for c in s.claims), *retracted]:
            if key not in keys:
                keys.append(key)
        views = []
        for key in keys:
            received = await claim_recipients(self.publisher, incident.id, key)
            approved = any(
                key in s.claims
                and s.kind in APPROVED_KINDS
                and s.event != CORRECTION
                and s.status in (StatementStatus.PUBLISHED, StatementStatus.SUPERSEDED)
                and s.approved_by
                for s in statements
            )
            status = "retracted" if key in retracted else "approved" if approved else "proposed"
            views.append(
                ClaimView(
                    key=key,
                    text=self.renderer.claim_text(key, incident.locale),
                    status=status,
                    audiences=tuple(sorted({d.audience for d in received})),
                    recipients=len({(d.audience, d.recipient) for d in received}),
                    reason=retracted.get(key),
                )
            )
        return views

    async def retract(
        self, actor: Actor, incident_id: str, key: str, reason: str
    ) -> list[Statement]:
        """Draft a correction (one per language) for exactly the audiences that received the
        claim; it is approved like a press statement, then sent to those recipients only."""
        require(actor, Role.RESPONDER)
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("a reason is required", detail={"reason": "a non-empty string"})
        if len(reason) > 1000:
            raise InvalidInput("reason too long", detail={"reason": "at most 1000 characters"})
        views = {v.key: v for v in await self.views(incident_id)}
        view = views.get(key)
        if view is None:
            raise NotFound(f"{incident_id} made no claim {key!r}")
        if view.status == "retracted":
            raise InvalidInput("already retracted", detail={"claim": key})
        incident = await self.publisher.incident(incident_id)
        now = self.publisher.clock.now()
        seq = await self.publisher.next_seq(incident.id)
        renderer = self.renderer
        drafts = []
        for locale in self.org.locales:
            context = event_context(renderer, self.org, incident, "correction", locale, now)
            context["correction"] = {
                "claim": key,
                "claim_text": renderer.claim_text(key, locale),
                "reason": reason.strip(),
            }
            bodies = renderer.render(StatementKind.PRESS, CORRECTION, locale, context)
            bodies["sms"] = renderer.render(StatementKind.SMS, CORRECTION, locale, context)["sms"]
            drafts.append(
                Statement(
                    id=new_statement_id(),
                    incident_id=incident.id,
                    seq=seq,
                    event=CORRECTION,
                    kind=StatementKind.PRESS,
                    locale=locale,
                    version=1,
                    status=StatementStatus.DRAFT,
                    text=bodies.get("text", ""),
                    bodies=bodies,
                    author=actor.name,
                    approved_by=None,
                    created_at=now,
                    claims=(key,),
                    audiences=view.audiences,
                )
            )
        await self.publisher.commit(
            Changes(
                incident=replace(
                    incident, claims=tuple(c for c in incident.claims if c != key), updated_at=now
                ),
                statements=drafts,
                timeline=[
                    TimelineEntry(
                        incident.id,
                        seq,
                        now,
                        actor.name,
                        "claim_retracted",
                        {
                            "claim": key,
                            "reason": reason.strip(),
                            "audiences": list(view.audiences),
                            "recipients": view.recipients,
                            "statements": [d.id for d in drafts],
                        },
                    )
                ],
            )
        )
        return drafts
