"""Public status page and Atom feed: only approved public statements ever appear."""

from __future__ import annotations

import feedparser
import pytest

from tests.interfaces.api_support import api_with_mail, auth

ORBIS = {
    "title": "Panne informatique : Orbis indisponible",
    "systems": ["Orbis"],
    "unaffected": ["SAMU"],
    "severity": "critical",
    "claims": ["no_patient_impact"],
}


async def test_nothing_unapproved_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    async with api_with_mail(monkeypatch) as (api, _smtp):
        created = await api.client.post("/api/v1/incidents", json=ORBIS, headers=auth("responder"))
        incident = (await created.json())["id"]
        page = await (await api.client.get("/status")).text()
        assert "Orbis" not in page and "Aucun incident en cours." in page
        feed = feedparser.parse(await (await api.client.get("/status/feed.atom")).read())
        assert feed.bozo == 0 and feed.entries == []

        statements = (
            await (
                await api.client.get(
                    f"/api/v1/incidents/{incident}/statements", headers=auth("viewer")
                )
            ).json()
        )["statements"]
        press = next(s for s in statements if s["kind"] == "press" and s["locale"] == "fr")
        await api.client.post(f"/api/v1/statements/{press['id']}/approve", headers=auth("press"))

        page = await (await api.client.get("/status")).text()
        public = next(s for s in statements if s["kind"] == "public" and s["locale"] == "fr")
        assert "Incidents en cours" in page
        assert public["text"].splitlines()[0] in page
        # Only what the approval covered: not the declaration's own lists.
        assert "Fonctionne normalement :" not in page and "Affecté :" not in page
        english = await (await api.client.get("/status?lang=en")).text()
        assert 'lang="en"' in english and "Current incidents" in english
        feed = feedparser.parse(await (await api.client.get("/status/feed.atom")).read())
        assert feed.bozo == 0
        assert feed.feed.title == "AP-HP — État des services"
        [entry] = feed.entries
        assert entry.title == public["subject"]
        assert entry.summary == public["text"]


async def test_html_in_a_title_is_escaped_on_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    async with api_with_mail(monkeypatch) as (api, _smtp):
        body = {**ORBIS, "title": "<script>alert(1)</script> Orbis"}
        incident = (
            await (
                await api.client.post("/api/v1/incidents", json=body, headers=auth("responder"))
            ).json()
        )["id"]
        statements = (
            await (
                await api.client.get(
                    f"/api/v1/incidents/{incident}/statements", headers=auth("viewer")
                )
            ).json()
        )["statements"]
        public = next(s for s in statements if s["kind"] == "public" and s["locale"] == "fr")
        await api.client.post(f"/api/v1/statements/{public['id']}/approve", headers=auth("press"))
        page = await (await api.client.get("/status")).text()
        assert "<script>alert(1)</script>" not in page
        assert "&lt;script&gt;" in page
