"""The dashboard in a real browser (Debian's Chromium driven by Playwright): log in, watch a
declared incident's deliveries progress live, approve a press draft as a second person."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Page, async_playwright, expect

from bot.domain.models import StatementStatus
from tests.conftest import require
from tests.interfaces.api_support import TOKENS, auth, base_config
from tests.interfaces.web_support import running_web
from tocsin_sandbox.smtp import SandboxSmtp
from tocsin_sandbox.webhook_sink import WebhookSink

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-output" / "dashboard.png"
WAIT_MS = 10_000


class HeldWebhookSink(WebhookSink):
    """The sandbox webhook receiver, answering only once the test lets it (so that the page
    can be seen with a delivery still in progress)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def _receive(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return await super()._receive(request)


async def log_in(page: Page, base: str, token: str, target: str) -> None:
    """Log in through the form and land on ``target``."""
    await page.goto(f"{base}/login?next={target}")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}{target}")


@pytest.mark.browser
async def test_live_progress_and_four_eyes_approval_in_chromium(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require(os.path.exists(CHROMIUM), "Chromium (/usr/bin/chromium)")

    started = time.monotonic()
    sink = HeldWebhookSink()
    async with SandboxSmtp() as smtp, sink:
        config = base_config(smtp_port=smtp.port, webhook_url=f"{sink.url}/hook")
        async with running_web(monkeypatch, config, with_worker=True) as api:
            base = str(api.client.make_url("/")).rstrip("/")
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    first = await (await browser.new_context()).new_page()
                    await log_in(first, base, TOKENS["TOCSIN_TOKEN_PRESS"], "/")
                    await expect(first.locator("h1")).to_have_text("Incidents")

                    response = await api.client.post(
                        "/api/v1/incidents",
                        json={
                            "title": "Panne informatique : Orbis indisponible",
                            "systems": ["Orbis"],
                            "unaffected": ["SAMU"],
                            "severity": "critical",
                            "claims": ["no_patient_impact"],
                        },
                        headers=auth("responder"),
                    )
                    assert response.status == 201
                    incident_id = (await response.json())["id"]
                    await first.reload()
                    await first.click(f"a[href='/incidents/{incident_id}']")
                    await expect(first.locator("#live")).to_have_text("live", timeout=WAIT_MS)

                    # Both e-mails go out; the intranet webhook is held: one still in progress.
                    await expect(first.locator("#tile-sent")).to_have_text("2", timeout=WAIT_MS)
                    await expect(first.locator("#tile-pending")).to_have_text("1")
                    sink.release.set()
                    await expect(first.locator("#tile-pending")).to_have_text("0", timeout=WAIT_MS)
                    await expect(first.locator("#tile-sent")).to_have_text("3")
                    assert int(await first.locator("body").get_attribute("data-updates") or 0) >= 2
                    assert first.url.endswith(f"/incidents/{incident_id}")  # no reload

                    # The first press officer rewrites the French press draft…
                    drafts = [
                        s
                        for s in await api.store.statements(incident_id)
                        if s.kind.value == "press" and s.locale == "fr"
                    ]
                    draft = first.locator(f"details[data-statement='{drafts[0].id}']")
                    await draft.locator("summary", has_text="Edit this draft").click()
                    await draft.locator("textarea").fill(
                        "Un problème technique touche le réseau. Aucun impact sur les patients."
                    )
                    await draft.locator("button.save").click()
                    await expect(first.locator("#notice")).to_contain_text("New version saved")
                    await expect(first.locator("#tile-total")).to_have_text("3")
                    (version2,) = [
                        s
                        for s in await api.store.statements(incident_id)
                        if s.kind.value == "press" and s.version == 2
                    ]

                    # …which a second press officer approves from their own browser.
                    second = await (await browser.new_context()).new_page()
                    await log_in(
                        second, base, TOKENS["TOCSIN_TOKEN_PRESS2"], f"/incidents/{incident_id}"
                    )
                    approve = second.locator(f"details[data-statement='{version2.id}'] .approve")
                    await approve.click()
                    await expect(second.locator("#notice")).to_contain_text("Statement approved")

                    # The first page sees the press delivery appear and go out, live.
                    await expect(first.locator("#tile-total")).to_have_text("4", timeout=WAIT_MS)
                    await expect(first.locator("#tile-pending")).to_have_text("0", timeout=WAIT_MS)
                    press_cell = first.locator("td[data-cell='press|email|sent']")
                    await expect(press_cell).to_have_text("1")
                    # The record, reloaded: the approved statement and the timeline.
                    await first.goto(f"{base}/incidents/{incident_id}")
                    await expect(first.locator("#live")).to_have_text("live", timeout=WAIT_MS)
                    approved_row = first.locator("tr[data-action='statement_approved']")
                    await expect(approved_row).to_contain_text("presse2")
                    SCREENSHOT.parent.mkdir(exist_ok=True)
                    await first.screenshot(path=str(SCREENSHOT), full_page=True)
                finally:
                    await browser.close()
        published = [
            s
            for s in await api.store.statements(incident_id)
            if s.kind.value == "press" and s.status == StatementStatus.PUBLISHED
        ]
        assert [(s.locale, s.author, s.approved_by) for s in published] == [
            ("fr", "presse1", "presse2")
        ]
        assert len(smtp.messages) == 3  # staff list, the department head, the press list
    print(f"browser test: {time.monotonic() - started:.2f} s")
