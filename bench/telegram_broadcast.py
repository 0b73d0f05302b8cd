"""Telegram broadcast benchmark: ``sendMessage`` calls/s to the Bot API stand-in (unthrottled,
its own process), in one run and against the same stand-in:

  tocsin — the Telegram channel (python-telegram-bot's Bot over our aiohttp request class,
           HTML body + acknowledgement button, Message parsed back, receipt built);
  raw    — a bare aiohttp POST of the same JSON, one shared ClientSession;
  httpx  — python-telegram-bot's default HTTP layer (HTTPXRequest), for reference.

Each keeps the same number of sends in flight; raw and tocsin alternate for a few rounds and
each keeps its best. The last line is the figure::

    telegram: n=… gc=… tocsin_per_s=… raw_per_s=… ratio=… cpu_us=<tocsin>/<raw>

``cpu_us`` is this process's CPU time per send (best round of each), the figure to compare
when the machine is shared: the ratio moves with the other load, the CPU cost much less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PTB_TIMEDELTA", "true")

from telegram import Bot
from telegram.request import HTTPXRequest

from bot.channels.telegram import TelegramChannel, build_bot
from bot.collector import tune
from bot.domain.models import ChannelName
from bot.ports import OutboundMessage
from tocsin_sandbox.telegram_api import TelegramSandbox

TOKEN = "100001:bench-token"
CONCURRENCY = 50
BODY = (
    "<b>Panne Orbis</b> — appliquez les procédures dégradées (papier).\n"
    "Le SAMU n'est pas touché. Merci de confirmer la lecture."
)


async def serve() -> None:
    """The stand-in, in this process, until stdin closes (the port goes to stdout)."""
    async with TelegramSandbox(token=TOKEN) as api:
        print(api.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


@contextlib.contextmanager
def sandbox_process() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


async def rate(
    n: int, send: Callable[[int], Awaitable[object]], cpu: list[float] | None = None
) -> float:
    """Sends/s for ``n`` sends, ``CONCURRENCY`` in flight; appends this process's CPU
    microseconds per send to ``cpu`` (the stand-in runs in its own process, so this is the
    sender's cost alone, and it does not depend on the machine's other load)."""
    queue = iter(range(n))

    async def lane() -> None:
        for i in queue:
            await send(i)

    start, start_cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append((time.process_time() - start_cpu) / n * 1e6)
    return n / elapsed


def message(i: int) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=i,
        channel=ChannelName.TELEGRAM,
        address=str(10_000 + i),
        recipient=f"head {i}",
        locale="fr",
        bodies={"telegram": BODY},
        require_ack=True,
        ack_token=f"bench-token-{i:08d}",
    )


async def main(n: int, rounds: int, with_httpx: bool, gc: str) -> None:
    with sandbox_process() as url:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            channel = TelegramChannel(build_bot(TOKEN, url, session))
            endpoint = f"{url}/bot{TOKEN}/sendMessage"

            async def raw(i: int) -> object:
                payload = {
                    "chat_id": 10_000 + i,
                    "text": BODY,
                    "parse_mode": "HTML",
                    "reply_markup": {
                        "inline_keyboard": [
                            [
                                {
                                    "text": "Pris en compte",
                                    "callback_data": f"ack:bench-token-{i:08d}",
                                }
                            ]
                        ]
                    },
                }
                async with session.post(endpoint, json=payload) as response:
                    return await response.json()

            async def tocsin(i: int) -> object:
                return await channel.send(message(i))

            await rate(200, raw)  # warm the connection pool and the stand-in
            await rate(200, tocsin)
            # Alternate, and keep each one's best round: the machine's other load comes and
            # goes, and it should not decide which of the two looks faster.
            raws, tocsins = [], []
            raw_cpu: list[float] = []
            tocsin_cpu: list[float] = []
            for _ in range(rounds):
                raws.append(await rate(n, raw, raw_cpu))
                tocsins.append(await rate(n, tocsin, tocsin_cpu))
            rounds_seen = ",".join(f"{r:.0f}/{t:.0f}" for r, t in zip(raws, tocsins, strict=True))
            raw_per_s, tocsin_per_s = max(raws), max(tocsins)

        if with_httpx:
            request = HTTPXRequest(connection_pool_size=CONCURRENCY)
            bot = Bot(TOKEN, base_url=f"{url}/bot", request=request)
            async with bot:

                async def httpx(i: int) -> object:
                    return await bot.send_message(10_000 + i, BODY, parse_mode="HTML")

                await rate(200, httpx)
                httpx_per_s = await rate(n, httpx)

    print(
        f"telegram: n={n} gc={gc} tocsin_per_s={tocsin_per_s:.0f} raw_per_s={raw_per_s:.0f} "
        f"ratio={tocsin_per_s / raw_per_s:.2f} "
        f"cpu_us={min(tocsin_cpu):.0f}/{min(raw_cpu):.0f} rounds_raw/tocsin={rounds_seen}"
        + (f" httpx_per_s={httpx_per_s:.0f}" if with_httpx else "")
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--n", type=int, default=5000, help="messages per contender")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best kept)")
    parser.add_argument("--no-httpx", action="store_true", help="skip the httpx reference")
    parser.add_argument(
        "--gc",
        choices=("tuned", "default"),
        default="tuned",
        help="the garbage collector settings of this process (server.gc)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
    else:
        tune(args.gc)
        asyncio.run(main(args.n, args.rounds, not args.no_httpx, args.gc))
