"""A local incoming-webhook receiver that keeps every JSON POST, for ``tocsin demo`` and tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tocsin_sandbox.server import LocalServer


@dataclass(frozen=True)
class ReceivedPost:
    """One POST as the sink took it."""

    path: str
    headers: Mapping[str, str]  # case-insensitive
    body: Any


class WebhookSink(LocalServer):
    """An aiohttp server on 127.0.0.1 and an ephemeral port that answers every JSON POST with
    ``200 {"ok": true, "id": "<n>"}`` (n counts from 1) and keeps it in :attr:`posts`.

    A body that is not JSON gets ``400``. Use ``async with WebhookSink() as sink`` or
    :meth:`start`/:meth:`stop`; :meth:`wait_for` waits for arrivals without polling.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._posts: list[ReceivedPost] = []
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash: post to ``sink.url + "/any/path"``."""
        return self.base_url

    @property
    def posts(self) -> list[ReceivedPost]:
        """POSTs received so far, in arrival order (a copy)."""
        return list(self._posts)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._receive)

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
