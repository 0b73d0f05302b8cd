"""A programmable HTTP server on 127.0.0.1:0 standing in for any HTTP provider in tests.

Script answers per path (first in, first out) or set a default; each answer is a status with
an optional JSON or text body and headers, a hang (no answer until the stand-in stops, so the
client times out) or a reset (the connection is torn down with a TCP RST). Every request is
recorded::

    async with HttpStandin() as standin:
        standin.script("/hook", Reply(429, headers={"Retry-After": "7"}), Reply(200))
        ... post to standin.url + "/hook" ...
        assert standin.requests[0].json == {...}
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy


@dataclass(frozen=True)
class Reply:
    """One scripted answer: ``Reply(200, json={...})``, ``Reply.hang()``, ``Reply.reset()``."""

    status: int = 200
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    text: str | None = None
    action: Literal["answer", "hang", "reset"] = "answer"

    @classmethod
    def hang(cls) -> Reply:
        """Never answer (until the stand-in stops): the client's timeout fires."""
        return cls(action="hang")

    @classmethod
    def reset(cls) -> Reply:
        """Tear the connection down with a TCP RST instead of answering."""
        return cls(action="reset")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in saw it; ``json`` is None when the body is not JSON."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    json: Any


Responder = Reply | Callable[[RecordedRequest], Reply]


class HttpStandin:
    """A scripted local HTTP server; see the module docstring."""

    def __init__(self, default: Responder | None = None, host: str = "127.0.0.1") -> None:
        self.default: Responder = default if default is not None else Reply(200, {"ok": True})
        self._host = host
        self._port: int | None = None
        self._scripts: dict[str, deque[Responder]] = {}
        self._requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the stand-in is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without a trailing slash."""
        return f"http://{self._host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self._requests if r.path == path]

    def script(self, path: str, *replies: Responder) -> None:
        """Queue answers for ``path``; once they are used up, :attr:`default` answers."""
        self._scripts.setdefault(path, deque()).extend(replies)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests have arrived."""
        async with asyncio.timeout(timeout):
            while len(self._requests) < count:
                await self._changed.wait()
        return list(self._requests)

    async def start(self) -> None:
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, self._host, 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        self._released.set()  # hung handlers return, so shutdown does not wait for them
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> HttpStandin:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            json=parsed,
        )
        self._requests.append(recorded)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

        queue = self._scripts.get(request.path)
        responder = queue.popleft() if queue else self.default
        reply = responder(recorded) if callable(responder) else responder
        if reply.action == "reset":
            _reset(request)
        if reply.action in ("hang", "reset"):
            await self._released.wait()
            return web.Response(status=503)  # nobody is listening any more
        if reply.text is not None:
            return web.Response(status=reply.status, text=reply.text, headers=reply.headers)
        if reply.json is not None:
            return web.json_response(reply.json, status=reply.status, headers=reply.headers)
        return web.Response(status=reply.status, headers=reply.headers)


def _reset(request: web.Request) -> None:
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST rather than FIN, as a crashing peer or middlebox does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
