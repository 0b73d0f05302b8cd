"""A local incoming-webhook receiver that keeps every JSON POST, for ``tocsin demo`` and tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy


@dataclass(frozen=True)
class ReceivedPost:
    """One POST as the sink took it."""

    path: str
    headers: Mapping[str, str]  # case-insensitive
    body: Any


class WebhookSink:
    """An aiohttp server on 127.0.0.1 and an ephemeral port that answers every JSON POST with
    ``200 {"ok": true, "id": "<n>"}`` (n counts from 1) and keeps it in :attr:`posts`.

    A body that is not JSON gets ``400``. Use ``async with WebhookSink() as sink`` or
    :meth:`start`/:meth:`stop`; :meth:`wait_for` waits for arrivals without polling.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._posts: list[ReceivedPost] = []
        self._changed = asyncio.Event()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the webhook sink is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash: post to ``sink.url + "/any/path"``."""
        return f"http://{self._host}:{self.port}"

    @property
    def posts(self) -> list[ReceivedPost]:
        """POSTs received so far, in arrival order (a copy)."""
        return list(self._posts)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._receive)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> WebhookSink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedPost]:
        """Wait until at least ``count`` POSTs have arrived; return them."""
        async with asyncio.timeout(timeout):
            while len(self._posts) < count:
                await self._changed.wait()
        return list(self._posts)

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return web.json_response({"ok": False, "error": "body is not JSON"}, status=400)
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        self._posts.append(ReceivedPost(request.path, headers, body))
        # Wake every waiter, then arm a fresh event for the next arrival.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return web.json_response({"ok": True, "id": str(len(self._posts))})
