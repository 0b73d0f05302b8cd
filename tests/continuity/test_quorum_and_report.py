"""Site confirmation quorum (with a fake clock) and the post-incident report."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bot.app import Runtime, build_dispatcher, open_runtime
from bot.config import settings_from_dict
from bot.delivery.worker import Dispatcher
from bot.domain.clock import FakeClock
from bot.domain.declarations import IncidentDraft
from bot.domain.errors import PermanentError
from bot.domain.models import Actor, ChannelName, DeliveryState, Role
from bot.domain.quorum import escalate_sites, site_views
from bot.domain.report import build_report
from bot.interfaces.report_format import to_html, to_markdown
from bot.store.memory import MemoryStore
from tests.fakes.channels import RecordingChannel

CONFIG: dict[str, Any] = {
    "organisation": {"name": "AP-HP", "locale": "fr"},
    "channels": {"telegram": {}, "email": {"host": "127.0.0.1", "port": 25}},
    "audiences": {
        "department-heads": {
            "statement": "department_heads",
            "policy": {
                "channels": ["telegram", "email"],
                "require_ack": True,
                "escalate_after": "10m",
                "escalate_via": "email",
                "confirm_per_site": 1,
            },
            "members": [
                {
                    "name": "Dr Martin",
                    "site": "Nord",
                    "telegram": 1001,
                    "email": "martin@example.org",
                },
                {
                    "name": "Dr Nguyen",
                    "site": "Nord",
                    "email": "nguyen@example.org",
                    "deputy": True,
                },
                {
                    "name": "Pr Diallo",
                    "site": "Sud",
                    "telegram": 1004,
                    "email": "diallo@example.org",
                },
                {
                    "name": "Dr Lefebvre",
                    "site": "Sud",
                    "email": "lefebvre@example.org",
                    "deputy": True,
                },
            ],
        },
    },
    "default_audiences": ["department-heads"],
}
CELL = Actor("cellule", Role.RESPONDER)


@asynccontextmanager
async def runtime() -> AsyncIterator[tuple[Runtime, Dispatcher, FakeClock, dict]]:
    clock = FakeClock()
    channels = {
        ChannelName.TELEGRAM: RecordingChannel(ChannelName.TELEGRAM),
        ChannelName.EMAIL: RecordingChannel(ChannelName.EMAIL),
    }
    async with open_runtime(
        settings_from_dict(CONFIG),
        clock=clock,
        store=MemoryStore(),
        channel_factory=lambda _s, _session: dict(channels),
    ) as rt:
        yield rt, build_dispatcher(rt), clock, channels


async def declare(rt: Runtime) -> str:
    draft = IncidentDraft.from_mapping(
        {
            "title": "Orbis indisponible",
            "systems": ["Orbis"],
            "severity": "critical",
            "sites": ["Nord", "Sud"],
            "claims": ["no_patient_impact"],
        }
    )
    return (await rt.service.declare(CELL, draft)).id


async def test_a_site_without_confirmation_escalates_to_its_deputies() -> None:
    async with runtime() as (rt, worker, clock, channels):
        incident = await declare(rt)
        await worker.drain()
        sent = channels[ChannelName.TELEGRAM].sent
        assert sorted(m.recipient for _, m in sent) == ["Dr Martin", "Pr Diallo"]
        martin = next(m for _, m in sent if m.recipient == "Dr Martin")
        clock.advance(120)
        await rt.service.acknowledge(martin.ack_token, by="Dr Martin")
        views = {v.site: v for v in await site_views(rt.service, incident)}
        assert (views["Nord"].confirmed, [n for n, _ in views["Nord"].by]) == (1, ["Dr Martin"])
        assert views["Sud"].confirmed == 0

        clock.advance(10 * 60 - 121)  # 599 s after the declaration
        assert await escalate_sites(rt.service) == []
        clock.advance(2)
        assert await escalate_sites(rt.service) == [(incident, "Sud")]
        assert await escalate_sites(rt.service) == []  # once per site
        await worker.drain()
        emails = channels[ChannelName.EMAIL].sent
        assert [m.address for _, m in emails] == ["lefebvre@example.org"]
        views = {v.site: v for v in await site_views(rt.service, incident)}
        assert views["Sud"].escalated and not views["Nord"].escalated
        timeline = await rt.store.timeline(incident)
        assert timeline[-1].action == "site_escalated"
        assert timeline[-1].detail["deputies"] == ["Dr Lefebvre"]


async def test_report_numbers_equal_the_deliveries_table() -> None:
    async with runtime() as (rt, worker, clock, channels):
        incident = await declare(rt)
        channels[ChannelName.TELEGRAM].per_address["1004"] = deque(
            [PermanentError("Forbidden: bot was blocked by the user", "403")]
        )
        clock.advance(30)
        await worker.drain()
        sent = channels[ChannelName.TELEGRAM].sent
        clock.advance(60)
        await rt.service.acknowledge(sent[0][1].ack_token, by="Dr Martin")
        report = await build_report(rt.service, incident)
        counts = await rt.store.delivery_counts(incident)
        assert {k: v for k, v in report["deliveries"]["by_state"].items() if v} == counts
        groups = {(g["audience"], g["channel"]): g for g in report["deliveries"]["groups"]}
        assert sum(g["total"] for g in groups.values()) == report["deliveries"]["total"]
        telegram = groups[("department-heads", "telegram")]
        assert (telegram["acknowledged"], telegram["failed"]) == (1, 1)
        assert telegram["first_delivery_s"] == 30.0
        assert report["deliveries"]["failovers"] == 1
        email = groups[("department-heads", "email")]
        assert email["total"] == 1 and email["by_state"] == {DeliveryState.DELIVERED.value: 1}
        assert [c["key"] for c in report["claims"]] == ["no_patient_impact"]
        assert [s["site"] for s in report["sites"]] == ["Nord", "Sud"]
        markdown = to_markdown(report)
        assert f"# {incident} — Orbis indisponible" in markdown
        assert "| department-heads | telegram | 2 | 0 | 0 | 1 | 1 | 30.0 |" in markdown
        html = to_html(report)
        assert "<td>department-heads</td>" in html and "<script" not in html


@pytest.mark.parametrize("fmt", ["json", "md", "html"])
async def test_report_route(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    from tests.interfaces.api_support import auth, running_api

    async with running_api(monkeypatch) as api:
        created = await api.client.post(
            "/api/v1/incidents",
            headers=auth("responder"),
            json={"title": "Orbis", "systems": ["Orbis"], "severity": "major"},
        )
        incident = (await created.json())["id"]
        response = await api.client.get(
            f"/api/v1/incidents/{incident}/report?format={fmt}", headers=auth("viewer")
        )
        assert response.status == 200
        text = await response.text()
        assert incident in text
        bad = await api.client.get(
            f"/api/v1/incidents/{incident}/report?format=pdf", headers=auth("viewer")
        )
        assert bad.status == 422
        sites = await api.client.get(f"/api/v1/incidents/{incident}/sites", headers=auth("viewer"))
        assert await sites.json() == [
            {
                "site": "Hôpital Bichat",
                "confirmed": 0,
                "needed": 0,
                "by": [],
                "at": [],
                "escalated": False,
            }
        ]
        channels = await (await api.client.get("/api/v1/channels", headers=auth("viewer"))).json()
        assert {c["name"]: c["state"] for c in channels} == {"email": "up", "webhook": "up"}
