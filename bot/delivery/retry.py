"""Retry decisions: quick in-attempt retries (tenacity) and persisted backoff for the rest."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from bot.domain.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the worker tries before giving up on a channel."""

    max_attempts: int = 8
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    quick_tries: int = 2
    quick_wait_max: float = 0.2
    jitter: Callable[[], float] = field(default=random.random)

    def next_attempt(self, now: datetime, attempts: int, retry_after: float | None) -> datetime:
        """Exponential backoff with jitter, never sooner than the provider asked."""
        backoff = min(self.backoff_max, self.backoff_base * 2 ** max(attempts - 1, 0))
        delay = backoff * (0.5 + self.jitter() / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return now + timedelta(seconds=delay)


def _quick_retryable(exc: BaseException) -> bool:
    # A provider's own wait (429) is honoured by the queue, not by sleeping here.
    return isinstance(exc, TransientError) and exc.retry_after is None


async def with_quick_retries(
    policy: RetryPolicy,
    send: Callable[[], Awaitable[T]],
    on_failure: Callable[[BaseException], None],
) -> T:
    """Run ``send``, retrying a transient failure a couple of times within the attempt
    (connection resets, a dropped keep-alive); each failure is reported to ``on_failure``."""
    try:
        # The common case needs no retry machinery at all (it costs ~30 µs a send).
        return await send()
    except TransientError as exc:
        if not _quick_retryable(exc) or policy.quick_tries <= 1:
            raise
        on_failure(exc)

    def before_sleep(state: RetryCallState) -> None:
        if state.outcome is not None and state.outcome.failed:
            failure = state.outcome.exception()
            if failure is not None:
                on_failure(failure)

    async def attempt() -> T:
        return await send()

    await asyncio.sleep(random.uniform(0.01, 0.03))  # noqa: S311 - jitter, not security
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.quick_tries - 1),
        wait=wait_exponential_jitter(multiplier=0.02, max=policy.quick_wait_max),
        retry=retry_if_exception(_quick_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(attempt)
