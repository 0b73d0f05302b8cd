"""A local Telegram Bot API stand-in (aiohttp, 127.0.0.1, ephemeral port), for ``tocsin demo``
and the tests.

It answers ``getMe``, ``sendMessage``, ``editMessageText``, ``editMessageReplyMarkup``,
``answerCallbackQuery``, ``setWebhook``, ``deleteWebhook`` and ``getUpdates`` at
``/bot<TOKEN>/<method>`` (JSON, form or query parameters, as the real one), with the real HTTP
status codes, and records every call. ``sendMessage`` checks Telegram HTML (allowed tags,
balance, escaped ``<`` and ``&``) and the 4,096-character limit the way the real API does.
Failures are programmed per chat::

    async with TelegramSandbox(token="123:abc") as api:
        api.fail(1002, Failure.flood(retry_after=7))       # next send to 1002 → 429
        api.fail(1003, Failure.blocked(), times=None)      # every send to 1003 → 403
        api.fail_later(1004, Failure.server_error(), after=1)  # the 2nd send to 1004 → 502
        api.migrate(-1005, -1001234567890)                 # the group became a supergroup
        api.hold_after_send(1006, seconds=5)               # sent, answered too late
        ... settings: channels.telegram.api_url = api.url ...
        await api.press_ack(server_url + "/telegram/webhook", secret, chat_id=1001)

``press_ack`` plays a department head pressing "Pris en compte" on the latest message of their
chat: it builds the callback-query update Telegram would send and POSTs it to the webhook with
the secret header. ``message_update``/``callback_update`` build such updates for other uses
(see :mod:`tocsin_sandbox.telegram_updates`, which also holds the failure and message types).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tocsin_sandbox.server import LocalServer, call_arguments
from tocsin_sandbox.telegram_updates import (
    MAX_LENGTH,
    SECRET_HEADER,
    ApiError,
    Failure,
    SentMessage,
    TelegramUpdates,
    buttons,
    message_text,
    visible_text,
)

__all__ = [
    "MAX_LENGTH",
    "SECRET_HEADER",
    "ApiCall",
    "ApiError",
    "Failure",
    "SentMessage",
    "TelegramSandbox",
    "visible_text",
]

_JSON_PARAMS = frozenset({"reply_markup", "link_preview_options", "allowed_updates", "entities"})


@dataclass(frozen=True)
class ApiCall:
    """One Bot API call as the stand-in took it; ``at`` is the event loop's clock."""

    method: str
    params: Mapping[str, Any]
    status: int
    at: float


