"""A webhook sink in its own process: answers 200 to every POST and counts them.

Prints its port on the first line of stdout and runs until its stdin closes.
``GET /count`` returns how many POSTs it took; ``GET /count?at_least=N&timeout=S`` waits (up to
S seconds) until it has taken N, so that a drill waits on the fact rather than sleeping.

With ``--record`` it also keeps the ``delivery_id`` of every POST's JSON body, in arrival order,
and ``GET /deliveries`` returns them (``{"count": n, "ids": [...]}``): crash drills count what
was lost and what was sent twice, with each one's arrival time (epoch seconds, ``at``).
``--latency-ms`` delays every answer, like a distant provider. ``--limit-rate R`` (with
``--limit-burst B``, ``--limit-tolerance-ms T`` for network jitter) makes it a rate-limited
provider: a POST beyond R a second (GCRA, bursts of B) is answered 429 with ``Retry-After: 1``
and only its arrival time is kept (``refused_at``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

from aiohttp import web


async def main(
    record: bool = False,
    latency_ms: float = 0.0,
    limit_rate: float = 0.0,
    limit_burst: int = 1,
    tolerance_ms: float = 0.0,
) -> None:
    count = 0
    ids: list[int | None] = []
    arrived: list[float] = []
    refused: list[float] = []
    tat = 0.0  # GCRA: theoretical arrival time of the next request within the limit
    waiters: list[tuple[int, asyncio.Future[None]]] = []
    latency = latency_ms / 1000

    def wake() -> None:
        for entry in [w for w in waiters if count >= w[0]]:
            waiters.remove(entry)
            if not entry[1].done():
                entry[1].set_result(None)

    async def receive(request: web.Request) -> web.Response:
        nonlocal count, tat
        body = await request.read()
        if limit_rate:
            now, interval = time.time(), 1.0 / limit_rate
            if now < tat - (limit_burst - 1) * interval - tolerance_ms / 1000:
                refused.append(now)
                return web.json_response(
                    {"ok": False, "error": "rate_limited"}, status=429, headers={"Retry-After": "1"}
                )
            tat = max(tat, now) + interval
        if latency:
            await asyncio.sleep(latency)  # the provider's answer time, not synchronisation
        count += 1
        if record:
            arrived.append(time.time())
            try:
                ids.append(int(json.loads(body)["delivery_id"]))
            except (ValueError, KeyError, TypeError):
                ids.append(None)
        if waiters:
            wake()
        return web.json_response({"ok": True, "id": str(count)})

    async def counted(request: web.Request) -> web.Response:
        at_least = int(request.query.get("at_least", "0"))
        if count < at_least:
            future = asyncio.get_running_loop().create_future()
            waiters.append((at_least, future))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, float(request.query.get("timeout", "30")))
        return web.json_response({"count": count})

    async def delivered(request: web.Request) -> web.Response:
        return web.json_response({"count": count, "ids": ids, "at": arrived, "refused_at": refused})

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    app.router.add_get("/count", counted)
    app.router.add_get("/deliveries", delivered)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", action="store_true", help="keep every POST's delivery_id")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay every answer")
    parser.add_argument("--limit-rate", type=float, default=0.0, help="429 beyond this rate")
    parser.add_argument("--limit-burst", type=int, default=1, help="burst within the limit")
    parser.add_argument(
        "--limit-tolerance-ms", type=float, default=0.0, help="forgive network jitter"
    )
    args = parser.parse_args()
    asyncio.run(
        main(
            args.record,
            args.latency_ms,
            args.limit_rate,
            args.limit_burst,
            args.limit_tolerance_ms,
        )
    )
