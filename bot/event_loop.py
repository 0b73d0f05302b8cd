"""The event loop a process runs on: the standard library's, or uvloop (``server.event_loop``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

EventLoopName = Literal["asyncio", "uvloop"]

log = logging.getLogger("tocsin.app")


def loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function that makes a new loop of the kind ``name`` names."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:  # not on this platform (uvloop has no Windows build)
            log.warning("server.event_loop is uvloop, which is not installed: using asyncio")
            return asyncio.new_event_loop
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def new_loop(name: EventLoopName) -> asyncio.AbstractEventLoop:
    """A new loop of the kind ``name`` names, set as the current one (for ``run_app``)."""
    loop = loop_factory(name)()
    asyncio.set_event_loop(loop)
    loop.call_soon(log_loop)
    return loop


def log_loop() -> None:
    """Say which event loop runs this process (from inside it)."""
    loop = asyncio.get_running_loop()
    log.info("event loop: %s", type(loop).__module__.split(".")[0])
