"""Alertmanager ingestion: the webhook route, then Debian's real Alertmanager calling it."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.domain.models import Actor, IncidentStatus, Role, Severity
from bot.interfaces.alerts import AlertRule, AlertSettings, alert_settings
from tests.conftest import require
from tests.fakes.alertmanager import Alertmanager, alert, available
from tests.interfaces.api_support import TOKENS, Api, auth
from tests.interfaces.web_support import running_web

PATH = "/api/v1/alerts/alertmanager"
STARTS = "2026-11-29T07:00:00Z"
ZERO = "0001-01-01T00:00:00Z"


def webhook(
    *alerts: dict[str, Any], group: str = '{}:{alertname="OrbisDown"}', **over: Any
) -> dict[str, Any]:
    """A version-4 webhook body as Alertmanager sends it."""
    firing = any(a["status"] == "firing" for a in alerts)
    body = {
        "version": "4",
        "groupKey": group,
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "tocsin",
        "groupLabels": {"alertname": "OrbisDown"},
        "commonLabels": {"alertname": "OrbisDown"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }
    body.update(over)
    return body


def am_alert(
    fingerprint: str, status: str = "firing", ends: str = ZERO, **labels: str
) -> dict[str, Any]:
    annotations = {"summary": labels.pop("summary")} if "summary" in labels else {}
    if "description" in labels:
        annotations["description"] = labels.pop("description")
    return {
        "status": status,
        "labels": {"alertname": "OrbisDown", **labels},
        "annotations": annotations,
        "startsAt": STARTS,
        "endsAt": ends,
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": fingerprint,
    }


RULES = AlertSettings(
    rules=[AlertRule(match={"job": "orbis-api"}, system="Orbis", severity=Severity.CRITICAL)],
    default_severity=Severity.MINOR,
)


@pytest.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    async with running_web(monkeypatch, rules=RULES) as running:
        yield running


async def post(api: Api, body: Any, who: str = "responder") -> tuple[int, Any]:
    response = await api.client.post(PATH, json=body, headers=auth(who))
    return response.status, await response.json()


async def only_incident(api: Api) -> Any:
    incidents = await api.store.list_incidents()
    assert len(incidents) == 1
    return incidents[0]


async def test_tokens_are_checked(api: Api) -> None:
    body = webhook(am_alert("f1", job="orbis-api"))
    anonymous = await api.client.post(PATH, json=body)
    assert anonymous.status == 401
    status, answer = await post(api, body, who="viewer")
    assert status == 403
    assert answer["error"] == "the alerts role is required"  # an alerts or responder token
    assert await api.store.list_incidents() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (webhook(am_alert("f1"), version="3"), "version"),
        ({k: v for k, v in webhook(am_alert("f1")).items() if k != "groupKey"}, "groupKey"),
        (webhook(), "alerts"),
        (webhook(am_alert("f1", status="pending")), "alerts.0.status"),
        (webhook({**am_alert("f1"), "labels": {"alertname": 3}}), "alerts.0.labels.alertname"),
        (webhook({**am_alert("f1"), "startsAt": "yesterday"}), "alerts.0.startsAt"),
        ([1, 2], "body"),
    ],
)
async def test_bad_bodies_are_refused_and_change_nothing(api: Api, body: Any, field: str) -> None:
    status, answer = await post(api, body)
    assert status == 422
    assert answer["error"] == "not an Alertmanager webhook (version 4) body"
    assert field in answer["detail"]
    assert await api.store.list_incidents() == []


async def test_malformed_json_is_a_400(api: Api) -> None:
    response = await api.client.post(
        PATH, data=b"{not json", headers={**auth("responder"), "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"] == "malformed JSON"


async def test_a_firing_group_opens_a_draft_and_sends_nothing(api: Api) -> None:
    body = webhook(
        am_alert("f1", job="orbis-api", summary="Orbis ne répond plus"),
        am_alert("f2", service="pacs", description="PACS lent"),
    )
    status, answer = await post(api, body)
    assert status == 201
    assert answer["action"] == "drafted"
    incident = await only_incident(api)
    assert answer["incident"] == incident.id
    assert incident.status == IncidentStatus.DRAFT
    assert (incident.source, incident.source_key) == ("alertmanager", body["groupKey"])
    assert incident.title == "Orbis ne répond plus"
    assert incident.systems == ("Orbis", "pacs")  # a rule, then the service label
    assert incident.severity.value == "critical"
    assert incident.impact == ("PACS lent",)
    assert incident.declared_by == "alertmanager"
    assert await api.store.delivery_counts(incident.id) == {}
    assert await api.store.statements(incident.id) == []


async def test_repeated_notifications_revise_the_draft(api: Api) -> None:
    first = webhook(am_alert("f1", service="orbis"))
    await post(api, first)
    status, answer = await post(api, copy.deepcopy(first))
    assert (status, answer["action"]) == (200, "unchanged")
    grown = webhook(
        am_alert("f1", service="orbis"), am_alert("f2", service="orbis", severity="critical")
    )
    status, answer = await post(api, grown)
    assert (status, answer["action"]) == (200, "revised")
    incident = await only_incident(api)
    assert incident.severity.value == "critical"
    assert incident.title == "OrbisDown: orbis"
    actions = [e.action for e in await api.store.timeline(incident.id)]
    assert actions == ["drafted", "draft_revised"]
    assert await api.store.pending_count() == 0


async def test_resolved_alerts_are_noted_once(api: Api) -> None:
    await post(api, webhook(am_alert("f1", service="orbis"), am_alert("f2", service="orbis")))
    ended = "2026-11-29T07:30:00Z"
    partly = webhook(
        am_alert("f1", service="orbis"), am_alert("f2", "resolved", ended, service="orbis")
    )
    status, answer = await post(api, partly)
    assert (status, answer["action"]) == (200, "noted")  # the firing part is the same draft
    status, answer = await post(api, partly)  # Alertmanager repeats resolved alerts
    assert (status, answer["action"]) == (200, "unchanged")
    incident = await only_incident(api)
    notes = [e for e in await api.store.timeline(incident.id) if e.action == "alert_resolved"]
    assert len(notes) == 1
    assert notes[0].detail["fingerprint"] == "f2"
    assert notes[0].detail["system"] == "orbis"
    assert notes[0].actor == "alertmanager"
    status, answer = await post(api, webhook(am_alert("f1", "resolved", ended, service="orbis")))
    assert (status, answer["action"]) == (200, "noted")
    assert (await only_incident(api)).status == IncidentStatus.DRAFT  # people close incidents


async def test_a_confirmed_incident_gets_timeline_notes(api: Api) -> None:
    await post(api, webhook(am_alert("f1", service="orbis")))
    incident = await only_incident(api)
    await api.runtime.service.confirm(Actor("cellule", Role.RESPONDER), incident.id)
    queued = await api.store.pending_count(incident.id)
    grown = webhook(am_alert("f1", service="orbis"), am_alert("f2", service="orbis"))
    status, answer = await post(api, grown)
    assert (status, answer["action"]) == (200, "noted")
    status, answer = await post(api, grown)
    assert (status, answer["action"]) == (200, "unchanged")
    timeline = await api.store.timeline(incident.id)
    firing = [e for e in timeline if e.action == "alert_firing"]
    assert [e.detail["fingerprints"] for e in firing] == [["f1", "f2"]]
    assert await api.store.pending_count(incident.id) == queued  # notes send nothing
    assert len(await api.store.list_incidents()) == 1


async def test_after_resolution_the_group_opens_a_new_draft(api: Api) -> None:
    await post(api, webhook(am_alert("f1", service="orbis")))
    first = await only_incident(api)
    responder = Actor("cellule", Role.RESPONDER)
    await api.runtime.service.confirm(responder, first.id)
    await api.runtime.service.resolve(responder, first.id)
    status, answer = await post(api, webhook(am_alert("f1", service="orbis")))
    assert (status, answer["action"]) == (201, "drafted")
    assert answer["incident"] != first.id


async def test_resolved_alerts_of_an_unknown_group_are_ignored(api: Api) -> None:
    body = webhook(am_alert("f1", "resolved", "2026-11-29T07:30:00Z", service="orbis"))
    status, answer = await post(api, body)
    assert (status, answer) == (200, {"action": "ignored", "incident": None})
    assert await api.store.list_incidents() == []


def test_alert_settings_come_from_the_configuration_or_default() -> None:
    @dataclass
    class WithAlerts:
        alerts: Any

    assert alert_settings(object()) == AlertSettings()
    configured = alert_settings(WithAlerts({"rules": [{"match": {"job": "x"}, "system": "X"}]}))
    assert configured.system_of({"job": "x", "service": "y"}) == ("X", None)
    assert configured.system_of({"service": "y"}) == ("y", None)
    assert configured.system_of({"alertname": "Z"}) == ("Z", None)
    assert alert_settings(WithAlerts(RULES)) is RULES


# --- with Debian's Alertmanager --------------------------------------------------------------
@dataclass
class Answer:
    status: int
    body: Any


class Answers:
    """What our webhook answered to each call (outermost middleware), with a waiter."""

    def __init__(self) -> None:
        self.seen: list[Answer] = []
        self._changed = asyncio.Event()

    def install(self, app: web.Application) -> None:
        @web.middleware
        async def record(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            response = await handler(request)
            if request.path == PATH and isinstance(response, web.Response) and response.body:
                assert isinstance(response.body, bytes)
                self.seen.append(Answer(response.status, json.loads(response.body)))
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()
            return response

        app.middlewares.insert(0, record)

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Answer]:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                await self._changed.wait()
        return list(self.seen)


@pytest.mark.alertmanager
async def test_real_alertmanager_opens_revises_and_notes_a_draft(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require(available(), "Alertmanager (prometheus-alertmanager)")
    answers = Answers()
    started = time.monotonic()
    async with running_web(monkeypatch, rules=RULES, prepare=answers.install) as api:
        url = str(api.client.make_url(PATH))
        async with Alertmanager(tmp_path, url, TOKENS["TOCSIN_TOKEN_RESPONDER"]) as am:
            await am.post_alerts(
                [
                    alert(
                        "OrbisDown",
                        job="orbis-api",
                        service="orbis",
                        instance="a",
                        summary="Orbis ne répond plus",
                    )
                ]
            )
            (first,) = await answers.wait_for(1)
            assert (first.status, first.body["action"]) == (201, "drafted")
            incident = await api.store.get_incident(first.body["incident"])
            assert incident is not None
            assert incident.status == IncidentStatus.DRAFT
            assert incident.systems == ("Orbis",)
            assert incident.title == "Orbis ne répond plus"
            assert await api.store.delivery_counts(incident.id) == {}  # nothing queued

            await am.post_alerts(
                [
                    alert(
                        "OrbisDown",
                        job="orbis-api",
                        service="orbis",
                        instance="b",
                        summary="Orbis ne répond plus",
                        description="Instance b down",
                    )
                ]
            )
            second = (await answers.wait_for(2))[1]
            assert second.body == {"action": "revised", "incident": incident.id}

            now = datetime.now(UTC)
            await am.post_alerts(
                [
                    alert(
                        "OrbisDown",
                        ends_at=now,
                        job="orbis-api",
                        service="orbis",
                        instance=i,
                        summary="Orbis ne répond plus",
                    )
                    for i in ("a", "b")
                ]
            )
            third = (await answers.wait_for(3))[2]
            assert (third.status, third.body["incident"]) == (200, incident.id)
    timeline = await api.store.timeline(incident.id)
    assert [e.action for e in timeline].count("alert_resolved") == 2
    assert len(await api.store.list_incidents()) == 1
    assert await api.store.pending_count() == 0
    print(f"Alertmanager round trip: {time.monotonic() - started:.2f} s")
