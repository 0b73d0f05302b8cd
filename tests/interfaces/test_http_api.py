"""The HTTP API: every route, auth (401/403), bad input (400/422, nothing changed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.domain.models import Attempt, DeliveryState, Outcome
from tests.interfaces.api_support import Api, auth, running_api

ORBIS = {
    "title": "Panne informatique : Orbis indisponible",
    "systems": ["Orbis"],
    "unaffected": ["SAMU"],
    "impact": ["Identification des patients", "Prescription des examens"],
    "severity": "critical",
    "sites": ["Hôpital Bichat"],
    "cause": "cyberattack_ruled_out",
    "claims": ["no_patient_impact", "not_a_cyberattack", "unaffected:SAMU"],
}


@pytest.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    async with running_api(monkeypatch) as running:
        yield running


async def declare(api: Api, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await api.client.post(
        "/api/v1/incidents", json=body or ORBIS, headers=auth("responder")
    )
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def test_declare_returns_the_incident_and_queues_deliveries(api: Api) -> None:
    incident = await declare(api)
    assert incident["id"].startswith("INC-")
    assert incident["status"] == "investigating"
    assert incident["severity"] == "critical"
    assert incident["unaffected"] == ["SAMU"]
    assert [e["action"] for e in incident["timeline"]] == ["declared"]
    response = await api.client.get(
        f"/api/v1/incidents/{incident['id']}/deliveries", headers=auth("viewer")
    )
    body = await response.json()
    assert body["counts"]["queued"] == 3
    recipients = sorted(d["recipient"] for d in body["deliveries"])
    assert recipients == ["a•••@example.org", "http://127.0.0.1:9/…", "staff@example.org"]


async def test_incident_ids_are_sequential_per_day(api: Api) -> None:
    first, second = await declare(api), await declare(api)
    assert first["id"][:-2] == second["id"][:-2]
    assert int(second["id"][-2:]) == int(first["id"][-2:]) + 1


async def test_list_and_get(api: Api) -> None:
    incident = await declare(api)
    listed = await (await api.client.get("/api/v1/incidents", headers=auth("viewer"))).json()
    assert [i["id"] for i in listed["incidents"]] == [incident["id"]]
    one = await (
        await api.client.get(f"/api/v1/incidents/{incident['id']}", headers=auth("viewer"))
    ).json()
    assert one["title"] == ORBIS["title"] and one["timeline"][0]["actor"] == "cellule"
    missing = await api.client.get("/api/v1/incidents/INC-1999-0101-01", headers=auth("viewer"))
    assert missing.status == 404
    assert (await missing.json())["error"].startswith("no incident")


async def test_update_and_resolve_make_new_statements(api: Api) -> None:
    incident = await declare(api)
    path = f"/api/v1/incidents/{incident['id']}"
    response = await api.client.post(
        f"{path}/updates",
        headers=auth("responder"),
        json={"status": "identified", "message": "Cause trouvée"},
    )
    assert response.status == 201
    assert (await response.json())["status"] == "identified"
    response = await api.client.post(
        f"{path}/resolve", headers=auth("responder"), json={"message": "Orbis rétabli"}
    )
    assert (await response.json())["status"] == "resolved"
    again = await api.client.post(f"{path}/resolve", headers=auth("responder"), json={})
    assert again.status == 409
    statements = (
        await (await api.client.get(f"{path}/statements", headers=auth("viewer"))).json()
    )["statements"]
    assert {s["event"] for s in statements} == {"declared", "update", "resolved"}
    timeline = (await (await api.client.get(path, headers=auth("viewer"))).json())["timeline"]
    assert [e["action"] for e in timeline] == ["declared", "updated", "resolved"]
    counts = (await (await api.client.get(f"{path}/deliveries", headers=auth("viewer"))).json())[
        "counts"
    ]
    assert counts["queued"] == 9


async def test_statements_are_rendered_in_both_locales(api: Api) -> None:
    incident = await declare(api)
    statements = (
        await (
            await api.client.get(
                f"/api/v1/incidents/{incident['id']}/statements", headers=auth("viewer")
            )
        ).json()
    )["statements"]
    kinds = {(s["kind"], s["locale"]) for s in statements}
    assert ("press", "en") in kinds and ("internal", "fr") in kinds and ("sms", "fr") in kinds
    press = [s for s in statements if s["kind"] == "press"]
    assert {s["status"] for s in press} == {"draft"}
    internal = next(s for s in statements if s["kind"] == "internal" and s["locale"] == "fr")
    assert "Orbis" in internal["text"] and "SAMU" in internal["text"]


async def test_press_statement_four_eyes(api: Api) -> None:
    incident = await declare(api)
    statements = (
        await (
            await api.client.get(
                f"/api/v1/incidents/{incident['id']}/statements", headers=auth("viewer")
            )
        ).json()
    )["statements"]
    press = next(s for s in statements if s["kind"] == "press" and s["locale"] == "fr")
    edited = await api.client.put(
        f"/api/v1/statements/{press['id']}",
        headers=auth("press"),
        json={"text": "Un problème technique affecte Orbis."},
    )
    assert edited.status == 200
    v2 = await edited.json()
    assert (v2["version"], v2["author"], v2["status"]) == (2, "presse1", "draft")
    own = await api.client.post(f"/api/v1/statements/{v2['id']}/approve", headers=auth("press"))
    assert own.status == 403
    assert "four-eyes" in (await own.json())["error"]
    viewer = await api.client.post(f"/api/v1/statements/{v2['id']}/approve", headers=auth("viewer"))
    assert viewer.status == 403
    approved = await api.client.post(
        f"/api/v1/statements/{v2['id']}/approve", headers=auth("press2")
    )
    assert approved.status == 200
    body = await approved.json()
    assert (body["status"], body["approved_by"]) == ("published", "presse2")
    old = await api.client.put(
        f"/api/v1/statements/{press['id']}", headers=auth("press"), json={"text": "x"}
    )
    assert old.status == 409  # superseded
    deliveries = (
        await (
            await api.client.get(
                f"/api/v1/incidents/{incident['id']}/deliveries", headers=auth("viewer")
            )
        ).json()
    )["deliveries"]
    assert [d["recipient"] for d in deliveries if d["audience"] == "press"] == [
        "presse@example.org"
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/incidents"),
        ("get", "/api/v1/incidents"),
        ("get", "/api/v1/incidents/X"),
        ("post", "/api/v1/incidents/X/updates"),
        ("post", "/api/v1/incidents/X/resolve"),
        ("get", "/api/v1/incidents/X/statements"),
        ("get", "/api/v1/incidents/X/deliveries"),
        ("put", "/api/v1/statements/X"),
        ("post", "/api/v1/statements/X/approve"),
    ],
)
async def test_every_api_route_needs_a_token(api: Api, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = await api.client.request(method, path, headers=headers, json={})
        assert response.status == 401
        assert (await response.json())["error"] == "missing or unknown token"


async def test_roles_are_enforced(api: Api) -> None:
    response = await api.client.post("/api/v1/incidents", json=ORBIS, headers=auth("viewer"))
    assert response.status == 403
    response = await api.client.post("/api/v1/incidents", json=ORBIS, headers=auth("press"))
    assert response.status == 403
    assert await api.store.list_incidents() == []


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ("{not json", 400, None),
        ([], 422, None),
        ({"systems": ["Orbis"], "severity": "critical"}, 422, "title"),
        ({"title": "x", "severity": "critical"}, 422, "systems"),
        ({"title": "x", "systems": ["Orbis"], "severity": "apocalyptic"}, 422, "severity"),
        (
            {"title": "x", "systems": "Orbis", "severity": "major", "audiences": ["nobody"]},
            422,
            "audiences",
        ),
        (
            {"title": "x", "systems": ["Orbis"], "severity": "major", "claims": ["all_fine"]},
            422,
            "claims",
        ),
        ({"title": "x", "systems": ["Orbis"], "severity": "major", "colour": "red"}, 422, "colour"),
        ({"title": "x", "systems": [""], "severity": "major"}, 422, "systems"),
    ],
)
async def test_bad_declarations_change_nothing(
    api: Api, body: Any, status: int, field: str | None
) -> None:
    if isinstance(body, str):
        response = await api.client.post(
            "/api/v1/incidents",
            data=body,
            headers={**auth("responder"), "Content-Type": "application/json"},
        )
    else:
        response = await api.client.post("/api/v1/incidents", json=body, headers=auth("responder"))
    assert response.status == status
    payload = await response.json()
    assert payload["error"]
    if field is not None:
        assert field in payload["detail"]
    assert await api.store.list_incidents() == []


async def test_bad_updates_change_nothing(api: Api) -> None:
    incident = await declare(api)
    path = f"/api/v1/incidents/{incident['id']}/updates"
    for body in (
        {"status": "exploded"},
        {},
        {"message": 42},
        {"status": "draft"},
        {"status": "identified", "extra": 1},
    ):
        response = await api.client.post(path, json=body, headers=auth("responder"))
        assert response.status == 422, body
    one = await (
        await api.client.get(f"/api/v1/incidents/{incident['id']}", headers=auth("viewer"))
    ).json()
    assert one["status"] == "investigating" and len(one["timeline"]) == 1


async def test_paging(api: Api) -> None:
    for _ in range(3):
        await declare(api)
    page = await (
        await api.client.get("/api/v1/incidents?limit=2&offset=1", headers=auth("viewer"))
    ).json()
    assert len(page["incidents"]) == 2
    bad = await api.client.get("/api/v1/incidents?limit=zero", headers=auth("viewer"))
    assert bad.status == 422


async def test_ack_link_page_changes_nothing_and_post_acknowledges_once(api: Api) -> None:
    incident = await declare(api)
    [member] = [
        d for d in await api.store.deliveries(incident["id"]) if d.audience == "department-heads"
    ]
    now = api.runtime.clock.now()
    claimed = await api.store.claim_due("t", now, 60, 100)  # as if the worker had sent them
    await api.store.record(
        [
            Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, now, "sent"),), lease_owner="t")
            for d in claimed
        ]
    )
    link = f"/ack/{api.runtime.service.tokens.token(member)}"
    # A mail scanner or a link preview fetches the link: nothing changes.
    page = await api.client.get(link)
    head = await api.client.head(link)
    assert (page.status, head.status) == (200, 200)
    assert "<form method='post'>" in await page.text()
    assert page.headers["Cache-Control"] == "no-store"
    unchanged = await api.store.get_delivery(member.id)
    assert unchanged is not None and unchanged.state == DeliveryState.SENT

    first = await api.client.post(link)
    assert first.status == 200
    assert "Lecture confirmée" in await first.text()
    acked = await api.store.get_delivery(member.id)
    assert acked is not None and acked.state == DeliveryState.ACKNOWLEDGED
    attempts = (await api.store.attempts([member.id]))[member.id]
    again = await api.client.post(link)
    assert again.status == 200  # idempotent: says so, changes nothing
    assert "déjà enregistrée" in await again.text()
    assert (await api.store.attempts([member.id]))[member.id] == attempts
    for forged in ("forged-token", f"{member.id}.AAAAAAAAAAAAAAAAAAAAAA", member.ack_token):
        assert (await api.client.get(f"/ack/{forged}")).status == 404
        assert (await api.client.post(f"/ack/{forged}")).status == 404


async def test_open_routes_need_no_token(api: Api) -> None:
    assert (await api.client.get("/healthz")).status == 200
    ready = await api.client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["store"] is True
    doc = await (await api.client.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert "/api/v1/incidents" in doc["paths"]
    assert doc["paths"]["/api/v1/incidents"]["post"]["requestBody"]
