"""``tocsin demo``: the Orbis outage of 30 August 2023 on local sandbox gateways.

Starts stand-ins for every provider on loopback, serves Tocsin on them, and plays the story:
the outage declared from ``examples/orbis-outage.yaml`` to the audiences of
``examples/tocsin.yaml``, department heads acknowledging, a press statement edited and
approved by a second person, a claim retracted and corrected, the organisation's own e-mail
going down and being routed around — then the delivery report and the per-site view.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from rich.console import Console

from bot.app import RUNTIME, build_app
from bot.config import settings_from_dict
from bot.domain.declarations import IncidentDraft
from bot.domain.models import Actor, ChannelName, DeliveryState, Role, StatementKind
from bot.interfaces.cli_support import READER
from bot.interfaces.progress import PENDING, follow_fan_out, report_table
from bot.logs import configure_logging
from bot.runtime import Runtime
from tocsin_sandbox import demo_channels
from tocsin_sandbox.smtp import SandboxSmtp
from tocsin_sandbox.webhook_sink import WebhookSink

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CELL = Actor("cellule-crise", Role.RESPONDER)
PRESS = Actor("press-office", Role.PRESS)
PRESS_DEPUTY = Actor("press-deputy", Role.PRESS)


@dataclass
class Sandboxes:
    """The local stand-ins the demo runs, and the secrets it made up for them."""

    smtp: SandboxSmtp
    webhook: WebhookSink
    extra: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")


@asynccontextmanager
async def sandboxes() -> AsyncIterator[Sandboxes]:
    """Start every provider stand-in (SMTP, webhook sink, Slack, Telegram, SMS gateway)."""
    async with AsyncExitStack() as stack:
        smtp = await stack.enter_async_context(SandboxSmtp())
        sink = await stack.enter_async_context(WebhookSink())
        boxes = Sandboxes(smtp, sink)
        boxes.secrets = {
            name: secrets.token_urlsafe(24)
            for name in (
                "TOCSIN_TOKEN_CRISIS",
                "TOCSIN_TOKEN_PRESS",
                "TOCSIN_TOKEN_PRESS2",
                "TOCSIN_TOKEN_VIEWER",
                "TOCSIN_TOKEN_ALERTS",
                "SLACK_SIGNING_SECRET",
                "TELEGRAM_WEBHOOK_SECRET",
                "KANNEL_PASSWORD",
                "TOCSIN_SMS_INBOUND_SECRET",
            )
        }
        boxes.secrets.update(
            SLACK_BOT_TOKEN="xoxb-demo-" + secrets.token_hex(8),
            KANNEL_USER="tocsin",
            TELEGRAM_BOT_TOKEN=f"{secrets.randbelow(10**9)}:demo{secrets.token_hex(12)}",
        )
        for name, start in demo_channels.FACTORIES:
            boxes.extra[name] = await stack.enter_async_context(start(boxes))
        yield boxes


def demo_settings(boxes: Sandboxes, port: int, data_dir: Path) -> dict[str, Any]:
    """examples/tocsin.yaml, pointed at the sandboxes."""
    config: dict[str, Any] = yaml.safe_load((EXAMPLES / "tocsin.yaml").read_text("utf-8"))
    config["base_dir"] = str(EXAMPLES)
    config["storage"] = {"url": f"sqlite:///{data_dir / 'tocsin.db'}"}
    config["server"] = {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"}
    config["channels"]["email"].update(host=boxes.smtp.host, port=boxes.smtp.port)
    config["delivery"].update(backoff_base=1)
    for destination in config["audiences"]["all-staff"]["destinations"]:
        if "webhook" in destination:
            destination["webhook"] = f"{boxes.webhook.url}/hooks/intranet"
    demo_channels.configure(config, boxes)
    return config


async def run_demo(console: Console, *, exit_when_done: bool, port: int = 8080) -> int:
    """Run the demo; returns the process exit code."""
    async with sandboxes() as boxes, AsyncExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tocsin-demo-")))
        os.environ.update(boxes.secrets)
        configure_logging(path=data_dir / "tocsin.log")  # the console is for the story
        port = _free_port(port)
        settings = settings_from_dict(demo_settings(boxes, port, data_dir), source="demo")
        app = build_app(settings, with_scheduler=True)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        rt = app[RUNTIME]
        console.print(
            f"[bold]Tocsin demo[/] — dashboard http://127.0.0.1:{port}/ · status page "
            f"http://127.0.0.1:{port}/status · viewer token "
            f"{boxes.secrets['TOCSIN_TOKEN_VIEWER']}"
        )
        incident = await story(rt, boxes, console)
        counts = await follow_fan_out(rt.queries, READER, incident, console, timeout=120)
        console.print(await report_table(rt.queries, READER, incident))
        from bot.interfaces.cli_views import sites_table

        console.print(await sites_table(rt, incident))
        await print_report(rt, incident, console)
        pending = sum(n for state, n in counts.items() if state in PENDING)
        if exit_when_done:
            return 0 if pending == 0 else 1
        console.print("The dashboard stays up; Ctrl-C to stop.")
        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            await asyncio.Event().wait()
    return 0


async def story(rt: Runtime, boxes: Sandboxes, console: Console) -> str:
    """The Orbis outage, step by step; returns the incident id."""
    declaration = yaml.safe_load((EXAMPLES / "orbis-outage.yaml").read_text("utf-8"))
    incident = (await rt.service.declare(CELL, IncidentDraft.from_mapping(declaration))).id
    console.print(f"1. Declared [bold]{incident}[/]: {declaration['title']}")
    await follow_fan_out(rt.queries, READER, incident, console, timeout=120)

    console.print("2. Department heads acknowledge")
    await acknowledge_by_mail(rt, incident, console)
    await demo_channels.acknowledge(rt, boxes, incident, console)

    console.print("3. The press office edits the statement; a second person approves it")
    draft = next(
        s
        for s in await rt.store.statements(incident)
        if s.kind == StatementKind.PRESS and s.locale == "fr"
    )
    edited = await rt.service.edit_statement(
        PRESS, draft.id, draft.text + "\n\nContact presse : 01 40 27 37 22."
    )
    await rt.service.approve_statement(PRESS_DEPUTY, edited.id)
    console.print(
        f"   v{edited.version} by {PRESS.name}, approved by {PRESS_DEPUTY.name}; "
        "published to the press list and the status page"
    )

    console.print("4. A claim turns out wrong: « no impact on patients » is corrected")
    [correction, *_] = await rt.service.retract_claim(
        CELL,
        incident,
        "no_patient_impact",
        "Deux examens d'imagerie ont dû être reportés à l'hôpital Necker.",
    )
    approved = await rt.service.approve_statement(PRESS, correction.id)
    console.print(f"   correction sent to exactly {', '.join(approved.audiences)}")
    await follow_fan_out(rt.queries, READER, incident, console, timeout=120)

    console.print("5. The hospitals' own e-mail goes down during the next update")
    await boxes.smtp.stop()
    await rt.service.update(
        CELL, incident, "identified", "Cause identifiée : défaillance d'un équipement réseau."
    )
    await wait_for(rt, incident, lambda: rerouted(rt, incident))
    console.print("   e-mail unreachable: on-call managers re-routed to SMS; lists wait")
    await boxes.smtp.start()
    console.print("   e-mail is back: the lists resume")
    return incident


async def print_report(rt: Runtime, incident: str, console: Console) -> None:
    """The post-incident report's headline figures."""
    from bot.domain.report import build_report

    report = await build_report(rt.service, incident)
    d = report["deliveries"]
    firsts = [g["first_delivery_s"] for g in d["groups"] if g["first_delivery_s"] is not None]
    console.print(
        f"Post-incident report: {d['total']} deliveries, {d['failovers']} failovers "
        f"({d['rerouted']} re-routed around the e-mail outage), {d['escalations']} "
        f"escalations, {len(report['approvals'])} approvals, "
        f"{sum(c['status'] == 'retracted' for c in report['claims'])} claim retracted; "
        f"first delivery after {min(firsts, default=0):.1f} s. While the demo runs: "
        f"{rt.settings.server.public_url}/api/v1/incidents/{incident}/report?format=html"
    )


async def rerouted(rt: Runtime, incident: str) -> bool:
    return any(e.action == "channel_down" for e in await rt.store.timeline(incident))


async def wait_for(rt: Runtime, incident: str, condition: Any, timeout: float = 60) -> None:
    """Wait (woken by the store) until ``condition`` holds."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await rt.store.wait_for_work(0.2)


async def acknowledge_by_mail(rt: Runtime, incident: str, console: Console) -> None:
    """Department heads reached only by e-mail open the link in their message (a page that
    changes nothing, as a mail scanner's fetch would) and press its button (a POST)."""
    acknowledged = 0
    async with aiohttp.ClientSession() as session:
        for delivery in await rt.store.deliveries(incident):
            if (
                delivery.audience == "department-heads"
                and delivery.channel == ChannelName.EMAIL
                and delivery.state in (DeliveryState.SENT, DeliveryState.DELIVERED)
            ):
                token = rt.service.tokens.token(delivery)
                url = f"{rt.settings.server.public_url}/ack/{token}"
                async with session.get(url) as page:
                    if page.status != 200:
                        continue
                async with session.post(url) as response:
                    acknowledged += response.status == 200
    console.print(f"   {acknowledged} confirmed through the e-mail link")
