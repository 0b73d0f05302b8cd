"""Prometheus Alertmanager ingestion: webhook (version 4) → a *draft* incident, nothing sent.

Alertmanager groups alerts and notifies once per group (``groupKey``). The first firing
notification of a group opens a draft that the crisis cell confirms; later notifications of
the same group revise the draft (or, once it is confirmed, are noted on its timeline); resolved
alerts are noted on the timeline once each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.domain.declarations import IncidentDraft
from bot.domain.errors import InvalidInput
from bot.domain.models import Actor, Incident, IncidentStatus, Role, Severity
from bot.domain.queries import IncidentQueries
from bot.domain.services import IncidentService
from bot.interfaces import http_api
from bot.interfaces.api_models import AlertAnswer
from bot.interfaces.deps import QUERIES, SERVICE, SETTINGS
from bot.interfaces.openapi import operation

log = logging.getLogger("tocsin.alerts")

ALERTMANAGER = Actor("alertmanager", Role.RESPONDER)
SOURCE = "alertmanager"
_RANK = {Severity.MINOR: 0, Severity.MAJOR: 1, Severity.CRITICAL: 2}


class AlertRule(BaseModel):
    """Alerts whose labels include every ``match`` pair concern ``system``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: dict[str, str] = Field(min_length=1)
    system: str = Field(min_length=1)
    severity: Severity | None = None


