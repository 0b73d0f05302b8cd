"""The OpenAPI document is generated from the routes the app serves and the API models: no
route served undocumented, none documented unserved, and real answers match their models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.interfaces import api_models as m
from tests.interfaces.api_support import Api, auth, running_api

ORBIS = {
    "title": "Orbis indisponible",
    "systems": ["Orbis"],
    "severity": "critical",
    "claims": ["no_patient_impact"],
}


@pytest.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    async with running_api(monkeypatch) as running:
        yield running


async def _document(api: Api) -> dict[str, Any]:
    response = await api.client.get("/api/openapi.json")
    assert response.status == 200
    return dict(await response.json())


async def test_every_api_route_is_documented_and_every_documented_route_is_served(
    api: Api,
) -> None:
    document = await _document(api)
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in api.client.app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and route.resource.canonical.startswith(("/api/", "/healthz", "/readyz"))
    }
    assert served == documented
    assert ("post", "/api/v1/alerts/alertmanager") in documented
    assert ("post", "/api/v1/incidents/{id}/claims/{key}/retract") in documented


async def test_the_schemas_are_the_models(api: Api) -> None:
    document = await _document(api)
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    declare = document["paths"]["/api/v1/incidents"]["post"]
    assert declare["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Declaration"
    }
    declaration = m.Declaration.model_json_schema(ref_template="#/components/schemas/{model}")
    declaration.pop("$defs", None)
    assert schemas["Declaration"] == declaration
    assert set(schemas["Declaration"]["required"]) == {"title", "systems", "severity"}
    # Every reference resolves.
    text = str(document)
    for name in schemas:
        assert name in text
    refs = {part.split("'")[0] for part in text.split("#/components/schemas/")[1:]}
    assert refs <= set(schemas)


async def test_real_answers_match_their_models(api: Api) -> None:
    responder, viewer = auth("responder"), auth("viewer")
    declared = await api.client.post("/api/v1/incidents", json=ORBIS, headers=responder)
    assert declared.status == 201
    incident = m.Incident.model_validate(await declared.json())
    base = f"/api/v1/incidents/{incident.id}"
    for path, model in (
        ("/api/v1/incidents", m.IncidentList),
        (base, m.Incident),
        (f"{base}/statements", m.StatementList),
        (f"{base}/deliveries", m.Deliveries),
        (f"{base}/claims", m.ClaimList),
        (f"{base}/sites", m.Sites),
        (f"{base}/report", m.Report),
        ("/api/v1/channels", m.Channels),
        ("/healthz", m.Health),
        ("/readyz", m.Readiness),
    ):
        response = await api.client.get(path, headers=viewer)
        assert response.status == 200, path
        model.model_validate(await response.json())
    one = m.Incident.model_validate(await (await api.client.get(base, headers=viewer)).json())
    assert one.timeline  # one incident comes with its timeline
    updated = await api.client.post(
        f"{base}/updates", json={"status": "identified"}, headers=responder
    )
    assert updated.status == 201
    assert m.Incident.model_validate(await updated.json()).status == "identified"


@pytest.mark.parametrize(
    ("method", "path", "body", "error", "field"),
    [
        ("post", "updates", {"status": 1}, "status must be a string", "status"),
        (
            "post",
            "updates",
            {"status": "identified", "colour": "red"},
            "unknown field(s)",
            "colour",
        ),
        ("post", "updates", ["identified"], "the body must be an object", None),
        ("post", "resolve", {"message": ["done"]}, "message must be a string", "message"),
        (
            "post",
            "claims/no_patient_impact/retract",
            {"why": "x"},
            'the body must be {"reason": ...}',
            "reason",
        ),
    ],
)
async def test_refused_bodies_keep_the_error_shape(
    api: Api, method: str, path: str, body: Any, error: str, field: str | None
) -> None:
    declared = await api.client.post("/api/v1/incidents", json=ORBIS, headers=auth("responder"))
    incident = await declared.json()
    response = await api.client.request(
        method, f"/api/v1/incidents/{incident['id']}/{path}", json=body, headers=auth("responder")
    )
    assert response.status == 422
    answer = await response.json()
    assert answer["error"] == error
    if field is not None:
        assert field in answer["detail"]
    assert (await api.store.get_incident(incident["id"])).status.value == "investigating"
