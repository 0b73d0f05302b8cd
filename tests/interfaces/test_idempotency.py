"""``Idempotency-Key`` on ``POST /api/v1/incidents`` and ``…/updates``, over a running server
and a real database: a retried request declares (and sends) once; concurrent declarations
never share an incident number."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from bot.ports import Store
from bot.store.postgres import PostgresStore
from bot.store.sqlite import SqliteStore
from tests.conftest import pg_database
from tests.interfaces.api_support import Api, auth, running_api

DECLARATION = {"title": "Orbis indisponible", "systems": ["Orbis"], "severity": "critical"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def api(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    async with AsyncExitStack() as stack:
        store: Store
        if request.param == "sqlite":
            store = SqliteStore(str(tmp_path / "tocsin.db"))
        else:
            store = PostgresStore(await stack.enter_async_context(pg_database()))
        yield await stack.enter_async_context(running_api(monkeypatch, store=store))


async def declare(api: Api, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    headers = auth("responder") | ({"Idempotency-Key": key} if key else {})
    response = await api.client.post("/api/v1/incidents", headers=headers, json=body)
    return response.status, await response.json()


async def deliveries(api: Api) -> int:
    total = 0
    for incident in await api.store.list_incidents():
        total += len(await api.store.deliveries(incident.id))
    return total


async def test_a_retry_with_the_same_key_gets_the_first_answer(api: Api) -> None:
    first = await declare(api, DECLARATION, "declare-7f3a")
    queued = await deliveries(api)
    assert first[0] == 201 and queued > 0

    headers = auth("responder") | {"Idempotency-Key": "declare-7f3a"}
    retry = await api.client.post("/api/v1/incidents", headers=headers, json=DECLARATION)

    assert (retry.status, await retry.json()) == first
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert [i.id for i in await api.store.list_incidents()] == [first[1]["id"]]
    assert await deliveries(api) == queued  # nothing sent twice


async def test_the_same_key_with_another_body_is_refused(api: Api) -> None:
    status, _ = await declare(api, DECLARATION, "declare-7f3a")
    assert status == 201

    status, body = await declare(api, {**DECLARATION, "severity": "major"}, "declare-7f3a")

    assert status == 422
    assert body["error"] == "this Idempotency-Key was already used for a different request"
    assert len(await api.store.list_incidents()) == 1


async def test_concurrent_requests_with_one_key_declare_once(api: Api) -> None:
    answers = await asyncio.gather(*(declare(api, DECLARATION, "same") for _ in range(5)))

    assert {status for status, _ in answers} == {201}
    assert len({body["id"] for _, body in answers}) == 1
    assert len(await api.store.list_incidents()) == 1


async def test_concurrent_declarations_get_distinct_numbers(api: Api) -> None:
    answers = await asyncio.gather(*(declare(api, DECLARATION) for _ in range(8)))

    assert [status for status, _ in answers] == [201] * 8
    ids = sorted(body["id"] for _, body in answers)
    assert len(set(ids)) == 8
    assert sorted(i.id for i in await api.store.list_incidents()) == ids
    assert [int(i.rsplit("-", 1)[1]) for i in ids] == list(range(1, 9))


async def test_an_update_retried_with_its_key_is_published_once(api: Api) -> None:
    _, incident = await declare(api, DECLARATION)
    path = f"/api/v1/incidents/{incident['id']}/updates"
    headers = auth("responder") | {"Idempotency-Key": "update-1"}
    update = {"status": "identified", "message": "Panne du serveur de base de données."}

    first = await api.client.post(path, headers=headers, json=update)
    queued = await deliveries(api)
    retry = await api.client.post(path, headers=headers, json=update)
    other = await api.client.post(path, headers=headers, json={"status": "monitoring"})

    assert (first.status, retry.status, other.status) == (201, 201, 422)
    assert await retry.json() == await first.json()
    assert await deliveries(api) == queued
    timeline = await api.store.timeline(incident["id"])
    assert [e.action for e in timeline] == ["declared", "updated"]
    # A key is the caller's own: the same key on another path is another request (refused).
    status, _ = await declare(api, update, "update-1")
    assert status == 422


async def test_an_unusable_key_is_refused(api: Api) -> None:
    status, body = await declare(api, DECLARATION, "x" * 256)
    assert status == 422
    assert "Idempotency-Key" in body["detail"]
    assert await api.store.list_incidents() == []


async def test_the_openapi_document_names_the_header(api: Api) -> None:
    document = await (await api.client.get("/api/openapi.json")).json()
    for path in ("/api/v1/incidents", "/api/v1/incidents/{id}/updates"):
        names = [p["name"] for p in document["paths"][path]["post"].get("parameters", [])]
        assert "Idempotency-Key" in names, path
    resolve = document["paths"]["/api/v1/incidents/{id}/resolve"]["post"]
    assert "Idempotency-Key" not in [p["name"] for p in resolve.get("parameters", [])]
