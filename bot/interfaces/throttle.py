"""Per-client throttling of failed credentials: dashboard logins and unknown bearer tokens.

A client (its address) that fails ``limit`` times within ``window`` seconds is refused with
``429`` and ``Retry-After`` until the oldest of those failures leaves the window. Counted in
this process only: each process of a deployment throttles on its own, which still bounds a
guessing attack to ``limit`` tries per window per process.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web


class TooManyAttempts(Exception):
    """A client over its failure budget; ``retry_after`` seconds until it may try again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed attempts: try again later")
        self.retry_after = retry_after


class Throttle:
    """Sliding windows of failures by client."""

    def __init__(
        self, limit: int = 20, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.get(client)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def check(self, client: str) -> None:
        """Raise :class:`TooManyAttempts` when ``client`` is over its budget."""
        failures = self._recent(client)
        if len(failures) >= self.limit:
            wait = failures[0] + self.window - self._clock()
            raise TooManyAttempts(max(1, math.ceil(wait)))

    def fail(self, client: str) -> None:
        """Count one failure of ``client``."""
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            for key in list(self._failures):
                self._recent(key)
        self._failures.setdefault(client, deque()).append(self._clock())


THROTTLE = web.AppKey("throttle", Throttle)


def client_of(request: web.Request) -> str:
    """The address failures are counted by (the peer: a proxy's header could be forged)."""
    return request.remote or "unknown"


def install(app: web.Application) -> None:
    """Give ``app`` its throttle (before it starts)."""
    if THROTTLE not in app:
        app[THROTTLE] = Throttle()


def too_many(exc: TooManyAttempts) -> web.Response:
    """The 429 answer, with ``Retry-After``."""
    return web.json_response(
        {"error": str(exc), "detail": {"retry_after": exc.retry_after}},
        status=429,
        headers={"Retry-After": str(exc.retry_after)},
    )
