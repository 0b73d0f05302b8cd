"""A running Tocsin app for interface tests: real aiohttp server on port 0, memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.app import RUNTIME, Runtime, build_app
from bot.config import settings_from_dict
from bot.ports import Store
from bot.store.memory import MemoryStore

TOKENS = {
    "TOCSIN_TOKEN_RESPONDER": "responder-token-0123456789",
    "TOCSIN_TOKEN_VIEWER": "viewer-token-0123456789",
    "TOCSIN_TOKEN_PRESS": "press-token-0123456789",
    "TOCSIN_TOKEN_PRESS2": "press2-token-0123456789",
}


def base_config(
    smtp_port: int = 2525, webhook_url: str = "http://127.0.0.1:9/hook"
) -> dict[str, Any]:
    return {
        "organisation": {"name": "AP-HP", "locale": "fr", "timezone": "Europe/Paris"},
        "storage": {"url": "memory://"},
        "auth": {
            "tokens": [
                {"name": "cellule", "token_env": "TOCSIN_TOKEN_RESPONDER", "role": "responder"},
                {"name": "tableau", "token_env": "TOCSIN_TOKEN_VIEWER", "role": "viewer"},
                {"name": "presse1", "token_env": "TOCSIN_TOKEN_PRESS", "role": "press"},
                {"name": "presse2", "token_env": "TOCSIN_TOKEN_PRESS2", "role": "press"},
            ]
        },
        "channels": {
            "email": {"host": "127.0.0.1", "port": smtp_port, "from": "cellule-crise@example.org"}
        },
        "audiences": {
            "all-staff": {
                "statement": "internal",
                "destinations": [{"email_list": "staff@example.org"}, {"webhook": webhook_url}],
            },
            "department-heads": {
                "statement": "department_heads",
                "policy": {"channels": ["email"], "require_ack": True},
                "members": [
                    {
                        "name": "Dr A. Martin",
                        "site": "Hôpital Bichat",
                        "email": "a.martin@example.org",
                        "phone": "06 12 34 56 78",
                    }
                ],
            },
            "press": {"statement": "press", "destinations": [{"email_list": "presse@example.org"}]},
        },
        "default_audiences": ["all-staff", "department-heads"],
    }


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS['TOCSIN_TOKEN_' + name.upper()]}"}


@dataclass
class Api:
    client: TestClient[Any, Any]
    runtime: Runtime
    store: Store


@asynccontextmanager
async def running_api(
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, Any] | None = None,
    *,
    with_worker: bool = False,
    store: Store | None = None,
) -> AsyncIterator[Api]:
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    settings = settings_from_dict(config or base_config())
    store = store or MemoryStore()
    app = build_app(settings, store=store, with_worker=with_worker)
    async with TestClient(TestServer(app)) as client:
        yield Api(client, app[RUNTIME], store)


async def settle(store: Store, timeout: float = 15.0) -> None:
    """Wait until the worker has nothing queued, sending or retrying (woken by the store)."""
    import asyncio

    async with asyncio.timeout(timeout):
        while await store.pending_count() > 0:
            await store.wait_for_work(0.05)


@asynccontextmanager
async def api_with_mail(
    monkeypatch: pytest.MonkeyPatch, **config_over: Any
) -> AsyncIterator[tuple[Api, Any]]:
    """A running app with its worker, sending e-mail to a real local SMTP server."""
    from tocsin_sandbox.smtp import SandboxSmtp

    smtp = SandboxSmtp()
    await smtp.start()
    try:
        config = base_config(smtp_port=smtp.port)
        config["audiences"]["all-staff"]["destinations"] = [{"email_list": "staff@example.org"}]
        config.update(config_over)
        async with running_api(monkeypatch, config, with_worker=True) as api:
            yield api, smtp
    finally:
        await smtp.stop()
