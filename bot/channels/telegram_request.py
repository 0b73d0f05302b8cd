"""python-telegram-bot's HTTP layer over the one shared aiohttp session.

The library's default layer (httpx) managed ~200–330 ``sendMessage`` calls/s on a 2-core
machine; this one reaches several times that against the same stand-in (``bench/``), and it
shares connection pooling, limits and shutdown with every other adapter.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import aiohttp
import orjson
from telegram.error import NetworkError, TelegramError, TimedOut
from telegram.request import BaseRequest, RequestData

from bot.redaction import redact_secrets

# The HTTP status of the last Bot API answer in this task, so that an adapter can record the
# provider's code: python-telegram-bot turns the status into an exception class and drops it.
last_status: ContextVar[int | None] = ContextVar("telegram_last_status", default=None)


# Errors quoting a Bot API URL carry the token: the adapter redacts them with this.
redact = redact_secrets


def bot_urls(api_url: str) -> tuple[str, str]:
    """``(base_url, base_file_url)`` for ``telegram.Bot`` from the configured API root."""
    root = api_url.rstrip("/")
    return f"{root}/bot", f"{root}/file/bot"


class AiohttpRequest(BaseRequest):
    """A :class:`telegram.request.BaseRequest` over a caller-owned ``aiohttp.ClientSession``.

    Requests go as JSON (the Bot API accepts it for every method); uploads as multipart. JSON
    is encoded and parsed with orjson, the way PTB's ``BaseRequest`` docs suggest (the
    parameters' raw values, ``parse_json_payload`` overridden).
    ``initialize``/``shutdown`` leave the session alone: its owner closes it.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        read_timeout: float | None = 10.0,
        connect_timeout: float | None = 5.0,
    ) -> None:
        self._session = session
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout

    @property
    def read_timeout(self) -> float | None:
        """The default read timeout, in seconds."""
        return self._read_timeout

    async def initialize(self) -> None:
        """Nothing to open: the session is shared."""

    async def shutdown(self) -> None:
        """Nothing to close: the session belongs to the caller."""

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: object = BaseRequest.DEFAULT_NONE,
        write_timeout: object = BaseRequest.DEFAULT_NONE,
        connect_timeout: object = BaseRequest.DEFAULT_NONE,
        pool_timeout: object = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """Send one Bot API request; return its status and raw body."""
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=_seconds(connect_timeout, self._connect_timeout),
            sock_read=_seconds(read_timeout, self._read_timeout),
        )
        headers = {"User-Agent": self.USER_AGENT}
        body: bytes | aiohttp.FormData | None = None
        if request_data is not None and request_data.contains_files:
            body = _multipart(request_data)
        elif request_data is not None:
            # PTB's json_payload runs json.dumps on each value, then on the whole; orjson
            # encodes the parameters (nested objects as objects) in one pass, ~20× faster.
            body = orjson.dumps(request_data.parameters)
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method, url, data=body, headers=headers, timeout=timeout
            ) as response:
                last_status.set(response.status)
                return response.status, await response.read()
        except aiohttp.ConnectionTimeoutError as exc:
            # No connection, so no request: Telegram has nothing (a plain network error).
            raise NetworkError("connect timed out") from exc
        except TimeoutError as exc:
            # The request went out and no answer came: Telegram may have acted on it.
            raise TimedOut("timed out") from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise NetworkError(f"aiohttp.{type(exc).__name__}: {redact(str(exc))}") from None
            # Dropped after the request was written: as unknown as a read timeout.
            raise TimedOut(f"connection lost before the answer ({type(exc).__name__})") from None
        except aiohttp.ClientError as exc:
            # Never the exception's own text unredacted: aiohttp quotes the URL, token included.
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {redact(str(exc))}") from None

    @staticmethod
    def parse_json_payload(payload: bytes) -> dict[str, Any]:
        """The Bot API's answer, parsed with orjson; anything but a JSON object is a
        ``TelegramError``.

        Like PTB's default, invalid UTF-8 is replaced rather than refused; unlike it, the body
        of an answer that does not parse is never logged.
        """
        try:
            answer = orjson.loads(payload)
        except orjson.JSONDecodeError:
            try:
                answer = orjson.loads(payload.decode("utf-8", "replace"))
            except orjson.JSONDecodeError as exc:
                raise TelegramError("Invalid server response") from exc
        if not isinstance(answer, dict):
            raise TelegramError("Invalid server response: not a JSON object")
        return answer


def _seconds(given: object, default: float | None) -> float | None:
    # python-telegram-bot passes DEFAULT_NONE for "not given"; None means "no timeout".
    if given is None or isinstance(given, int | float):
        return given
    return default


def _multipart(request_data: RequestData) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for key, value in request_data.json_parameters.items():
        form.add_field(key, value)
    for name, (filename, content, mimetype) in request_data.multipart_data.items():
        form.add_field(name, content, filename=filename, content_type=mimetype)
    return form
