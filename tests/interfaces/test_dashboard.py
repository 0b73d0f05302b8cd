"""The dashboard over real HTTP: login/logout, CSRF, roles, pages, drill-down, live events."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from bot.domain.declarations import IncidentDraft
from bot.domain.models import Actor, Attempt, DeliveryState, Outcome, Role, StatementStatus
from bot.interfaces.web import pages
from bot.interfaces.web.session import COOKIE
from tests.interfaces.api_support import Api, auth
from tests.interfaces.web_support import csrf_of, log_in, running_web

ORBIS = {
    "title": "Panne informatique : Orbis indisponible",
    "systems": ["Orbis"],
    "unaffected": ["SAMU"],
    "severity": "critical",
    "claims": ["no_patient_impact"],
}


@pytest.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    async with running_web(monkeypatch) as running:
        yield running


@asynccontextmanager
async def browser(api: Api) -> AsyncIterator[aiohttp.ClientSession]:
    """A second browser: its own cookies, same server."""
    jar = aiohttp.CookieJar(unsafe=True)
    base = str(api.client.make_url("/"))
    async with aiohttp.ClientSession(base_url=base, cookie_jar=jar) as session:
        yield session


async def declare(api: Api, body: dict[str, Any] | None = None) -> str:
    response = await api.client.post(
        "/api/v1/incidents", json=body or ORBIS, headers=auth("responder")
    )
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


async def press_draft(api: Api, incident_id: str, locale: str = "fr") -> str:
    statements = await api.store.statements(incident_id)
    (draft,) = [
        s
        for s in statements
        if s.kind.value == "press" and s.locale == locale and s.status == StatementStatus.DRAFT
    ]
    return draft.id


async def test_pages_need_a_login(api: Api) -> None:
    incident_id = await declare(api)
    home = await api.client.get("/", allow_redirects=False)
    assert (home.status, home.headers["Location"]) == (303, "/login?next=/")
    page = await api.client.get(f"/incidents/{incident_id}", allow_redirects=False)
    assert page.headers["Location"] == f"/login?next=/incidents/{incident_id}"
    stream = await api.client.get(f"/incidents/{incident_id}/events")
    assert stream.status == 401


async def test_login_shows_the_incidents_and_logout_forgets_the_session(api: Api) -> None:
    incident_id = await declare(api)
    csrf = await log_in(api.client, "viewer")
    home = await api.client.get("/")
    text = await home.text()
    assert home.status == 200
    assert incident_id in text
    assert "Panne informatique : Orbis indisponible" in text
    assert "tableau · viewer" in text
    refused = await api.client.post("/logout", data={"csrf": "forged"}, allow_redirects=False)
    assert refused.status == 403
    out = await api.client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
    assert (out.status, out.headers["Location"]) == (303, "/login")
    again = await api.client.get("/", allow_redirects=False)
    assert again.status == 303


async def test_unknown_token_is_refused(api: Api) -> None:
    form = await (await api.client.get("/login")).text()
    response = await api.client.post(
        "/login", data={"csrf": csrf_of(form), "token": "not-a-token"}, allow_redirects=False
    )
    assert response.status == 401
    assert "Unknown token." in await response.text()
    assert (await api.client.get("/", allow_redirects=False)).status == 303


async def test_login_without_csrf_is_refused(api: Api) -> None:
    await api.client.get("/login")
    response = await api.client.post(
        "/login", data={"token": "viewer-token-0123456789"}, allow_redirects=False
    )
    assert response.status == 403
    assert (await api.client.get("/", allow_redirects=False)).status == 303


async def test_login_goes_back_only_to_local_pages(api: Api) -> None:
    form = await (await api.client.get("/login?next=//evil.example/x")).text()
    assert 'name="next" value="/"' in form
    response = await api.client.post(
        "/login",
        data={"csrf": csrf_of(form), "token": "viewer-token-0123456789", "next": "//evil.example"},
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/"


async def test_a_forged_cookie_is_an_anonymous_session(api: Api) -> None:
    await log_in(api.client, "viewer")
    cookie = api.client.session.cookie_jar.filter_cookies(api.client.make_url("/"))[COOKIE]
    _, _, mac = cookie.value.partition(".")
    forged = json.dumps({"c": "x", "e": 2**40, "u": "mallory", "r": "admin"}).encode()
    api.client.session.cookie_jar.clear()
    api.client.session.cookie_jar.update_cookies(
        {COOKIE: base64.urlsafe_b64encode(forged).decode().rstrip("=") + "." + mac},
        response_url=api.client.make_url("/"),
    )
    assert (await api.client.get("/", allow_redirects=False)).status == 303


async def test_incident_page_shows_statements_timeline_and_deliveries(api: Api) -> None:
    incident_id = await declare(api, {**ORBIS, "title": "<script>alert(1)</script> Orbis"})
    await log_in(api.client, "viewer")
    text = await (await api.client.get(f"/incidents/{incident_id}")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Orbis" in text
    assert "<script>alert(1)" not in text
    assert 'data-kind="internal"' in text
    assert 'data-kind="press"' in text
    assert "department_heads</strong>" in text
    assert "→ department-heads" in text
    assert 'id="tile-total">3<' in text
    assert 'id="tile-pending">3<' in text
    assert 'data-cell="all-staff|email|queued"' in text
    assert 'data-action="declared"' in text
    assert "/approve" not in text
    assert "/edit" not in text
    assert "a.martin@example.org" not in text


async def test_drill_down_shows_each_recipients_attempts_masked(api: Api) -> None:
    incident_id = await declare(api)
    now = api.runtime.clock.now()
    claimed = await api.store.claim_due("t", now, 60, 100)
    await api.store.record(
        [
            Outcome(
                d.id,
                DeliveryState.RETRYING,
                (Attempt(d.id, now, "retry", error=f"451 <{d.address}> try later", code="451"),),
                next_attempt_at=now,
                lease_owner="t",
            )
            for d in claimed
        ]
    )
    await log_in(api.client, "viewer")
    page = await api.client.get(
        f"/incidents/{incident_id}/deliveries",
        params={"audience": "department-heads", "channel": "email"},
    )
    text = await page.text()
    assert page.status == 200
    assert "Dr A. Martin" in text
    assert "a•••@example.org" in text
    assert "451 &lt;a•••@example.org&gt; try later" in text
    assert "a.martin@example.org" not in text
    assert "staff@example.org" not in text  # the filter keeps one audience
    everything = await (await api.client.get(f"/incidents/{incident_id}/deliveries")).text()
    assert everything.count("data-delivery=") == 3


async def test_press_draft_edit_and_approval_need_two_people(api: Api) -> None:
    incident_id = await declare(api)
    draft_id = await press_draft(api, incident_id)
    csrf = await log_in(api.client, "press")
    page = await (await api.client.get(f"/incidents/{incident_id}")).text()
    assert f'action="/statements/{draft_id}/edit"' in page
    edited = await api.client.post(
        f"/statements/{draft_id}/edit",
        data={"csrf": csrf, "text": "Un problème technique. Aucun impact patient."},
        allow_redirects=False,
    )
    assert edited.status == 303
    assert "notice=edited" in edited.headers["Location"]
    version2 = await press_draft(api, incident_id)
    page = await (await api.client.get(f"/incidents/{incident_id}?notice=edited")).text()
    assert "New version saved" in page
    assert "another press officer must approve" in page
    own = await api.client.post(
        f"/statements/{version2}/approve", data={"csrf": csrf}, allow_redirects=False
    )
    assert own.status == 403
    assert "four-eyes" in await own.text()
    before = await api.store.pending_count(incident_id)

    async with browser(api) as second:
        csrf2 = await log_in(second, "press2")
        approved = await second.post(
            f"/statements/{version2}/approve", data={"csrf": csrf2}, allow_redirects=False
        )
        assert approved.status == 303
        assert "notice=approved" in approved.headers["Location"]
    statement = await api.store.get_statement(version2)
    assert statement is not None
    assert statement.status == StatementStatus.PUBLISHED
    assert statement.approved_by == "presse2"
    assert await api.store.pending_count(incident_id) == before + 1  # presse@example.org


async def test_forms_refuse_a_missing_or_wrong_csrf_token(api: Api) -> None:
    incident_id = await declare(api)
    draft_id = await press_draft(api, incident_id)
    await log_in(api.client, "press2")
    for data in ({}, {"csrf": "forged"}, {"csrf": "é"}):
        response = await api.client.post(f"/statements/{draft_id}/approve", data=data)
        assert response.status == 403
    statement = await api.store.get_statement(draft_id)
    assert statement is not None
    assert statement.status == StatementStatus.DRAFT


@pytest.mark.parametrize("who", ["viewer", "responder"])
async def test_press_forms_need_the_press_role(api: Api, who: str) -> None:
    incident_id = await declare(api)
    draft_id = await press_draft(api, incident_id)
    csrf = await log_in(api.client, who)
    page = await (await api.client.get(f"/incidents/{incident_id}")).text()
    assert "/approve" not in page
    assert "/edit" not in page
    response = await api.client.post(f"/statements/{draft_id}/approve", data={"csrf": csrf})
    assert response.status == 403
    assert f"Your role ({who})" in await response.text()
    statement = await api.store.get_statement(draft_id)
    assert statement is not None
    assert statement.status == StatementStatus.DRAFT


async def test_a_responder_confirms_a_draft_from_the_dashboard(api: Api) -> None:
    draft = IncidentDraft.from_mapping(ORBIS)
    incident = await api.runtime.service.declare(
        Actor("alertmanager", Role.RESPONDER), draft, as_draft=True, source="alertmanager"
    )
    csrf = await log_in(api.client, "viewer")
    page = await (await api.client.get(f"/incidents/{incident.id}")).text()
    assert "Draft opened by alertmanager" in page
    assert "confirm-draft" not in page
    denied = await api.client.post(f"/incidents/{incident.id}/confirm", data={"csrf": csrf})
    assert denied.status == 403
    async with browser(api) as responder:
        csrf = await log_in(responder, "responder")
        done = await responder.post(
            f"/incidents/{incident.id}/confirm", data={"csrf": csrf}, allow_redirects=False
        )
        assert done.status == 303
        again = await responder.post(f"/incidents/{incident.id}/confirm", data={"csrf": csrf})
        assert again.status == 409
    confirmed = await api.store.get_incident(incident.id)
    assert confirmed is not None
    assert confirmed.status.value == "investigating"
    assert await api.store.pending_count(incident.id) == 3


async def test_unknown_incident_is_a_404_page(api: Api) -> None:
    await log_in(api.client, "viewer")
    response = await api.client.get("/incidents/INC-1999-0101-01")
    assert response.status == 404
    assert "No incident INC-1999-0101-01." in await response.text()


async def next_event(stream: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next ``progress`` event of a server-sent event stream."""
    event, data = "", ""
    while True:
        line = (await stream.content.readline()).decode()
        assert line, "the event stream ended"
        line = line.rstrip("\n")
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif not line and event == "progress":
            return dict(json.loads(data))


