"""Press office: versions and diffs, four-eyes, publication, claims and corrections."""

from __future__ import annotations

from typing import Any

import pytest

from tests.interfaces.api_support import Api, api_with_mail, auth, settle

ORBIS = {
    "title": "Panne informatique : Orbis indisponible",
    "systems": ["Orbis"],
    "unaffected": ["SAMU"],
    "severity": "critical",
    "claims": ["no_patient_impact", "not_a_cyberattack"],
}


async def get(api: Api, path: str, who: str = "viewer") -> Any:
    response = await api.client.get(path, headers=auth(who))
    assert response.status == 200, await response.text()
    return await response.json()


async def press_draft(api: Api, incident_id: str, locale: str = "fr") -> dict[str, Any]:
    statements = (await get(api, f"/api/v1/incidents/{incident_id}/statements"))["statements"]
    return next(
        s
        for s in statements
        if s["kind"] == "press" and s["locale"] == locale and s["status"] == "draft"
    )


async def declare(api: Api, body: dict[str, Any]) -> str:
    response = await api.client.post("/api/v1/incidents", json=body, headers=auth("responder"))
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


async def test_versions_diff_and_publication(monkeypatch: pytest.MonkeyPatch) -> None:
    async with api_with_mail(monkeypatch) as (api, smtp):
        incident = await declare(api, {**ORBIS, "audiences": ["all-staff"]})
        draft = await press_draft(api, incident)
        v2 = await (
            await api.client.put(
                f"/api/v1/statements/{draft['id']}",
                headers=auth("press"),
                json={"text": "Orbis est indisponible.\nAucun impact."},
            )
        ).json()
        history = await get(api, f"/api/v1/statements/{v2['id']}/versions")
        assert [(v["version"], v["status"]) for v in history["versions"]] == [
            (1, "superseded"),
            (2, "draft"),
        ]
        assert "+Orbis est indisponible." in history["diff"]
        assert "(presse1)" in history["diff"]
        # the viewer can read but not edit; the editor cannot approve their own words
        viewer = await api.client.put(
            f"/api/v1/statements/{v2['id']}", headers=auth("viewer"), json={"text": "x"}
        )
        assert viewer.status == 403
        assert (
            await api.client.post(f"/api/v1/statements/{v2['id']}/approve", headers=auth("press"))
        ).status == 403
        await settle(api.store)
        assert all("presse@example.org" not in m.rcpt_tos for m in smtp.messages)
        approved = await api.client.post(
            f"/api/v1/statements/{v2['id']}/approve", headers=auth("press2")
        )
        assert approved.status == 200
        await settle(api.store)
        [mail] = [m for m in smtp.messages if "presse@example.org" in m.rcpt_tos]
        assert "Aucun impact." in mail.message.get_body(("plain",)).get_content()
        # published is immutable: an edit makes v3 as a draft, v2 stays published
        v3 = await (
            await api.client.put(
                f"/api/v1/statements/{v2['id']}",
                headers=auth("press2"),
                json={"text": "Orbis rétabli partiellement."},
            )
        ).json()
        history = await get(api, f"/api/v1/statements/{v3['id']}/versions")
        assert [(v["version"], v["status"]) for v in history["versions"]] == [
            (1, "superseded"),
            (2, "published"),
            (3, "draft"),
        ]
        await api.client.post(f"/api/v1/statements/{v3['id']}/approve", headers=auth("press"))
        history = await get(api, f"/api/v1/statements/{v3['id']}/versions")
        assert [v["status"] for v in history["versions"]] == [
            "superseded",
            "superseded",
            "published",
        ]


async def test_claims_are_listed_with_their_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    async with api_with_mail(monkeypatch) as (api, _smtp):
        incident = await declare(api, ORBIS)
        await settle(api.store)
        claims = (await get(api, f"/api/v1/incidents/{incident}/claims"))["claims"]
        assert [(c["key"], c["status"]) for c in claims] == [
            ("no_patient_impact", "proposed"),
            ("not_a_cyberattack", "proposed"),
        ]
        first = claims[0]
        assert first["audiences"] == ["all-staff", "department-heads"]
        assert first["recipients"] == 2
        assert "patient" in first["text"].lower()
        draft = await press_draft(api, incident)
        await api.client.post(f"/api/v1/statements/{draft['id']}/approve", headers=auth("press"))
        claims = (await get(api, f"/api/v1/incidents/{incident}/claims"))["claims"]
        assert {c["status"] for c in claims} == {"approved"}
        assert claims[0]["audiences"] == ["all-staff", "department-heads", "press"]


async def test_retraction_reaches_exactly_who_got_the_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with api_with_mail(monkeypatch) as (api, smtp):
        with_claim = await declare(api, {**ORBIS, "audiences": ["all-staff"]})
        await declare(api, {**ORBIS, "claims": [], "audiences": ["department-heads"]})
        await settle(api.store)
        before = len(smtp.messages)
        response = await api.client.post(
            f"/api/v1/incidents/{with_claim}/claims/not_a_cyberattack/retract",
            headers=auth("responder"),
            json={"reason": "Une intrusion est confirmée."},
        )
        assert response.status == 201
        correction = await response.json()
        assert (correction["status"], correction["audiences"]) == ("draft", ["all-staff"])
        assert "Une intrusion est confirmée." in correction["text"]
        await settle(api.store)
        assert len(smtp.messages) == before  # nothing goes out before approval
        approve = await api.client.post(
            f"/api/v1/statements/{correction['id']}/approve", headers=auth("press")
        )
        assert approve.status == 200
        await settle(api.store)
        new = smtp.messages[before:]
        assert [m.rcpt_tos for m in new] == [("staff@example.org",)]
        assert "intrusion" in new[0].message.get_body(("plain",)).get_content()
        claims = (await get(api, f"/api/v1/incidents/{with_claim}/claims"))["claims"]
        retracted = next(c for c in claims if c["key"] == "not_a_cyberattack")
        assert retracted["status"] == "retracted"
        assert retracted["reason"] == "Une intrusion est confirmée."
        rows = (await get(api, f"/api/v1/incidents/{with_claim}/deliveries"))["deliveries"]
        corrections = [d for d in rows if d["statement_id"] == correction["id"]]
        assert [(d["audience"], d["recipient"]) for d in corrections] == [
            ("all-staff", "staff@example.org")
        ]
        # a later update no longer carries the retracted claim
        await api.client.post(
            f"/api/v1/incidents/{with_claim}/updates",
            headers=auth("responder"),
            json={"message": "Point d'étape"},
        )
        statements = (await get(api, f"/api/v1/incidents/{with_claim}/statements"))["statements"]
        latest = [s for s in statements if s["event"] == "update"]
        assert latest and all("not_a_cyberattack" not in s["claims"] for s in latest)


async def test_retraction_input_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    async with api_with_mail(monkeypatch) as (api, _smtp):
        incident = await declare(api, ORBIS)
        path = f"/api/v1/incidents/{incident}/claims"
        for key, body, status in [
            ("not_a_cyberattack", {}, 422),
            ("not_a_cyberattack", {"reason": "  "}, 422),
            ("data_not_compromised", {"reason": "x"}, 404),
        ]:
            response = await api.client.post(
                f"{path}/{key}/retract", json=body, headers=auth("responder")
            )
            assert response.status == status, (key, body)
        viewer = await api.client.post(
            f"{path}/not_a_cyberattack/retract", json={"reason": "x"}, headers=auth("viewer")
        )
        assert viewer.status == 403
        claims = (await get(api, path))["claims"]
        assert {c["status"] for c in claims} == {"proposed"}
