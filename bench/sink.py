"""A webhook sink in its own process: answers 200 to every POST and counts them.

Prints its port on the first line of stdout; ``GET /count`` returns how many POSTs it took.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def main() -> None:
    count = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        return web.json_response({"ok": True, "id": str(count)})

    async def counted(request: web.Request) -> web.Response:
        return web.json_response({"count": count})

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    app.router.add_get("/count", counted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
