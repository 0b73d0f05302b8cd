"""A running Tocsin app with the dashboard, alert webhook and metrics mounted (real aiohttp
server on 127.0.0.1:0), whether or not ``build_app`` mounts them itself yet."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.app import RUNTIME, build_app
from bot.config import settings_from_dict
from bot.interfaces import alerts, metrics
from bot.interfaces import web as dashboard
from bot.interfaces.web import pages
from bot.ports import Store
from bot.store.memory import MemoryStore
from tests.interfaces.api_support import TOKENS, Api, base_config


def mount(app: web.Application, rules: alerts.AlertSettings | None = None) -> None:
    """Add this issue's routes unless the composition root already did (setups are
    idempotent, so running them again is harmless)."""
    if alerts.INGEST in app:
        app[alerts.INGEST] = alerts.AlertIngest(rules)
    else:
        alerts.add_routes(app, rules)
    if metrics.METRICS not in app:
        metrics.add_routes(app)
    if pages.WEB not in app:
        dashboard.add_routes(app)

    async def setups(app: web.Application) -> None:
        runtime = app[RUNTIME]
        metrics.setup(app, runtime.dispatcher)
        dashboard.setup(app, runtime.dispatcher)

    app.on_startup.append(setups)


@asynccontextmanager
async def running_web(
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, Any] | None = None,
    *,
    with_worker: bool = False,
    store: Store | None = None,
    rules: alerts.AlertSettings | None = None,
    prepare: Callable[[web.Application], None] | None = None,
) -> AsyncIterator[Api]:
    """The app on a real port, with a client that keeps cookies; ``prepare`` may add to the
    application before it starts."""
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    settings = settings_from_dict(config or base_config())
    store = store or MemoryStore()
    app = build_app(settings, store=store, with_worker=with_worker)
    mount(app, rules)
    if prepare is not None:
        prepare(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Api(client, app[RUNTIME], store)


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: str) -> str:
    """The CSRF token of the first form on a page."""
    found = CSRF.search(page)
    assert found is not None, "no form with a CSRF token on the page"
    return found.group(1)


async def log_in(client: Any, who: str) -> str:
    """Log in through the form with the token of ``who`` (TOKENS key suffix), with a
    ``TestClient`` or a ``ClientSession`` that has a ``base_url``; returns the session's CSRF
    token."""
    form = await (await client.get("/login")).text()
    response = await client.post(
        "/login",
        data={"csrf": csrf_of(form), "token": TOKENS[f"TOCSIN_TOKEN_{who.upper()}"], "next": "/"},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    return csrf_of(await (await client.get("/")).text())
