"""What every local stand-in shares: an aiohttp server on loopback and an ephemeral port."""

from __future__ import annotations

from typing import Any, Self

from aiohttp import web


class LocalServer:
    """An aiohttp server on ``host`` (loopback) and a port the system picks when it starts.

    Subclasses declare their routes in :meth:`add_routes`; ``async with`` starts and stops it.
    """

    client_max_size = 1024 * 1024

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"the {type(self).__name__} is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port``, without a trailing slash."""
        return f"http://{self._host}:{self.port}"

    def add_routes(self, app: web.Application) -> None:
        """Register the stand-in's routes."""
        raise NotImplementedError

    async def start(self) -> None:
        """Listen; the port is known when this returns."""
        app = web.Application(client_max_size=self.client_max_size)
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self._host, 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening (open requests are given a second to finish)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def call_arguments(request: web.Request) -> dict[str, Any]:
    """A Web API call's arguments, whether sent as JSON, as a form or in the query string
    (Slack's and Telegram's clients use all three)."""
    args: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            args.update(body)
    elif request.can_read_body:
        args.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return args