class AlertSettings(BaseModel):
    """The ``alerts:`` block of ``tocsin.yaml``; every key is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[AlertRule] = Field(default_factory=list)
    default_severity: Severity = Severity.MAJOR
    audiences: list[str] | None = None

    def system_of(self, labels: Mapping[str, str]) -> tuple[str, Severity | None]:
        """The system an alert concerns (first matching rule, else ``service`` or
        ``alertname``) and the severity its rule sets, if any."""
        for rule in self.rules:
            if all(labels.get(k) == v for k, v in rule.match.items()):
                return rule.system, rule.severity
        return labels.get("service") or labels.get("alertname") or "unknown", None


class WebhookAlert(BaseModel):
    """One alert of a notification (field names are Alertmanager's own, in camelCase)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    fingerprint: str = ""


class WebhookMessage(BaseModel):
    """Alertmanager's webhook body, version 4 (unknown extra fields are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Literal["4"]
    groupKey: str = Field(min_length=1)
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    truncatedAlerts: int = 0
    alerts: list[WebhookAlert] = Field(min_length=1)


def alert_settings(settings: object) -> AlertSettings:
    """The ``alerts`` block of the configuration, whatever model the configuration uses."""
    raw = getattr(settings, "alerts", None)
    if raw is None:
        return AlertSettings()
    if isinstance(raw, AlertSettings):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    return AlertSettings.model_validate(raw)


def parse_message(data: Any) -> WebhookMessage:
    """Validate a webhook body; every problem is listed in ``InvalidInput.detail``."""
    try:
        return WebhookMessage.model_validate(data)
    except ValidationError as exc:
        detail = {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
        raise InvalidInput("not an Alertmanager webhook (version 4) body", detail=detail) from None


def draft_from(message: WebhookMessage, rules: AlertSettings) -> IncidentDraft | None:
    """The draft the firing alerts of a notification describe (None when none fires)."""
    firing = [a for a in message.alerts if a.status == "firing"]
    if not firing:
        return None
    systems: list[str] = []
    severity: Severity | None = None
    for alert in firing:
        system, rule_severity = rules.system_of(alert.labels)
        if system not in systems:
            systems.append(system)
        found = rule_severity or _severity_label(alert.labels) or rules.default_severity
        if severity is None or _RANK[found] > _RANK[severity]:
            severity = found
    summary = message.commonAnnotations.get("summary") or firing[0].annotations.get("summary")
    alertname = message.commonLabels.get("alertname") or firing[0].labels.get("alertname", "")
    title = summary or f"{alertname or 'Alert'}: {', '.join(systems)}"
    impact: list[str] = []
    for alert in firing:
        text = alert.annotations.get("description", "").strip()
        if text and text not in impact and len(impact) < 10:
            impact.append(text[:300])
    return IncidentDraft.from_mapping(
        {
            "title": title.strip()[:200] or "Alert",
            "systems": systems,
            "severity": (severity or rules.default_severity).value,
            "impact": impact,
            **({"audiences": rules.audiences} if rules.audiences is not None else {}),
        }
    )


def _severity_label(labels: Mapping[str, str]) -> Severity | None:
    value = labels.get("severity", "").lower()
    return Severity(value) if value in {s.value for s in Severity} else None


def _same(incident: Incident, draft: IncidentDraft) -> bool:
    return (incident.title, incident.systems, incident.severity, incident.impact) == (
        draft.title,
        draft.systems,
        draft.severity,
        draft.impact,
    )


def _alert_detail(alert: WebhookAlert, rules: AlertSettings) -> dict[str, Any]:
    return {
        "alertname": alert.labels.get("alertname", ""),
        "system": rules.system_of(alert.labels)[0],
        "fingerprint": alert.fingerprint,
        "starts_at": alert.startsAt.isoformat(),
        "ends_at": alert.endsAt.isoformat() if alert.endsAt else None,
    }


class AlertIngest:
    """Turns notifications into drafts; one at a time, so a burst never opens two drafts."""

    def __init__(self, rules: AlertSettings | None = None) -> None:
        self._rules = rules
        self._lock = asyncio.Lock()

    def rules(self, settings: object) -> AlertSettings:
        """Explicit rules (tests) or the configuration's ``alerts`` block."""
        return self._rules or alert_settings(settings)

    async def handle(
        self,
        service: IncidentService,
        queries: IncidentQueries,
        rules: AlertSettings,
        message: WebhookMessage,
    ) -> tuple[str, str | None]:
        """Apply one notification; returns (what was done, incident id)."""
        draft = draft_from(message, rules)
        async with self._lock:
            incident = await queries.from_source(ALERTMANAGER, SOURCE, message.groupKey)
            action = "unchanged"
            if draft is not None:
                if incident is None or incident.status == IncidentStatus.RESOLVED:
                    incident = await service.declare(
                        ALERTMANAGER,
                        draft,
                        as_draft=True,
                        source=SOURCE,
                        source_key=message.groupKey,
                    )
                    action = "drafted"
                elif incident.status == IncidentStatus.DRAFT:
                    if not _same(incident, draft):
                        incident = await service.revise_draft(ALERTMANAGER, incident.id, draft)
                        action = "revised"
                else:
                    action = await self._note_firing(service, queries, incident, message, rules)
            if incident is None:
                return "ignored", None  # resolved alerts of a group never drafted
            if await self._note_resolved(service, queries, incident, message.alerts, rules):
                action = "noted" if action == "unchanged" else action
        log.info("alert group notification (%s): %s %s", message.status, action, incident.id)
        return action, incident.id

    async def _note_firing(
        self,
        service: IncidentService,
        queries: IncidentQueries,
        incident: Incident,
        message: WebhookMessage,
        rules: AlertSettings,
    ) -> str:
        """A confirmed incident's group fires again: note it when the firing set changed."""
        firing = [a for a in message.alerts if a.status == "firing"]
        prints = sorted(a.fingerprint for a in firing)
        timeline = await queries.timeline(ALERTMANAGER, incident.id)
        notes = [e for e in timeline if e.action == "alert_firing"]
        if notes and sorted(notes[-1].detail.get("fingerprints", [])) == prints:
            return "unchanged"
        await service.note(
            ALERTMANAGER,
            incident.id,
            "alert_firing",
            {"fingerprints": prints, "alerts": [_alert_detail(a, rules) for a in firing]},
        )
        return "noted"

    async def _note_resolved(
        self,
        service: IncidentService,
        queries: IncidentQueries,
        incident: Incident,
        alerts: Sequence[WebhookAlert],
        rules: AlertSettings,
    ) -> bool:
        """Note each resolved alert once (Alertmanager repeats them in later notifications)."""
        resolved = [a for a in alerts if a.status == "resolved"]
        if not resolved:
            return False
        seen = {
            (e.detail.get("fingerprint"), e.detail.get("ends_at"))
            for e in await queries.timeline(ALERTMANAGER, incident.id)
            if e.action == "alert_resolved"
        }
        noted = False
        for alert in resolved:
            detail = _alert_detail(alert, rules)
            if (detail["fingerprint"], detail["ends_at"]) in seen:
                continue
            await service.note(ALERTMANAGER, incident.id, "alert_resolved", detail)
            seen.add((detail["fingerprint"], detail["ends_at"]))
            noted = True
        return noted


INGEST = web.AppKey("alert_ingest", AlertIngest)


@operation(
    "Alertmanager webhook (version 4) → a draft incident (nothing sent)",
    AlertAnswer,
    role=Role.ALERTS,
    body=WebhookMessage,
)
async def receive(request: web.Request) -> web.Response:
    """``POST /api/v1/alerts/alertmanager``: a responder token, a version-4 body."""
    http_api.authorise(request, Role.ALERTS)  # an ``alerts`` token, or a responder's
    message = parse_message(await http_api.json_body(request))
    ingest, app = request.app[INGEST], request.app
    action, incident_id = await ingest.handle(
        app[SERVICE], app[QUERIES], ingest.rules(app[SETTINGS]), message
    )
    status = 201 if action == "drafted" else 200
    return web.json_response({"action": action, "incident": incident_id}, status=status)


def add_routes(app: web.Application, rules: AlertSettings | None = None) -> None:
    """Mount the webhook; ``rules`` overrides the configuration's ``alerts`` block (tests)."""
    app[INGEST] = AlertIngest(rules)
    app.router.add_post("/api/v1/alerts/alertmanager", receive)
