"""``tocsin demo``: the Orbis outage of 30 August 2023 on local sandbox gateways.

Starts stand-ins for every provider on loopback, serves Tocsin on them, declares the outage
from ``examples/orbis-outage.yaml`` to the audiences of ``examples/tocsin.yaml``, follows the
fan-out, plays a few department heads acknowledging, and prints the delivery report.
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

from bot.app import RUNTIME, Runtime, build_app
from bot.config import settings_from_dict
from bot.domain.declarations import IncidentDraft
from bot.domain.models import Actor, ChannelName, DeliveryState, Role
from bot.interfaces.progress import PENDING, follow_fan_out, report_table
from bot.sandbox.smtp import SandboxSmtp
from bot.sandbox.webhook_sink import WebhookSink

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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
        smtp = SandboxSmtp()
        await smtp.start()
        stack.push_async_callback(smtp.stop)
        sink = WebhookSink()
        await sink.start()
        stack.push_async_callback(sink.stop)
        boxes = Sandboxes(smtp, sink)
        boxes.secrets = {
            name: secrets.token_urlsafe(24)
            for name in ("TOCSIN_TOKEN_CRISIS", "TOCSIN_TOKEN_PRESS", "TOCSIN_TOKEN_PRESS2",
                         "TOCSIN_TOKEN_VIEWER", "TOCSIN_TOKEN_ALERTS", "SLACK_SIGNING_SECRET",
                         "TELEGRAM_WEBHOOK_SECRET", "KANNEL_PASSWORD")
        }
        boxes.secrets.update(SLACK_BOT_TOKEN="xoxb-demo-" + secrets.token_hex(8),
                             TELEGRAM_BOT_TOKEN=f"{secrets.randbelow(10**9)}:demo"
                             + secrets.token_hex(12), KANNEL_USER="tocsin")
        for name, start in _optional_sandboxes():
            boxes.extra[name] = await stack.enter_async_context(start(boxes))
        yield boxes


def _optional_sandboxes() -> list[tuple[str, Any]]:
    """Channel stand-ins; each is an async context manager factory taking the Sandboxes."""
    from bot.sandbox import demo_channels

    return demo_channels.FACTORIES


def demo_settings(boxes: Sandboxes, port: int, data_dir: Path) -> dict[str, Any]:
    """examples/tocsin.yaml, pointed at the sandboxes."""
    config: dict[str, Any] = yaml.safe_load((EXAMPLES / "tocsin.yaml").read_text("utf-8"))
    config["base_dir"] = str(EXAMPLES)
    config["storage"] = {"url": f"sqlite:///{data_dir / 'tocsin.db'}"}
    config["server"] = {"host": "127.0.0.1", "port": port,
                        "public_url": f"http://127.0.0.1:{port}"}
    config["channels"]["email"].update(host=boxes.smtp.host, port=boxes.smtp.port)
    for destination in config["audiences"]["all-staff"]["destinations"]:
        if "webhook" in destination:
            destination["webhook"] = f"{boxes.webhook.url}/hooks/intranet"
    from bot.sandbox import demo_channels

    demo_channels.configure(config, boxes)
    return config


async def run_demo(console: Console, *, exit_when_done: bool, port: int = 8080) -> int:
    """Run the demo; returns the process exit code."""
    async with sandboxes() as boxes, AsyncExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tocsin-demo-")))
        os.environ.update(boxes.secrets)
        port = _free_port(port)
        settings = settings_from_dict(demo_settings(boxes, port, data_dir), source="demo")
        app = build_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runtime = app[RUNTIME]
        console.print(f"[bold]Tocsin demo[/] — dashboard on http://127.0.0.1:{port}/ "
                      f"(token: {boxes.secrets['TOCSIN_TOKEN_VIEWER']})")
        declaration = yaml.safe_load((EXAMPLES / "orbis-outage.yaml").read_text("utf-8"))
        incident = await runtime.service.declare(
            Actor("cellule-crise", Role.RESPONDER), IncidentDraft.from_mapping(declaration))
        console.print(f"Declared [bold]{incident.id}[/]: {incident.title}")
        await follow_fan_out(runtime.store, incident.id, console, timeout=120)
        await play_acknowledgements(runtime, boxes, console)
        from bot.sandbox import demo_channels

        await demo_channels.after_fan_out(runtime, boxes, incident.id, console)
        counts = await follow_fan_out(runtime.store, incident.id, console, timeout=120)
        console.print(await report_table(runtime.store, incident.id))
        pending = sum(n for state, n in counts.items() if state in PENDING)
        if exit_when_done:
            return 0 if pending == 0 else 1
        console.print("Dashboard stays up; Ctrl-C to stop.")
        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            await asyncio.Event().wait()
    return 0


async def play_acknowledgements(runtime: Runtime, boxes: Sandboxes, console: Console) -> None:
    """Some department heads confirm: through the e-mail link (and the channels' own ways)."""
    acknowledged = 0
    async with aiohttp.ClientSession() as session:
        for incident in await runtime.store.list_incidents():
            for delivery in await runtime.store.deliveries(incident.id):
                if (delivery.audience == "department-heads"
                        and delivery.channel == ChannelName.EMAIL
                        and delivery.state in (DeliveryState.SENT, DeliveryState.DELIVERED)):
                    url = f"{runtime.settings.server.public_url}/ack/{delivery.ack_token}"
                    async with session.get(url) as response:
                        acknowledged += response.status == 200
    console.print(f"{acknowledged} department head(s) confirmed through the e-mail link")