async def test_event_stream_pushes_counts_when_they_change(api: Api) -> None:
    incident_id = await declare(api)
    await log_in(api.client, "viewer")
    async with api.client.get(
        f"/incidents/{incident_id}/events", timeout=aiohttp.ClientTimeout(total=10)
    ) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        first = await next_event(stream)
        assert (first["total"], first["pending"], first["counts"]["queued"]) == (3, 3, 3)
        now = api.runtime.clock.now()
        (one, *_) = await api.store.claim_due("t", now, 60, 1)
        await api.store.record(
            [Outcome(one.id, DeliveryState.SENT, (Attempt(one.id, now, "sent"),), lease_owner="t")]
        )
        app = api.client.app
        assert app is not None
        app[pages.WEB].pulse.beat()  # what the worker's observer does
        second = await next_event(stream)
        assert (second["pending"], second["counts"]["sent"], second["done"]) == (2, 1, 1)
        row = next(
            r
            for r in second["rows"]
            if r["channel"] == one.channel.value and r["audience"] == one.audience
        )
        assert row["states"]["sent"] == 1


async def test_open_event_streams_end_when_the_server_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with asyncio.timeout(10):  # without the shutdown hook this waits a minute
            async with running_web(monkeypatch) as api:
                incident_id = await declare(api)
                login = str(api.client.make_url("/login"))
                form = await (await browser.get(login)).text()
                token = "viewer-token-0123456789"
                await browser.post(login, data={"csrf": csrf_of(form), "token": token})
                stream = await browser.get(
                    str(api.client.make_url(f"/incidents/{incident_id}/events"))
                )
                assert stream.status == 200
                await next_event(stream)
            assert await stream.content.read() == b""
        stream.close()
