"""How an HTTP provider's answer or failure maps onto Tocsin's channel errors.

Shared by every adapter that talks HTTP through aiohttp (webhook, SMS gateways, chat APIs), so
that a 429, a 503, a reset or a hang means the same thing whichever provider it comes from:

- 2xx: success (the adapter builds its own :class:`~bot.ports.Receipt`);
- 429: :class:`TransientError` scoped to the destination, with the provider's ``Retry-After``;
- 408, 425 and 5xx: :class:`TransientError` (503's ``Retry-After`` is honoured too);
- any other status: :class:`PermanentError` naming the status and a short part of the body;
- connection refused or reset, disconnect, broken payload, timeout: :class:`TransientError`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp

from bot.domain.errors import ChannelError, PermanentError, TransientError

# Enough of an error body to tell the operator why, not enough to fill the attempts table.
BODY_EXCERPT = 200
# Reading more than this from a provider's answer is never useful and could exhaust memory.
MAX_BODY = 64 * 1024

_TRANSIENT_STATUSES = frozenset({408, 425, 429})


def excerpt(body: str, limit: int = BODY_EXCERPT) -> str:
    """``body`` on one line, cut to ``limit`` characters (with an ellipsis when cut)."""
    flat = " ".join(body.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    A date in the past means "now" (0.0); anything unparseable is ignored (None) rather than
    guessed, so the caller falls back to its own backoff.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means it said so
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def status_error(
    status: int, body: str = "", headers: Mapping[str, str] | None = None
) -> ChannelError | None:
    """The error an HTTP status stands for, or None for 2xx."""
    if 200 <= status < 300:
        return None
    headers = headers or {}
    code = str(status)
    reason = f"HTTP {status}" + (f": {excerpt(body)}" if body.strip() else "")
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if status == 429:
        # A 429 is about this webhook/chat; the rest of the provider may be fine.
        return TransientError(reason, code, retry_after=retry_after, scope="destination")
    if status in _TRANSIENT_STATUSES or status >= 500:
        return TransientError(reason, code, retry_after=retry_after)
    return PermanentError(reason, code)


async def response_error(response: aiohttp.ClientResponse) -> ChannelError | None:
    """:func:`status_error` for an aiohttp response, reading (a bounded part of) its body."""
    if 200 <= response.status < 300:
        return None
    try:
        raw = await response.content.read(MAX_BODY)
    except (aiohttp.ClientError, TimeoutError):
        # The status alone decides; a body cut short only loses the explanation.
        raw = b""
    return status_error(response.status, raw.decode("utf-8", "replace"), response.headers)


def exception_error(exc: BaseException) -> ChannelError | None:
    """The channel error an aiohttp client failure stands for, or None if it is not one."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        # An untrusted certificate will not become trusted by retrying.
        return PermanentError(f"TLS certificate not trusted: {exc.__class__.__name__}")
    if isinstance(exc, aiohttp.InvalidURL):
        # Not echoed: a webhook URL's path is often its secret.
        return PermanentError("invalid URL")
    if isinstance(exc, TimeoutError):  # before ClientConnectionError: some timeouts are both
        return TransientError("timed out")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransientError("server disconnected")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return TransientError(f"connection failed: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):
        # A malformed or truncated HTTP answer: the next attempt may well get a clean one.
        return TransientError(f"bad HTTP response: {exc.message}", str(exc.status or "") or None)
    return None


class _TranslatedErrors:
    """The context manager of :func:`translated_errors` (stateless, so one serves all; a
    class rather than a generator: it wraps every send)."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None or isinstance(exc, ChannelError) or not isinstance(exc, Exception):
            return
        error = exception_error(exc)
        if error is None:
            return
        raise error from exc


_TRANSLATED = _TranslatedErrors()


def translated_errors() -> _TranslatedErrors:
    """Re-raise aiohttp client failures inside the block as channel errors."""
    return _TRANSLATED
