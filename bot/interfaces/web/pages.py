"""Shared pieces of the dashboard: per-application state, templates, and the progress pulse."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from bot.domain.masking import scrub

TEMPLATES = Path(__file__).resolve().parent / "templates"

# Colours for statuses and delivery states (CSS classes in base.html.j2).
STATE_TONE = {
    "queued": "wait",
    "sending": "wait",
    "retrying": "warn",
    "sent": "ok",
    "delivered": "ok",
    "acknowledged": "good",
    "failed": "bad",
    "cancelled": "mute",
    "draft": "warn",
    "investigating": "bad",
    "identified": "warn",
    "monitoring": "wait",
    "resolved": "good",
    "published": "ok",
    "approved": "ok",
    "superseded": "mute",
    "critical": "bad",
    "major": "warn",
    "minor": "wait",
}


class Pulse:
    """Wakes every waiter when the worker records outcomes (a broadcast, unlike an Event that
    one waiter could clear for the others)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def beat(self, *_: object) -> None:
        """Wake the current waiters; usable as a dispatcher observer."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, timeout: float, closing: asyncio.Event) -> None:
        """Return on the next beat, when ``closing`` is set, or after ``timeout`` seconds."""
        beat = asyncio.ensure_future(self._event.wait())
        closed = asyncio.ensure_future(closing.wait())
        try:
            await asyncio.wait({beat, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (beat, closed):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(beat, closed, return_exceptions=True)


@dataclass
class WebState:
    """The dashboard's state in one application."""

    pulse: Pulse = field(default_factory=Pulse)
    closing: asyncio.Event = field(default_factory=asyncio.Event)


WEB = web.AppKey("tocsin_web", WebState)


def local_time(value: datetime | None, timezone: str, fmt: str = "%d/%m/%Y %H:%M:%S") -> str:
    """A UTC time as the organisation reads it."""
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(timezone)).strftime(fmt)


def _shown(value: object) -> str:
    """A timeline detail value as text, personal data masked."""
    if isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value)
    return scrub(str(value))


@cache
def environment() -> jinja2.Environment:
    """The templates' environment: autoescaped everywhere, undefined names are errors."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["local"] = local_time
    env.filters["scrub"] = _shown
    env.globals["tone"] = lambda value: STATE_TONE.get(str(value), "mute")
    return env


def html(template: str, *, status: int = 200, **context: Any) -> web.Response:
    """Render a template into an HTML response."""
    text = environment().get_template(template).render(**context)
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )
