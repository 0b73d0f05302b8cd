"""Slack inbound, end to end: really signed requests to ``POST /slack/events`` of the real app,
slack-bolt and slack_sdk for real, the local Slack sandbox as the Web API, a memory store and
the real worker.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import RUNTIME, Runtime, build_app
from bot.config import settings_from_dict
from bot.domain.clock import FakeClock
from bot.domain.models import (
    Actor,
    Delivery,
    DeliveryState,
    IncidentStatus,
    Outcome,
    Role,
    StatementKind,
    StatementStatus,
)
from bot.interfaces.slack_app import SLACK, SlackInbound
from bot.interfaces.slack_progress import SlackProgress
from bot.store.memory import MemoryStore
from tests.factories import T0, declaration
from tocsin_sandbox.slack_api import SlackMessage, SlackSandbox

TOKEN = "xoxb-tocsin-test"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CLAIRE_TOKEN = "claire-press-token-0123456789"
CLAIRE_CELL_TOKEN = "claire-cell-token-0123456789"
PRESS_TEXT = "Un problème technique touche le réseau. Aucun impact patient."
LIVE_MENTION = re.compile(r"<(!channel|!here|!everyone|!subteam[^>]*|@[UW][A-Z0-9]+[^>]*)>")


def config(api_url: str) -> dict[str, Any]:
    return {
        "organisation": {
            "name": "AP-HP",
            "locale": "fr",
            "locales": ["fr", "en"],
            "timezone": "Europe/Paris",
        },
        "auth": {
            "slack_users": {
                "U0CRISIS1": "responder",
                "U0PRESS1": "press",
                "U0PRESS2": "press",
                "U0PRESS3": {"role": "press", "person": "claire"},
                "S0ONCALL": "responder",
            },
            # Claire also has an API token: four-eyes must see one person, not two names.
            "tokens": [
                {
                    "name": "press-api",
                    "token_env": "TEST_PRESS_API_TOKEN",
                    "role": "press",
                    "person": "claire",
                },
                {
                    "name": "cell-api",
                    "token_env": "TEST_CELL_API_TOKEN",
                    "role": "responder",
                    "person": "claire",
                },
            ],
        },
        "delivery": {
            "poll_interval": "50ms",
            "backoff_base": "20ms",
            "backoff_max": "50ms",
            "max_attempts": 100,
        },
        "channels": {"slack": {"api_url": api_url, "press_channel": "C0PRESS"}},
        "audiences": {
            "crisis-cell": {
                "statement": "internal",
                "destinations": [{"slack_channel": "C0CRISIS"}],
            },
            "all-staff": {"statement": "internal", "destinations": [{"slack_channel": "C0STAFF"}]},
            "department-heads": {
                "statement": "department_heads",
                "policy": {"channels": ["slack"], "require_ack": True},
                "members": [{"name": "Dr A. Martin", "slack": "U0HEAD1", "locale": "fr"}],
            },
            "press": {"statement": "press", "destinations": [{"slack_channel": "C0PRESS"}]},
        },
        "default_audiences": ["crisis-cell", "all-staff", "department-heads"],
    }


@dataclass
class Tocsin:
    """The running app, as Slack and a test see it."""

    client: TestClient[Any, Any]
    slack: SlackSandbox
    store: MemoryStore
    runtime: Runtime
    inbound: SlackInbound

    async def post(
        self,
        body: str,
        *,
        content_type: str = "application/x-www-form-urlencoded",
        headers: dict[str, str] | None = None,
        secret: str = SECRET,
        timestamp: int | None = None,
    ) -> Any:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
        sent = {
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
            "Content-Type": content_type,
        }
        sent.update(headers or {})
        return await self.client.post("/slack/events", data=body.encode(), headers=sent)

    async def command(self, text: str, user: str = "U0CRISIS1", key: str = "cmd") -> Any:
        response = await self.post(command_body(self.slack, text, user, key))
        await self.inbound.idle()
        return response

    async def interact(self, payload: dict[str, Any]) -> Any:
        response = await self.post(urlencode({"payload": json.dumps(payload)}))
        await self.inbound.idle()
        return response

    def replies(self, key: str) -> list[str]:
        return [str(post.body.get("text")) for post in self.slack.responses if post.key == key]


def command_body(slack: SlackSandbox, text: str, user: str = "U0CRISIS1", key: str = "cmd") -> str:
    return urlencode(
        {
            "token": "legacy",
            "team_id": "T0SANDBOX",
            "team_domain": "aphp",
            "channel_id": "C0CRISIS",
            "channel_name": "cellule-crise",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/incident",
            "text": text,
            "api_app_id": "A0TOCSIN",
            "is_enterprise_install": "false",
            "response_url": slack.response_url(key),
            "trigger_id": f"trigger-{key}",
        }
    )


@pytest.fixture
async def tocsin(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Tocsin]:
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("TEST_PRESS_API_TOKEN", CLAIRE_TOKEN)
    monkeypatch.setenv("TEST_CELL_API_TOKEN", CLAIRE_CELL_TOKEN)
    async with SlackSandbox(token=TOKEN) as slack:
        store = MemoryStore()
        app = build_app(settings_from_dict(config(slack.api_url)), store=store, with_scheduler=True)
        async with TestClient(TestServer(app)) as client:
            inbound = app[SLACK]
            assert inbound.progress is not None
            yield Tocsin(client, slack, store, app[RUNTIME], inbound)


async def settle(tocsin: Tocsin) -> None:
    """Wait until the worker has nothing queued, sending or retrying (the store wakes us)."""
    async with asyncio.timeout(15):
        while await tocsin.store.pending_count() > 0:
            await tocsin.store.wait_for_work(0.2)


def _button(message: SlackMessage, action_id: str) -> dict[str, Any]:
    for block in message.blocks:
        for element in block.get("elements", []) if block["type"] == "actions" else []:
            if element["action_id"] == action_id:
                return dict(element)
    raise AssertionError(f"no {action_id} button in {message.blocks}")


# --- request checks ----------------------------------------------------------------------
async def test_a_forged_signature_gets_401_and_changes_nothing(tocsin: Tocsin) -> None:
    response = await tocsin.post(
        command_body(tocsin.slack, "declare Orbis critical panne"), secret="not-the-secret"
    )

    assert response.status == 401
    assert await response.json() == {"error": "invalid request"}
    assert await tocsin.store.list_incidents() == []
    assert tocsin.slack.calls == []


async def test_missing_signature_headers_get_401(tocsin: Tocsin) -> None:
    response = await tocsin.client.post(
        "/slack/events",
        data=command_body(tocsin.slack, "declare Orbis critical panne"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status == 401
    assert await tocsin.store.list_incidents() == []


async def test_a_six_minute_old_request_gets_401(tocsin: Tocsin) -> None:
    response = await tocsin.post(
        command_body(tocsin.slack, "declare Orbis critical panne"), timestamp=int(time.time()) - 360
    )

    assert response.status == 401
    assert await tocsin.store.list_incidents() == []


async def test_a_replayed_request_gets_401_and_declares_nothing_twice(tocsin: Tocsin) -> None:
    body = command_body(tocsin.slack, "declare Orbis critical panne")
    stamp = int(time.time())

    first = await tocsin.post(body, timestamp=stamp)
    replay = await tocsin.post(body, timestamp=stamp)
    await tocsin.inbound.idle()

    assert first.status == 200
    assert replay.status == 401
    assert len(await tocsin.store.list_incidents()) == 1


async def test_a_tampered_body_gets_401(tocsin: Tocsin) -> None:
    stamp = str(int(time.time()))
    signed_for = command_body(tocsin.slack, "status")
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=signed_for)
    response = await tocsin.client.post(
        "/slack/events",
        data=command_body(tocsin.slack, "declare Orbis critical panne"),
        headers={
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )

    assert response.status == 401
    assert await tocsin.store.list_incidents() == []


# --- /incident ---------------------------------------------------------------------------
async def test_declare_inline_declares_and_answers_ephemerally(tocsin: Tocsin) -> None:
    response = await tocsin.command("declare Orbis critical Orbis est indisponible")

    assert response.status == 200
    [incident] = await tocsin.store.list_incidents()
    assert incident.title == "Orbis est indisponible"
    assert incident.systems == ("Orbis",)
    assert incident.declared_by == "slack:U0CRISIS1"
    [reply] = tocsin.slack.responses
    assert reply.body["response_type"] == "ephemeral"
    assert reply.body["text"].startswith(f"Declared {incident.id}: Orbis est indisponible")


async def test_help_and_bad_commands_get_the_usage_at_once(tocsin: Tocsin) -> None:
    for text in ("help", "frobnicate now", "declare Orbis apocalyptic panne", "update"):
        response = await tocsin.command(text)

        assert response.status == 200
        assert "Usage:" in (await response.json())["text"], text
    assert await tocsin.store.list_incidents() == []


async def test_someone_not_on_the_allow_list_is_refused(tocsin: Tocsin) -> None:
    response = await tocsin.command("declare Orbis critical panne", user="U0INTRUDER")

    assert "not allowed" in (await response.json())["text"]
    assert await tocsin.store.list_incidents() == []


async def test_a_user_group_on_the_allow_list_lets_its_members_in(tocsin: Tocsin) -> None:
    tocsin.slack.groups["S0ONCALL"] = ["U0ONCALL7"]

    await tocsin.command("declare Web major Site lent", user="U0ONCALL7")

    [incident] = await tocsin.store.list_incidents()
    assert incident.declared_by == "slack:U0ONCALL7"


async def test_status_update_and_resolve(tocsin: Tocsin) -> None:
    await tocsin.command("declare Orbis critical Orbis est indisponible", key="declare")
    [incident] = await tocsin.store.list_incidents()

    await tocsin.command("status", key="list")
    await tocsin.command(f"status {incident.id}", key="one")
    await tocsin.command(f"update {incident.id} identified Switch réseau défaillant", key="up")
    assert (await tocsin.store.get_incident(incident.id)).status == IncidentStatus.IDENTIFIED
    await tocsin.command(f"resolve {incident.id}", key="resolve")
    await tocsin.command("resolve INC-1999-0101-01", key="unknown")

    assert tocsin.replies("list") == [
        f"{incident.id} [investigating, critical] Orbis est indisponible"
    ]
    assert tocsin.replies("one")[0].startswith(f"{incident.id} [investigating, critical]")
    assert "Deliveries:" in tocsin.replies("one")[0]
    assert tocsin.replies("up") == [f"{incident.id} updated: identified."]
    assert tocsin.replies("resolve") == [f"{incident.id} resolved."]
    assert tocsin.replies("unknown") == ["no incident INC-1999-0101-01"]
    assert (await tocsin.store.get_incident(incident.id)).status == IncidentStatus.RESOLVED


async def test_declare_alone_opens_the_form(tocsin: Tocsin) -> None:
    response = await tocsin.command("declare", key="form")

    assert response.status == 200
    [call] = tocsin.slack.calls_to("views.open")
    assert call.args["trigger_id"] == "trigger-form"
    view = call.args["view"]
    assert view["callback_id"] == "tocsin_declare"
    assert {b["block_id"] for b in view["blocks"]} >= {
        "title",
        "systems",
        "severity",
        "impact",
        "sites",
        "unaffected",
        "cause",
        "audiences",
        "locale",
    }
    assert json.loads(view["private_metadata"])["response_url"] == tocsin.slack.response_url("form")


def _submission(tocsin: Tocsin, values: dict[str, Any], user: str = "U0CRISIS1") -> dict[str, Any]:
    def field(value: Any) -> dict[str, Any]:
        if isinstance(value, list):
            return {
                "type": "multi_static_select",
                "selected_options": [{"value": v} for v in value],
            }
        if isinstance(value, dict):
            return {"type": "static_select", "selected_option": value}
        return {"type": "plain_text_input", "value": value}

    return {
        "type": "view_submission",
        "team": {"id": "T0SANDBOX"},
        "api_app_id": "A0TOCSIN",
        "user": {"id": user, "username": user.lower(), "team_id": "T0SANDBOX"},
        "trigger_id": "trigger-submit",
        "view": {
            "id": "V0001",
            "type": "modal",
            "callback_id": "tocsin_declare",
            "team_id": "T0SANDBOX",
            "private_metadata": json.dumps({"response_url": tocsin.slack.response_url("form")}),
            "state": {"values": {k: {k: field(v)} for k, v in values.items()}},
        },
    }


async def test_the_form_submission_declares(tocsin: Tocsin) -> None:
    response = await tocsin.interact(
        _submission(
            tocsin,
            {
                "title": "Panne Orbis",
                "systems": "Orbis, Site web",
                "severity": {"value": "critical"},
                "impact": "Prescriptions sur papier\nRésultats par téléphone",
                "sites": "Bichat",
                "unaffected": "SAMU",
                "cause": {"value": "technical"},
                "audiences": ["crisis-cell"],
                "locale": {"value": "fr"},
                "claims": ["no_patient_impact"],
            },
        )
    )

    assert response.status == 200
    [incident] = await tocsin.store.list_incidents()
    assert (incident.title, incident.systems, incident.severity.value) == (
        "Panne Orbis",
        ("Orbis", "Site web"),
        "critical",
    )
    assert incident.impact == ("Prescriptions sur papier", "Résultats par téléphone")
    assert (incident.sites, incident.unaffected, incident.cause) == (
        ("Bichat",),
        ("SAMU",),
        "technical",
    )
    assert incident.audiences == ("crisis-cell",)
    assert incident.claims == ("no_patient_impact",)
    assert tocsin.replies("form")[0].startswith(f"Declared {incident.id}")


@pytest.mark.parametrize(
    ("values", "errors"),
    [
        (
            {"title": "Panne", "severity": {"value": "critical"}},
            {"systems": "required, at least one affected system"},
        ),
        (
            {
                "title": "Panne",
                "systems": "Orbis",
                "severity": {"value": "critical"},
                "locale": {"value": "de"},
            },
            {"locale": "one of fr, en"},
        ),
        (
            {
                "title": "Panne",
                "systems": "Orbis",
                "severity": {"value": "critical"},
                "audiences": ["nobody"],
            },
            {"audiences": "unknown audience(s): nobody"},
        ),
    ],
)
async def test_an_invalid_form_shows_errors_in_the_form(
    tocsin: Tocsin, values: dict[str, Any], errors: dict[str, str]
) -> None:
    response = await tocsin.interact(_submission(tocsin, values))

    assert await response.json() == {"response_action": "errors", "errors": errors}
    assert await tocsin.store.list_incidents() == []


async def test_the_form_refuses_someone_not_allowed(tocsin: Tocsin) -> None:
    response = await tocsin.interact(
        _submission(
            tocsin,
            {"title": "Panne", "systems": "Orbis", "severity": {"value": "minor"}},
            user="U0NOBODY",
        )
    )

    answer = await response.json()
    assert answer["response_action"] == "errors"
    assert "not allowed" in answer["errors"]["title"]
    assert await tocsin.store.list_incidents() == []


# --- the press draft ---------------------------------------------------------------------
def _action(
    tocsin: Tocsin,
    action_id: str,
    value: str,
    user: str,
    key: str,
    message: SlackMessage | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "block_actions",
        "team": {"id": "T0SANDBOX"},
        "api_app_id": "A0TOCSIN",
        "user": {"id": user, "username": user.lower(), "team_id": "T0SANDBOX"},
        "trigger_id": f"trigger-{key}",
        "response_url": tocsin.slack.response_url(key),
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "b",
                "value": value,
                "action_ts": "1693400001.000001",
            }
        ],
    }
    if message is not None:
        payload["container"] = {
            "type": "message",
            "message_ts": message.ts,
            "channel_id": message.channel,
            "is_ephemeral": False,
        }
        payload["channel"] = {"id": message.channel}
        payload["message"] = {
            "type": "message",
            "ts": message.ts,
            "text": message.text,
            "blocks": message.blocks,
        }
    return payload


async def test_press_draft_edit_and_four_eyes_approval(tocsin: Tocsin) -> None:
    await tocsin.command("declare Orbis critical Orbis est indisponible")
    [incident] = await tocsin.store.list_incidents()

    await tocsin.command(f"press {incident.id}", user="U0PRESS1", key="press")

    [posted] = [m for m in tocsin.slack.messages if m.channel == "C0PRESS"]
    assert tocsin.replies("press") == ["Press statement draft posted in <#C0PRESS>."]
    draft_id = _button(posted, "tocsin_press_approve")["value"]
    assert _button(posted, "tocsin_press_edit")["value"] == draft_id

    # The press officer edits: a modal, then a new version that they authored.
    await tocsin.interact(
        _action(tocsin, "tocsin_press_edit", draft_id, "U0PRESS1", "edit", posted)
    )
    [opened] = tocsin.slack.calls_to("views.open")
    metadata = opened.args["view"]["private_metadata"]
    await tocsin.interact(
        {
            "type": "view_submission",
            "team": {"id": "T0SANDBOX"},
            "api_app_id": "A0TOCSIN",
            "user": {"id": "U0PRESS1", "team_id": "T0SANDBOX"},
            "view": {
                "id": "V2",
                "type": "modal",
                "callback_id": "tocsin_press_edit",
                "private_metadata": metadata,
                "state": {
                    "values": {
                        "text": {
                            "text": {
                                "type": "plain_text_input",
                                "value": PRESS_TEXT,
                            }
                        }
                    }
                },
            },
        }
    )
    edited = max(
        (
            s
            for s in await tocsin.store.statements(incident.id)
            if s.kind == StatementKind.PRESS and s.locale == "fr"
        ),
        key=lambda s: s.version,
    )
    assert edited.text == PRESS_TEXT
    assert (edited.version, edited.author, edited.status) == (
        2,
        "slack:U0PRESS1",
        StatementStatus.DRAFT,
    )
    [replaced] = [p.body for p in tocsin.slack.responses if p.key == "edit"]
    assert replaced["replace_original"] is True
    assert any(
        e.get("value") == edited.id for b in replaced["blocks"] for e in b.get("elements", [])
    )

    # Its author cannot approve it…
    await tocsin.interact(_action(tocsin, "tocsin_press_approve", edited.id, "U0PRESS1", "self"))
    assert "four-eyes" in tocsin.replies("self")[0]
    assert (await tocsin.store.get_statement(edited.id)).status == StatementStatus.DRAFT

    # …a second press officer can, and the message shows it without buttons.
    await tocsin.interact(_action(tocsin, "tocsin_press_approve", edited.id, "U0PRESS2", "ok"))
    approved = await tocsin.store.get_statement(edited.id)
    assert (approved.status, approved.approved_by) == (StatementStatus.PUBLISHED, "slack:U0PRESS2")
    [shown] = [p.body for p in tocsin.slack.responses if p.key == "ok"]
    assert shown["replace_original"] is True
    assert "approved by slack:U0PRESS2" in shown["blocks"][0]["text"]["text"]
    assert all(b["type"] != "actions" for b in shown["blocks"])


async def test_the_same_person_cannot_edit_in_the_api_and_approve_in_slack(
    tocsin: Tocsin,
) -> None:
    await tocsin.command("declare Orbis critical Orbis est indisponible")
    [incident] = await tocsin.store.list_incidents()
    [draft] = [
        s
        for s in await tocsin.store.statements(incident.id)
        if s.kind == StatementKind.PRESS and s.locale == "fr"
    ]
    claire = {"Authorization": f"Bearer {CLAIRE_TOKEN}"}

    edited = await tocsin.client.put(
        f"/api/v1/statements/{draft.id}", json={"text": PRESS_TEXT}, headers=claire
    )
    assert edited.status == 200
    version = await edited.json()
    assert version["author"] == "claire"

    # Claire's Slack account is Claire: her own edit is not hers to approve.
    await tocsin.interact(
        _action(tocsin, "tocsin_press_approve", version["id"], "U0PRESS3", "same")
    )
    assert "four-eyes" in tocsin.replies("same")[0]
    assert (await tocsin.store.get_statement(version["id"])).status == StatementStatus.DRAFT
    # Nor through the API with the token, nor the other way round.
    again = await tocsin.client.post(f"/api/v1/statements/{version['id']}/approve", headers=claire)
    assert again.status == 403
    assert (await tocsin.store.get_statement(version["id"])).status == StatementStatus.DRAFT
    # Someone else may.
    await tocsin.interact(_action(tocsin, "tocsin_press_approve", version["id"], "U0PRESS2", "ok"))
    approved = await tocsin.store.get_statement(version["id"])
    assert (approved.status, approved.approved_by) == (StatementStatus.PUBLISHED, "slack:U0PRESS2")


async def test_a_press_approval_does_not_publish_a_public_twin_its_approver_wrote(
    tocsin: Tocsin,
) -> None:
    # Claire declares with her responder token (she is the author of the drafts), a press
    # officer rewrites the press draft, and Claire approves it with her press token: the
    # public twin she wrote stays a draft.
    declared = await tocsin.client.post(
        "/api/v1/incidents",
        json={"title": "Orbis indisponible", "systems": ["Orbis"], "severity": "critical"},
        headers={"Authorization": f"Bearer {CLAIRE_CELL_TOKEN}"},
    )
    assert declared.status == 201
    incident_id = (await declared.json())["id"]
    [press] = [
        s
        for s in await tocsin.store.statements(incident_id)
        if s.kind == StatementKind.PRESS and s.locale == "fr"
    ]
    assert press.author == "claire"
    edited = await tocsin.runtime.service.edit_statement(
        Actor("slack:U0PRESS1", Role.PRESS), press.id, PRESS_TEXT
    )
    claire = {"Authorization": f"Bearer {CLAIRE_TOKEN}"}

    approved = await tocsin.client.post(f"/api/v1/statements/{edited.id}/approve", headers=claire)

    assert approved.status == 200
    [public] = [
        s
        for s in await tocsin.store.statements(incident_id)
        if s.kind == StatementKind.PUBLIC and s.locale == "fr"
    ]
    assert public.author == "claire"
    assert public.status == StatementStatus.DRAFT


async def test_approve_by_someone_without_the_press_role_is_refused(tocsin: Tocsin) -> None:
    await tocsin.command("declare Orbis critical Orbis est indisponible")
    [incident] = await tocsin.store.list_incidents()
    [draft] = [
        s
        for s in await tocsin.store.statements(incident.id)
        if s.kind == StatementKind.PRESS and s.locale == "fr"
    ]

    await tocsin.interact(_action(tocsin, "tocsin_press_approve", draft.id, "U0CRISIS1", "r"))
    await tocsin.interact(_action(tocsin, "tocsin_press_approve", draft.id, "U0NOBODY", "n"))

    assert tocsin.replies("r")[0].startswith("Refused:")
    assert "not allowed" in tocsin.replies("n")[0]
    assert (await tocsin.store.get_statement(draft.id)).status == StatementStatus.DRAFT


# --- deliveries: the acknowledge button, the progress message, mentions ------------------
async def test_the_acknowledge_button_acknowledges_the_delivery(tocsin: Tocsin) -> None:
    await tocsin.command("declare Orbis critical Orbis est indisponible")
    await tocsin.slack.wait_until(
        lambda: any(m.channel == "D0HEAD1" for m in tocsin.slack.messages)
    )
    [dm] = [m for m in tocsin.slack.messages if m.channel == "D0HEAD1"]
    token = _button(dm, "tocsin_ack")["value"]

    response = await tocsin.interact(_action(tocsin, "tocsin_ack", token, "U0HEAD1", "ack", dm))

    assert response.status == 200
    delivery = await tocsin.runtime.service.acknowledgements.find(token)
    assert delivery is not None
    assert delivery.state == DeliveryState.ACKNOWLEDGED
    assert delivery.acknowledged_by == "slack:U0HEAD1"
    updated = tocsin.slack.message("D0HEAD1", dm.ts)
    assert updated is not None
    assert updated.updates == 1
    assert all(b["type"] != "actions" for b in updated.blocks)
    assert "Pris en compte par <@U0HEAD1> le " in updated.blocks[-1]["elements"][0]["text"]


async def test_the_acknowledge_button_pressed_by_someone_else_changes_nothing(
    tocsin: Tocsin,
) -> None:
    await tocsin.command("declare Orbis critical Orbis est indisponible")
    await tocsin.slack.wait_until(
        lambda: any(m.channel == "D0HEAD1" for m in tocsin.slack.messages)
    )
    [dm] = [m for m in tocsin.slack.messages if m.channel == "D0HEAD1"]
    token = _button(dm, "tocsin_ack")["value"]

    response = await tocsin.interact(_action(tocsin, "tocsin_ack", token, "U0CRISIS1", "other", dm))

    assert response.status == 200
    delivery = await tocsin.runtime.service.acknowledgements.find(token)
    assert delivery is not None
    assert delivery.state != DeliveryState.ACKNOWLEDGED
    assert tocsin.replies("other") == [f"This button is for {delivery.recipient}."]
    assert tocsin.slack.calls_to("chat.update") == []


async def test_an_unknown_acknowledgement_token_changes_nothing(tocsin: Tocsin) -> None:
    await tocsin.interact(_action(tocsin, "tocsin_ack", "forged-token", "U0HEAD1", "ack"))

    assert tocsin.replies("ack") == ["unknown or expired acknowledgement link"]
    assert tocsin.slack.calls_to("chat.update") == []


def _progress(tocsin: Tocsin) -> list[SlackMessage]:
    return [
        m
        for m in tocsin.slack.messages
        if m.channel == "C0CRISIS"
        and m.blocks
        and m.blocks[0]["text"]["text"].startswith("*Diffusion")
    ]


async def test_the_progress_message_is_updated_in_place(tocsin: Tocsin) -> None:
    tocsin.slack.fail("C0STAFF", "internal_error")  # transient: keeps one delivery pending
    await tocsin.command("declare Orbis critical Orbis est indisponible")
    await tocsin.slack.wait_until(lambda: bool(_progress(tocsin)))
    assert "en cours" in _progress(tocsin)[0].blocks[0]["text"]["text"]

    tocsin.slack.clear_failures()
    await settle(tocsin)
    await tocsin.slack.wait_until(
        lambda: "Diffusion terminée" in _progress(tocsin)[0].blocks[0]["text"]["text"]
    )

    [progress] = _progress(tocsin)  # one message, never re-posted
    assert progress.updates >= 1
    text = progress.blocks[0]["text"]["text"]
    assert "• *all-staff*: delivered 1" in text
    assert "• *department-heads*: delivered 1" in text
    updates = [c for c in tocsin.slack.calls_to("chat.update") if c.args["channel"] == "C0CRISIS"]
    assert {c.args["ts"] for c in updates} == {progress.ts}


async def test_incident_text_never_reaches_slack_as_a_live_mention(tocsin: Tocsin) -> None:
    await tocsin.command("declare Orbis critical <!channel> Orbis <@U0CRISIS2> <!subteam^S0X>")
    await settle(tocsin)
    await tocsin.slack.wait_until(lambda: bool(_progress(tocsin)))

    outgoing = [c for c in tocsin.slack.calls if c.method.startswith("chat.")]
    assert len(outgoing) >= 4
    for call in outgoing:
        posted = json.dumps({"text": call.args.get("text"), "blocks": call.args.get("blocks")})
        assert LIVE_MENTION.search(posted) is None, posted
    replies = tocsin.replies("cmd")
    assert LIVE_MENTION.search(replies[0]) is None
    assert "&lt;!channel&gt;" in replies[0]


# --- Events API --------------------------------------------------------------------------
def _mention_event(event_id: str, text: str) -> str:
    return json.dumps(
        {
            "token": "legacy",
            "team_id": "T0SANDBOX",
            "api_app_id": "A0TOCSIN",
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "event": {
                "type": "app_mention",
                "user": "U0CRISIS1",
                "text": f"<@U0TOCSIN> {text}",
                "ts": "1693400100.000100",
                "channel": "C0CRISIS",
                "event_ts": "1693400100.0001",
            },
        }
    )


async def test_event_retries_are_deduplicated(tocsin: Tocsin) -> None:
    body = _mention_event("Ev0001", "declare Orbis critical Orbis est indisponible")

    first = await tocsin.post(body, content_type="application/json", timestamp=int(time.time()) - 2)
    await tocsin.inbound.idle()
    # Slack signs each retry afresh: not a replay, but the same event.
    retry = await tocsin.post(
        body,
        content_type="application/json",
        headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"},
    )
    await tocsin.inbound.idle()

    assert (first.status, retry.status) == (200, 200)
    assert retry.headers.get("X-Slack-No-Retry") == "1"
    assert len(await tocsin.store.list_incidents()) == 1
    threaded = [c for c in tocsin.slack.calls_to("chat.postMessage") if c.args.get("thread_ts")]
    assert len(threaded) == 1
    assert threaded[0].args["text"].startswith("Declared INC-")


async def test_no_progress_message_where_the_bot_cannot_post(tocsin: Tocsin) -> None:
    tocsin.slack.fail("C0CRISIS", "not_in_channel")

    await tocsin.command("declare Orbis critical Orbis est indisponible")
    await settle(tocsin)
    await tocsin.inbound.idle()

    def posts() -> list[Any]:
        return [
            c for c in tocsin.slack.calls_to("chat.postMessage") if c.args["channel"] == "C0CRISIS"
        ]

    # One try for the delivery (failed: not_in_channel), one for the progress message; no more.
    await tocsin.slack.wait_until(lambda: len(posts()) == 2)
    assert tocsin.inbound.progress is not None
    await tocsin.inbound.progress.tick()
    await tocsin.inbound.progress.tick()
    assert len(posts()) == 2
    staff = [m for m in tocsin.slack.messages if m.channel == "C0STAFF"]
    assert len(staff) == 1  # the rest of the fan-out went on


async def test_progress_follows_the_store_and_survives_a_restart() -> None:
    async with SlackSandbox(token=TOKEN) as slack, aiohttp.ClientSession() as session:
        store = MemoryStore()
        await store.open()
        await store.commit(declaration(3))
        [first, *rest] = await store.claim_due("w", T0 + timedelta(days=1), 60, 10)
        client = AsyncWebClient(token=TOKEN, base_url=slack.api_url, session=session)
        progress = SlackProgress(client, store, "C0CRISIS", FakeClock(), locale="en")

        def done(delivery: Delivery) -> Outcome:
            return Outcome(delivery.id, DeliveryState.DELIVERED, (), lease_owner="w")

        # Outcomes recorded by any process (here: straight into the store) are what counts.
        await store.record([done(first)])
        await progress.tick()
        [post] = slack.calls_to("chat.postMessage")
        assert "Total 3 · 2 pending" in post.args["blocks"][0]["text"]["text"]
        [message] = slack.messages

        await progress.tick()  # nothing moved: no update
        assert slack.calls_to("chat.update") == []

        await store.record([done(d) for d in rest])
        restarted = SlackProgress(client, store, "C0CRISIS", FakeClock(), locale="en")
        await restarted.tick()  # another process (a restarted serve) updates the same message
        [update] = slack.calls_to("chat.update")
        assert (update.args["channel"], update.args["ts"]) == ("C0CRISIS", message.ts)
        assert "Delivery complete" in update.args["blocks"][0]["text"]["text"]
        await restarted.tick()  # the final update is out: nothing more
        await progress.tick()
        assert [c.method for c in slack.calls] == ["chat.postMessage", "chat.update"]
        await store.close()