class TelegramSandbox(LocalServer, TelegramUpdates):
    """The stand-in server; see the module docstring. ``token=None`` accepts any token."""

    def __init__(
        self,
        token: str | None = None,
        *,
        host: str = "127.0.0.1",
        bot_username: str = "tocsin_sandbox_bot",
        bot_id: int = 7000001,
    ) -> None:
        TelegramUpdates.__init__(self, bot_username=bot_username, bot_id=bot_id)
        self.token = token
        self.webhook: dict[str, Any] | None = None
        LocalServer.__init__(self, host)
        self._calls: list[ApiCall] = []
        self._messages: dict[tuple[str, int], SentMessage] = {}
        self._failures: dict[str, list[list[Any]]] = {}
        self._later: dict[str, list[Any]] = {}  # chat → [calls still let through, failure]
        self._migrated: dict[str, int] = {}  # old group id → its supergroup's id
        self._holds: dict[str, list[float]] = {}  # chat → [seconds, sends left]
        self._released = asyncio.Event()
        self._pending: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The API root, for ``channels.telegram.api_url``."""
        return self.base_url

    client_max_size = 8 * 1024 * 1024

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._handle)

    # --- programming and reading ------------------------------------------------------
    def fail(self, chat_id: int | str, failure: Failure, times: int | None = 1) -> None:
        """Answer the next ``times`` calls about ``chat_id`` with ``failure`` (None: always)."""
        self._failures.setdefault(str(chat_id), []).append([failure, times])

    def fail_later(self, chat_id: int | str, failure: Failure, after: int) -> None:
        """Let ``after`` calls about ``chat_id`` through, then answer the next one with
        ``failure`` (once): a long message whose second part fails."""
        self._later[str(chat_id)] = [after, failure]

    def migrate(self, chat_id: int | str, new_chat_id: int) -> None:
        """The group ``chat_id`` was upgraded to the supergroup ``new_chat_id``: from now on
        every send to the old id is refused with ``migrate_to_chat_id``, as on Telegram."""
        self._migrated[str(chat_id)] = new_chat_id

    def hold_after_send(self, chat_id: int | str, seconds: float, times: int = 1) -> None:
        """Take the next ``times`` messages to ``chat_id`` (they are in the chat at once) but
        answer only after ``seconds`` (or at :meth:`stop`): past the client's timeout."""
        self._holds[str(chat_id)] = [seconds, times]

    def clear_failures(self, chat_id: int | str | None = None) -> None:
        if chat_id is None:
            self._failures.clear()
            self._later.clear()
        else:
            self._failures.pop(str(chat_id), None)
            self._later.pop(str(chat_id), None)

    async def stop(self) -> None:
        """Release held answers, then stop listening."""
        self._released.set()
        await LocalServer.stop(self)

    @property
    def calls(self) -> list[ApiCall]:
        """Every call so far, in arrival order (a copy)."""
        return list(self._calls)

    def calls_to(self, method: str, chat_id: int | str | None = None) -> list[ApiCall]:
        """Calls of ``method`` (that succeeded or not), optionally about one chat."""
        return [
            c
            for c in self._calls
            if c.method == method
            and (chat_id is None or str(c.params.get("chat_id")) == str(chat_id))
        ]

    def messages(self, chat_id: int | str | None = None) -> list[SentMessage]:
        """Messages the bot has sent (as they stand now), optionally in one chat."""
        return [
            m for m in self._messages.values() if chat_id is None or str(m.chat_id) == str(chat_id)
        ]

    async def wait_for(self, method: str, count: int, timeout: float = 10.0) -> list[ApiCall]:
        """Wait until ``count`` calls of ``method`` have arrived; return them."""
        async with asyncio.timeout(timeout):
            while len(self.calls_to(method)) < count:
                await self._changed.wait()
        return self.calls_to(method)

    # --- updates Telegram would send ---------------------------------------------------
    async def press_ack(
        self,
        webhook_url: str,
        secret: str,
        chat_id: int,
        *,
        user_id: int | None = None,
        session: aiohttp.ClientSession | None = None,
        **user: str,
    ) -> int:
        """Press the acknowledgement button of the latest message in ``chat_id`` (by the chat's
        owner unless ``user_id``); returns the webhook's HTTP status."""
        with_button = [
            m for m in self.messages(chat_id) if any(d.startswith("ack:") for d in buttons(m))
        ]
        if not with_button:
            raise LookupError(f"no message with an acknowledgement button in chat {chat_id}")
        message = with_button[-1]
        data = next(d for d in buttons(message) if d.startswith("ack:"))
        update = self.callback_update(message, user_id or chat_id, data, **user)
        return await self.post_update(webhook_url, update, secret, session)

    # --- the API -------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        try:
            if self.token is not None and request.match_info["token"] != self.token:
                raise ApiError(401, "Unauthorized")
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            self._maybe_fail(params)
            result = handler(params)
            if inspect.isawaitable(result):
                result = await result
        except ApiError as exc:
            self._record(method, params, exc.status)
            migrate_to = exc.migrate_to if isinstance(exc, _Migrated) else None
            body: dict[str, Any] = {
                "ok": False,
                "error_code": exc.status,
                "description": exc.description,
            }
            if exc.retry_after is not None:
                body["parameters"] = {"retry_after": exc.retry_after}
            if migrate_to is not None:
                body["parameters"] = {"migrate_to_chat_id": migrate_to}
            return web.json_response(body, status=exc.status)
        self._record(method, params, 200)
        hold = self._holds.get(str(params.get("chat_id")))
        if method == "sendMessage" and hold is not None:
            hold[1] -= 1
            if hold[1] <= 0:
                del self._holds[str(params.get("chat_id"))]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), hold[0])
        return web.json_response({"ok": True, "result": result})

    def _record(self, method: str, params: Mapping[str, Any], status: int) -> None:
        self._calls.append(ApiCall(method, params, status, asyncio.get_running_loop().time()))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _maybe_fail(self, params: Mapping[str, Any]) -> None:
        chat = str(params.get("chat_id"))
        if chat in self._migrated:
            raise _Migrated(self._migrated[chat])
        later = self._later.get(chat)
        if later is not None:
            if later[0] > 0:
                later[0] -= 1
            else:
                del self._later[chat]
                raise ApiError(later[1].status, later[1].description, later[1].retry_after)
        scripted = self._failures.get(chat)
        if not scripted:
            return
        entry = scripted[0]
        failure: Failure = entry[0]
        if entry[1] is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                scripted.pop(0)
        raise ApiError(failure.status, failure.description, failure.retry_after)

    def _api_getMe(self, params: Mapping[str, Any]) -> Any:
        return self.bot_user

    def enqueue(self, update: Mapping[str, Any]) -> None:
        """Hand ``update`` to a bot that polls (``getUpdates``) instead of using a webhook."""
        self._pending.append(dict(update))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _api_getUpdates(self, params: Mapping[str, Any]) -> Any:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        # Confirmed updates (below the offset) are gone, as on Telegram.
        self._pending = [u for u in self._pending if u["update_id"] >= offset]
        if not self._pending:
            with contextlib.suppress(TimeoutError):  # a long poll that ends empty
                async with asyncio.timeout(min(float(params.get("timeout") or 0), 5.0)):
                    await self._changed.wait()
        return list(self._pending)

    def _api_setWebhook(self, params: Mapping[str, Any]) -> Any:
        if not params.get("url"):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided")
        self.webhook = dict(params)
        return True

    def _api_deleteWebhook(self, params: Mapping[str, Any]) -> Any:
        self.webhook = None
        return True

    def _api_answerCallbackQuery(self, params: Mapping[str, Any]) -> Any:
        if str(params.get("callback_query_id")) not in self._callbacks:
            raise ApiError(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        return True

    def _api_sendMessage(self, params: Mapping[str, Any]) -> Any:
        chat_id = _chat_id(params)
        source, text = message_text(params)
        message = SentMessage(
            chat_id, next(self._ids), source, text, params.get("reply_markup"), int(time.time())
        )
        self._messages[(str(chat_id), message.message_id)] = message
        return self._message_json(message)

    def _api_editMessageText(self, params: Mapping[str, Any]) -> Any:
        message = self._find(params)
        source, text = message_text(params)
        return self._edit(message, source, text, params.get("reply_markup"))

    def _api_editMessageReplyMarkup(self, params: Mapping[str, Any]) -> Any:
        message = self._find(params)
        return self._edit(message, message.html, message.text, params.get("reply_markup"))

    def _find(self, params: Mapping[str, Any]) -> SentMessage:
        key = (str(_chat_id(params)), int(params.get("message_id") or 0))
        if key not in self._messages:
            raise ApiError(400, "Bad Request: message to edit not found")
        return self._messages[key]

    def _edit(
        self, message: SentMessage, source: str, text: str, markup: dict[str, Any] | None
    ) -> Any:
        if source == message.html and markup == message.reply_markup:
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message "
                "content and reply markup are exactly the same as a current "
                "content and reply markup of the message",
            )
        message.history.append(message.html)
        message.html, message.text, message.reply_markup = source, text, markup
        message.edits += 1
        return self._message_json(message)


class _Migrated(ApiError):
    """Telegram's answer to a send to a group that became a supergroup."""

    def __init__(self, new_chat_id: int) -> None:
        super().__init__(400, "Bad Request: group chat was upgraded to a supergroup chat")
        self.migrate_to = new_chat_id


def _chat_id(params: Mapping[str, Any]) -> int | str:
    raw = params.get("chat_id")
    if raw is None or raw == "":
        raise ApiError(400, "Bad Request: chat_id is empty")
    text = str(raw)
    if text.startswith("@"):
        return text
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, "Bad Request: chat not found") from None


async def _params(request: web.Request) -> dict[str, Any]:
    params = await call_arguments(request)
    for key in _JSON_PARAMS & params.keys():
        if isinstance(params[key], str):
            # Form-encoded calls carry these as JSON strings; a bad one stays a string.
            with contextlib.suppress(ValueError):
                params[key] = json.loads(params[key])
    return params
