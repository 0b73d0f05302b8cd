"""Trust, over real HTTP: who may acknowledge, call in, read; what a link, a callback or a
viewer's token can and cannot do."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.domain.models import ChannelName, DeliveryState
from bot.interfaces.web.session import COOKIE
from bot.store.memory import MemoryStore
from tests.fakes.http_standin import HttpStandin, Reply
from tests.interfaces.api_support import auth, base_config, settle
from tests.interfaces.test_dashboard import browser
from tests.interfaces.web_support import csrf_of, log_in, running_web
from tests.log_capture import find_leaks
from tocsin_sandbox.webhook_sink import WebhookSink

ORBIS = {"title": "Orbis indisponible", "systems": ["Orbis"], "severity": "critical"}
MACHINE_TOKENS = {
    "TOCSIN_TOKEN_ALERTS": "alerts-token-0123456789",
    "TOCSIN_TOKEN_METRICS": "metrics-token-0123456789",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_machine_tokens(monkeypatch: pytest.MonkeyPatch, **over: Any) -> dict[str, Any]:
    for name, value in MACHINE_TOKENS.items():
        monkeypatch.setenv(name, value)
    config = base_config()
    config["auth"]["tokens"] += [
        {"name": "alertmanager", "token_env": "TOCSIN_TOKEN_ALERTS", "role": "alerts"},
        {"name": "prometheus", "token_env": "TOCSIN_TOKEN_METRICS", "role": "metrics"},
    ]
    config.update(over)
    return config


# --- next= after login ------------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    ["/%09/evil.example", "/%0a/evil.example", "/\\evil.example", "//evil.example", "https://e.x"],
)
async def test_login_next_only_goes_to_a_path_of_this_site(
    monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    async with running_web(monkeypatch) as api:
        # As a browser sends it: the query string of a crafted link, percent-decoded by us.
        page = await api.client.get(f"/login?next={target}")
        form = await page.text()
        assert "evil" not in form and "e.x" not in form
        response = await api.client.post(
            "/login",
            data={
                "csrf": csrf_of(form),
                "token": "viewer-token-0123456789",
                "next": target.replace("%09", "\t").replace("%0a", "\n"),
            },
            allow_redirects=False,
        )
    assert response.status == 303
    assert response.headers["Location"] == "/"


async def test_login_next_keeps_a_local_path_and_query(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_web(monkeypatch) as api:
        form = await (await api.client.get("/login")).text()
        response = await api.client.post(
            "/login",
            data={
                "csrf": csrf_of(form),
                "token": "viewer-token-0123456789",
                "next": "/incidents/INC-1?tab=deliveries",
            },
            allow_redirects=False,
        )
    assert response.headers["Location"] == "/incidents/INC-1?tab=deliveries"


# --- /metrics -----------------------------------------------------------------------------
async def test_metrics_need_a_token_unless_public(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_web(monkeypatch, with_machine_tokens(monkeypatch)) as api:
        anonymous = await api.client.get("/metrics")
        wrong = await api.client.get("/metrics", headers=bearer("not-a-token-0123456789"))
        alerts = await api.client.get(
            "/metrics", headers=bearer(MACHINE_TOKENS["TOCSIN_TOKEN_ALERTS"])
        )
        prometheus = await api.client.get(
            "/metrics", headers=bearer(MACHINE_TOKENS["TOCSIN_TOKEN_METRICS"])
        )
        viewer = await api.client.get("/metrics", headers=auth("viewer"))
        # A metrics token reads metrics and nothing else.
        incidents = await api.client.get(
            "/api/v1/incidents", headers=bearer(MACHINE_TOKENS["TOCSIN_TOKEN_METRICS"])
        )
        assert (anonymous.status, wrong.status, alerts.status) == (401, 401, 403)
        assert (await anonymous.json())["error"] == "missing or unknown token"
        assert (prometheus.status, viewer.status, incidents.status) == (200, 200, 403)
        assert "tocsin_queue_depth" in await prometheus.text()
    public = with_machine_tokens(monkeypatch)
    public["server"] = {"metrics_public": True}
    async with running_web(monkeypatch, public) as api:
        assert (await api.client.get("/metrics")).status == 200


# --- the alerts role ----------------------------------------------------------------------
def _alert_body() -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="OrbisDown"}',
        "status": "firing",
        "receiver": "tocsin",
        "groupLabels": {"alertname": "OrbisDown"},
        "commonLabels": {"alertname": "OrbisDown"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "OrbisDown", "job": "orbis-api"},
                "annotations": {"summary": "Orbis ne répond plus"},
                "startsAt": "2026-11-29T07:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": "f1",
            }
        ],
    }


async def test_an_alerts_token_opens_drafts_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alerts = bearer(MACHINE_TOKENS["TOCSIN_TOKEN_ALERTS"])
    async with running_web(monkeypatch, with_machine_tokens(monkeypatch)) as api:
        drafted = await api.client.post(
            "/api/v1/alerts/alertmanager", json=_alert_body(), headers=alerts
        )
        assert drafted.status in (200, 201, 202), await drafted.text()
        [incident] = await api.store.list_incidents()
        assert incident.status.value == "draft"
        declared = await api.client.post("/api/v1/incidents", json=ORBIS, headers=alerts)
        confirmed = await api.client.post(
            f"/api/v1/incidents/{incident.id}/confirm", headers=alerts
        )
        resolved = await api.client.post(
            f"/api/v1/incidents/{incident.id}/resolve", json={}, headers=alerts
        )
        read = await api.client.get(f"/api/v1/incidents/{incident.id}", headers=alerts)
        assert (declared.status, confirmed.status, resolved.status, read.status) == (
            403,
            403,
            403,
            403,
        )
        [after] = await api.store.list_incidents()
        assert after.status.value == "draft"
        assert await api.store.deliveries(incident.id) == []


# --- webhooks never carry a live mention --------------------------------------------------
MENTIONS = ("<!channel>", "<!here>", "<@U0CRISIS1>", "@all", "@channel", "@here")


async def test_mentions_never_reach_a_webhook_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    async with WebhookSink() as sink:
        config = base_config(webhook_url=f"{sink.url}/hooks/T0/B0/secret")
        config["audiences"]["all-staff"]["destinations"] = [
            {"webhook": f"{sink.url}/hooks/T0/B0/secret"}
        ]
        config["default_audiences"] = ["all-staff"]
        async with running_web(monkeypatch, config, with_worker=True) as api:
            body = {**ORBIS, "title": "Orbis " + " ".join(MENTIONS)}
            response = await api.client.post(
                "/api/v1/incidents", json=body, headers=auth("responder")
            )
            assert response.status == 201
            [post] = await sink.wait_for(1)
            await settle(api.store)
    raw = json.dumps(post.body, ensure_ascii=False)
    assert "Orbis" in post.body["text"]
    for mention in MENTIONS:
        assert mention not in raw, mention


# --- acknowledgement links expire after resolution ----------------------------------------
async def test_an_ack_link_expires_after_the_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    config = base_config()
    config["delivery"] = {"ack_ttl": "0s"}
    async with running_web(monkeypatch, config) as api:
        response = await api.client.post("/api/v1/incidents", json=ORBIS, headers=auth("responder"))
        incident = (await response.json())["id"]
        [member] = [
            d
            for d in await api.store.deliveries(incident)
            if d.audience == "department-heads" and d.channel == ChannelName.EMAIL
        ]
        link = f"/ack/{api.runtime.service.tokens.token(member)}"
        assert (await api.client.get(link)).status == 200  # open incident: the link works
        resolved = await api.client.post(
            f"/api/v1/incidents/{incident}/resolve", json={}, headers=auth("responder")
        )
        assert resolved.status == 201
        assert (await api.client.get(link)).status == 404
        assert (await api.client.post(link)).status == 404
        after = await api.store.get_delivery(member.id)
        assert after is not None and after.state != DeliveryState.ACKNOWLEDGED


# --- what a viewer sees -------------------------------------------------------------------
NUMBER_FORMATS = "06 12 34 56 78, 0612345678, 0033612345678, %2B33612345678, +33612345678"
HOOK_PATH = "/hooks/T0CRISIS/B0/s3cr3t-path"


async def test_a_viewers_deliveries_hold_no_webhook_path_and_no_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_KANNEL_USER", "tocsin")
    monkeypatch.setenv("TEST_KANNEL_PASSWORD", "kannel-password")
    # Providers that refuse, naming the number (as Twilio does) and echoing the URL.
    smsbox = HttpStandin(default=Reply(400, text=f"Invalid destination {NUMBER_FORMATS}"))
    hook = HttpStandin(
        default=Reply(410, text=f"gone: http://127.0.0.1{HOOK_PATH} {NUMBER_FORMATS}")
    )
    async with smsbox, hook:
        config = base_config()
        config["channels"]["sms"] = {
            "provider": "kannel",
            "url": smsbox.url + "/cgi-bin/sendsms",
            "username_env": "TEST_KANNEL_USER",
            "password_env": "TEST_KANNEL_PASSWORD",
            "sender": "APHP",
        }
        config["audiences"]["all-staff"]["destinations"] = [{"webhook": hook.url + HOOK_PATH}]
        config["audiences"]["department-heads"]["policy"] = {"channels": ["sms"]}
        async with running_web(monkeypatch, config, with_worker=True) as api:
            response = await api.client.post(
                "/api/v1/incidents", json=ORBIS, headers=auth("responder")
            )
            incident = (await response.json())["id"]
            await settle(api.store)
            shown = await api.client.get(
                f"/api/v1/incidents/{incident}/deliveries", headers=auth("viewer")
            )
            raw = await shown.text()
            stored = [
                a.error or ""
                for attempts in (
                    await api.store.attempts([d.id for d in await api.store.deliveries(incident)])
                ).values()
                for a in attempts
            ]
    data = json.loads(raw)
    channels = {d["channel"]: d for d in data["deliveries"]}
    assert (
        channels["webhook"]["recipient"] == f"{hook.url.split('://')[0]}://127.0.0.1:{hook.port}/…"
    )
    assert channels["sms"]["recipient"] == "+33 6•• •• •• 78"
    assert channels["sms"]["state"] == "failed"
    assert any("Invalid destination" in (a["error"] or "") for a in channels["sms"]["attempts"])
    assert "s3cr3t-path" not in raw
    assert find_leaks([raw]) == []
    # Stored masked, not only shown masked.
    assert "Invalid destination +33 6•• •• •• 78" in " ".join(stored)
    assert find_leaks(stored) == []
    assert not any("s3cr3t-path" in error for error in stored)


# --- dashboard sessions -------------------------------------------------------------------
async def test_a_copied_cookie_stops_working_after_logout(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_web(monkeypatch) as api:
        csrf = await log_in(api.client, "viewer")
        jar = api.client.session.cookie_jar.filter_cookies(api.client.make_url("/"))
        copied = {COOKIE: jar[COOKIE].value}
        assert (await api.client.get("/", allow_redirects=False)).status == 200
        out = await api.client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
        assert out.status == 303
        async with browser(api) as other:
            replay = await other.get("/", cookies=copied, allow_redirects=False)
        assert replay.status == 303
        assert replay.headers["Location"].startswith("/login")


async def test_a_withdrawn_tokens_session_is_refused_on_the_next_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One database, the same deployment key: the server restarts with the viewer's token
    # withdrawn from the configuration; the browser still holds a valid signed cookie.
    monkeypatch.setenv("TOCSIN_SECRET_KEY", "deployment-key-0123456789abcdef")
    store = MemoryStore()
    async with running_web(monkeypatch, store=store) as api:
        await log_in(api.client, "viewer")
        jar = api.client.session.cookie_jar.filter_cookies(api.client.make_url("/"))
        copied = {COOKIE: jar[COOKIE].value}
        assert (await api.client.get("/", allow_redirects=False)).status == 200
    async with running_web(monkeypatch, store=store) as api:  # token still configured
        kept = await api.client.get("/", cookies=copied, allow_redirects=False)
        assert kept.status == 200
    withdrawn = base_config()
    withdrawn["auth"]["tokens"] = [
        t for t in withdrawn["auth"]["tokens"] if t["token_env"] != "TOCSIN_TOKEN_VIEWER"
    ]
    async with running_web(monkeypatch, withdrawn, store=store) as api:
        refused = await api.client.get("/", cookies=copied, allow_redirects=False)
        assert refused.status == 303
        assert refused.headers["Location"].startswith("/login")


async def test_failed_logins_and_bearer_tokens_are_throttled_per_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_web(monkeypatch) as api:
        statuses = []
        for _ in range(25):
            form = await (await api.client.get("/login")).text()
            answer = await api.client.post(
                "/login",
                data={"csrf": csrf_of(form), "token": "guess-0123456789", "next": "/"},
                allow_redirects=False,
            )
            statuses.append(answer.status)
        assert statuses[:20] == [401] * 20
        assert statuses[20:] == [429] * 5
        assert int(answer.headers["Retry-After"]) > 0
        # The right token too, from that client, until the window passes: no more guesses.
        form = await (await api.client.get("/login")).text()
        blocked = await api.client.post(
            "/login",
            data={"csrf": csrf_of(form), "token": "viewer-token-0123456789", "next": "/"},
            allow_redirects=False,
        )
        assert blocked.status == 429
        api_answer = await api.client.get("/api/v1/incidents", headers=bearer("guess-0123456789"))
        assert api_answer.status == 429
        assert "Retry-After" in api_answer.headers
        assert (await api_answer.json())["error"].startswith("too many failed attempts")


# --- declarations are bounded -------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("systems", [f"S{i}" for i in range(51)]),
        ("unaffected", ["x" * 501]),
        ("impact", ["ok", "y" * 501]),
        ("sites", [f"site {i}" for i in range(51)]),
        ("claims", ["no_patient_impact"] * 51),
        ("audiences", ["all-staff"] * 51),
    ],
)
async def test_oversized_declaration_lists_get_422_and_change_nothing(
    monkeypatch: pytest.MonkeyPatch, key: str, value: list[str]
) -> None:
    async with running_web(monkeypatch) as api:
        response = await api.client.post(
            "/api/v1/incidents", json={**ORBIS, key: value}, headers=auth("responder")
        )
        assert response.status == 422
        body = await response.json()
        assert key in body["detail"]
        assert await api.store.list_incidents() == []


# --- the public page is served from a cache emptied on publication ------------------------
class CountingStore(MemoryStore):
    """A memory store that counts the reads the public page makes."""

    reads = 0

    async def statements(self, incident_id: str) -> Any:
        self.reads += 1
        return await super().statements(incident_id)


async def test_the_status_page_is_cached_until_a_publication(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = CountingStore()
    async with running_web(monkeypatch, store=store) as api:
        response = await api.client.post("/api/v1/incidents", json=ORBIS, headers=auth("responder"))
        incident = (await response.json())["id"]
        first = await (await api.client.get("/status")).text()
        reads = store.reads
        for _ in range(5):
            assert await (await api.client.get("/status")).text() == first
        assert store.reads == reads  # served from the cache
        [press] = [
            s
            for s in await store.statements(incident)
            if s.kind.value == "press" and s.locale == "fr"
        ]
        approved = await api.client.post(
            f"/api/v1/statements/{press.id}/approve", headers=auth("press")
        )
        assert approved.status == 200
        [public] = [
            s
            for s in await store.statements(incident)
            if s.kind.value == "public" and s.locale == "fr"
        ]
        after = await (await api.client.get("/status")).text()
        assert public.text.splitlines()[0] not in first
        assert public.text.splitlines()[0] in after  # at once, not after the cache's lifetime
