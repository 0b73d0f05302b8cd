"""The post-incident report: timeline, statements as sent, approvals, claims, and delivery
statistics per audience × channel, computed from the deliveries table itself."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from bot.domain.claims import ClaimsRegistry
from bot.domain.models import Attempt, Delivery, DeliveryState, StatementStatus
from bot.domain.publishing import Publisher, all_deliveries
from bot.domain.quorum import Quorum

REACHED = frozenset({DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.ACKNOWLEDGED})
_SUCCESS_OUTCOMES = frozenset({"sent", "delivered", "acknowledged"})


def possible_duplicate(attempts: list[Attempt]) -> bool:
    """True when an attempt of unknown outcome (the provider may have taken the message) was
    followed by a success the provider did not reconcile with it: the recipient may have the
    message twice. A success whose code starts with ``reconciled`` is the channel's word that
    it looked the earlier send up first (Slack's message metadata), so it is not counted."""
    unknown = False
    for attempt in attempts:
        if attempt.outcome == "unknown":
            unknown = True
        elif unknown and attempt.outcome in _SUCCESS_OUTCOMES:
            return not (attempt.code or "").startswith("reconciled")
    return False


@dataclass
class GroupStats:
    """Delivery figures for one audience × channel."""

    audience: str
    channel: str
    total: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    first_delivery_s: float | None = None
    ack_90_s: float | None = None
    require_ack: int = 0


def _seconds(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else round((end - start).total_seconds(), 1)


class Reports:
    """Post-incident reports over the record, the claims registry and the quorum watch."""

    def __init__(self, publisher: Publisher, claims: ClaimsRegistry, quorum: Quorum) -> None:
        self.publisher = publisher
        self.claims = claims
        self.quorum = quorum

    async def build(self, incident_id: str) -> dict[str, Any]:
        """Everything a post-incident review needs, as plain data (JSON-ready)."""
        incident = await self.publisher.incident(incident_id)
        store = self.publisher.store
        timeline = await store.timeline(incident.id)
        statements = await store.statements(incident.id)
        deliveries = await all_deliveries(self.publisher, incident.id)
        attempts = await store.attempts([d.id for d in deliveries])
        reached_at = {
            d.id: min(
                (a.at for a in attempts[d.id] if a.outcome in ("sent", "delivered")), default=None
            )
            for d in deliveries
        }
        groups: dict[tuple[str, str], GroupStats] = {}
        members: dict[tuple[str, str], list[Delivery]] = {}
        for d in deliveries:
            key = (d.audience, d.channel.value)
            stats = groups.setdefault(key, GroupStats(*key))
            stats.total += 1
            stats.by_state[d.state.value] = stats.by_state.get(d.state.value, 0) + 1
            members.setdefault(key, []).append(d)
        for key, stats in groups.items():
            rows = members[key]
            first = min((t for d in rows if (t := reached_at[d.id]) is not None), default=None)
            stats.first_delivery_s = _seconds(incident.created_at, first)
            asked = [d for d in rows if d.policy.require_ack and d.is_member]
            stats.require_ack = len(asked)
            acks = sorted(d.acknowledged_at for d in asked if d.acknowledged_at is not None)
            needed = math.ceil(0.9 * len(asked))
            if asked and len(acks) >= needed:
                stats.ack_90_s = _seconds(incident.created_at, acks[needed - 1])
        return {
            "incident": {
                "id": incident.id,
                "title": incident.title,
                "severity": incident.severity.value,
                "status": incident.status.value,
                "systems": list(incident.systems),
                "unaffected": list(incident.unaffected),
                "sites": list(incident.sites),
                "declared_by": incident.declared_by,
                "declared_at": incident.created_at.isoformat(),
                "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
            },
            "timeline": [
                {
                    "seq": e.seq,
                    "at": e.at.isoformat(),
                    "actor": e.actor,
                    "action": e.action,
                    "detail": dict(e.detail),
                }
                for e in timeline
            ],
            "statements": [
                {
                    "id": s.id,
                    "event": s.event,
                    "kind": s.kind.value,
                    "locale": s.locale,
                    "version": s.version,
                    "status": s.status.value,
                    "author": s.author,
                    "approved_by": s.approved_by,
                    "at": s.created_at.isoformat(),
                    "subject": s.bodies.get("subject", ""),
                    "text": s.text,
                    "sent_to": sorted({d.audience for d in deliveries if d.statement_id == s.id}),
                }
                for s in statements
                if s.status != StatementStatus.SUPERSEDED or s.approved_by
            ],
            "approvals": [
                {"at": e.at.isoformat(), "by": e.actor, **dict(e.detail)}
                for e in timeline
                if e.action == "statement_approved"
            ],
            "claims": [
                {
                    "key": v.key,
                    "text": v.text,
                    "status": v.status,
                    "audiences": list(v.audiences),
                    "recipients": v.recipients,
                    "reason": v.reason,
                }
                for v in await self.claims.views(incident.id)
            ],
            "deliveries": {
                "total": len(deliveries),
                "by_state": {
                    state.value: sum(1 for d in deliveries if d.state == state)
                    for state in DeliveryState
                },
                "groups": [
                    {
                        "audience": g.audience,
                        "channel": g.channel,
                        "total": g.total,
                        "sent": g.by_state.get("sent", 0),
                        "delivered": g.by_state.get("delivered", 0),
                        "acknowledged": g.by_state.get("acknowledged", 0),
                        "failed": g.by_state.get("failed", 0),
                        "by_state": g.by_state,
                        "require_ack": g.require_ack,
                        "first_delivery_s": g.first_delivery_s,
                        "ack_90_s": g.ack_90_s,
                    }
                    for g in sorted(groups.values(), key=lambda g: (g.audience, g.channel))
                ],
                "failovers": sum(1 for d in deliveries if d.failover_of is not None),
                "rerouted": sum(
                    1 for d in deliveries for a in attempts[d.id] if a.outcome == "rerouted"
                ),
                "escalations": sum(1 for d in deliveries if d.escalation_of is not None),
                # Sent again after an outcome the provider could not tell (Telegram, Kannel): the
                # only duplicates a recipient may see besides a worker crash.
                "possible_duplicates": sum(
                    1 for d in deliveries if possible_duplicate(attempts[d.id])
                ),
            },
            "sites": [
                {
                    "site": v.site,
                    "confirmed": v.confirmed,
                    "needed": v.needed,
                    "by": [{"name": n, "at": at.isoformat()} for n, at in v.by],
                    "escalated": v.escalated,
                }
                for v in await self.quorum.site_views(incident.id)
            ],
        }


class HasReports(Protocol):
    """What holds the reports (the incident service)."""

    @property
    def reports(self) -> Reports: ...


async def build_report(service: HasReports, incident_id: str) -> dict[str, Any]:
    """:meth:`Reports.build` of the service's reports."""
    return await service.reports.build(incident_id)
