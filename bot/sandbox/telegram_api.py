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
        ... settings: channels.telegram.api_url = api.url ...
        await api.press_ack(server_url + "/telegram/webhook", secret, chat_id=1001)

``press_ack`` plays a department head pressing "Pris en compte" on the latest message of their
chat: it builds the callback-query update Telegram would send and POSTs it to the webhook with
the secret header. ``message_update``/``callback_update`` build such updates for other uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import inspect
import itertools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
MAX_LENGTH = 4096
_ALLOWED_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "code",
        "pre",
        "blockquote",
        "tg-emoji",
    }
)
_HTML = re.compile(
    r"<(/?)([A-Za-z][\w-]*)((?:\s[^<>]*)?)>|&(#x[0-9a-fA-F]+|#\d+|lt|gt|amp|quot);|([<&])|([^<&]+)"
)
_JSON_PARAMS = frozenset({"reply_markup", "link_preview_options", "allowed_updates", "entities"})


@dataclass(frozen=True)
class Failure:
    """An error answer the stand-in gives instead of doing the call."""

    status: int
    description: str
    retry_after: int | None = None

    @classmethod
    def flood(cls, retry_after: int = 5) -> Failure:
        """429 with ``parameters.retry_after``, as Telegram's flood control answers."""
        return cls(429, f"Too Many Requests: retry after {retry_after}", retry_after)

    @classmethod
    def blocked(cls) -> Failure:
        """403: the person blocked the bot."""
        return cls(403, "Forbidden: bot was blocked by the user")

    @classmethod
    def chat_not_found(cls) -> Failure:
        """400: no such chat (or the bot was never started in it)."""
        return cls(400, "Bad Request: chat not found")

    @classmethod
    def server_error(cls, status: int = 502) -> Failure:
        """A 5xx from Telegram's side."""
        return cls(status, HTTPStatus(status).phrase)


@dataclass(frozen=True)
class ApiCall:
    """One Bot API call as the stand-in took it; ``at`` is the event loop's clock."""

    method: str
    params: Mapping[str, Any]
    status: int
    at: float


@dataclass
class SentMessage:
    """A message the bot has in a chat, as it stands now (edits included)."""

    chat_id: int | str
    message_id: int
    html: str
    text: str
    reply_markup: dict[str, Any] | None
    date: int
    edits: int = 0
    history: list[str] = field(default_factory=list)  # earlier versions of ``html``


class ApiError(Exception):
    """An error answer (status, description) for the current call."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.retry_after = status, description, retry_after


def visible_text(markup: str) -> str:
    """Telegram HTML → the text a reader sees; ``ValueError`` as Telegram's parser refuses."""
    stack: list[str] = []
    out: list[str] = []
    for match in _HTML.finditer(markup):
        closing, name, _, entity, stray, text = match.groups()
        if name is not None:
            name = name.lower()
            if name not in _ALLOWED_TAGS:
                raise ValueError(f'Unsupported start tag "{name}" at byte offset {match.start()}')
            if not closing:
                stack.append(name)
            elif not stack or stack.pop() != name:
                raise ValueError(f"Unexpected end tag at byte offset {match.start()}")
        elif entity is not None:
            out.append(html.unescape(f"&{entity};"))
        elif stray is not None:
            raise ValueError(
                f'Unsupported start tag or character "{stray}" at byte offset {match.start()}'
            )
        else:
            out.append(text)
    if stack:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class TelegramSandbox:
    """The stand-in server; see the module docstring. ``token=None`` accepts any token."""

    def __init__(
        self,
        token: str | None = None,
        *,
        host: str = "127.0.0.1",
        bot_username: str = "tocsin_sandbox_bot",
        bot_id: int = 7000001,
    ) -> None:
        self.token = token
        self.bot_user = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Tocsin",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.webhook: dict[str, Any] | None = None
        self.names: dict[int, tuple[str, str | None]] = {}
        self._host = host
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._calls: list[ApiCall] = []
        self._messages: dict[tuple[str, int], SentMessage] = {}
        self._failures: dict[str, list[list[Any]]] = {}
        self._callbacks: set[str] = set()
        self._pending: list[dict[str, Any]] = []
        self._ids = itertools.count(101)
        self._update_ids = itertools.count(500_000_001)
        self._changed = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Telegram sandbox is not started")
        return self._port

    @property
    def url(self) -> str:
        """The API root, for ``channels.telegram.api_url``."""
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self._host, 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> TelegramSandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- programming and reading ------------------------------------------------------
    def fail(self, chat_id: int | str, failure: Failure, times: int | None = 1) -> None:
        """Answer the next ``times`` calls about ``chat_id`` with ``failure`` (None: always)."""
        self._failures.setdefault(str(chat_id), []).append([failure, times])

    def clear_failures(self, chat_id: int | str | None = None) -> None:
        if chat_id is None:
            self._failures.clear()
        else:
            self._failures.pop(str(chat_id), None)

    def register(self, user_id: int, first_name: str, last_name: str | None = None) -> None:
        """Give a person a name (their private chat has the same id)."""
        self.names[user_id] = (first_name, last_name)

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
    def user(
        self, user_id: int, first_name: str | None = None, last_name: str | None = None
    ) -> dict[str, Any]:
        """A ``User`` object (names from :meth:`register` unless given)."""
        known_first, known_last = self.names.get(user_id, (f"User {user_id}", None))
        data: dict[str, Any] = {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name or known_first,
            "language_code": "fr",
        }
        if (last_name or known_last) is not None:
            data["last_name"] = last_name or known_last
        return data

    def chat(self, chat_id: int | str) -> dict[str, Any]:
        """A ``Chat`` object: private for a positive id, (super)group for a negative one."""
        number = int(chat_id)
        if number > 0:
            first, last = self.names.get(number, (f"User {number}", None))
            data: dict[str, Any] = {"id": number, "type": "private", "first_name": first}
            if last is not None:
                data["last_name"] = last
            return data
        kind = "supergroup" if str(number).startswith("-100") else "group"
        return {"id": number, "type": kind, "title": f"Group {number}"}

    def message_update(self, chat_id: int, user_id: int, text: str, **user: str) -> dict[str, Any]:
        """An update with a message from ``user_id`` in ``chat_id`` (commands get their entity)."""
        message: dict[str, Any] = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": self.chat(chat_id),
            "from": self.user(user_id, **user),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [
                {"type": "bot_command", "offset": 0, "length": _utf16_len(command)}
            ]
        return {"update_id": next(self._update_ids), "message": message}

    def callback_update(
        self, message: SentMessage, user_id: int, data: str | None = None, **user: str
    ) -> dict[str, Any]:
        """An update for ``user_id`` pressing the (first) button of ``message``."""
        if data is None:
            data = _buttons(message)[0]
        query_id = str(next(self._ids) * 7919)
        self._callbacks.add(query_id)
        return {
            "update_id": next(self._update_ids),
            "callback_query": {
                "id": query_id,
                "from": self.user(user_id, **user),
                "data": data,
                "chat_instance": str(abs(hash(str(message.chat_id)))),
                "message": self._message_json(message),
            },
        }

    async def post_update(
        self,
        webhook_url: str,
        update: Mapping[str, Any],
        secret: str | None,
        session: aiohttp.ClientSession | None = None,
    ) -> int:
        """POST ``update`` to a webhook as Telegram does (secret header when given); the status."""
        headers = {SECRET_HEADER: secret} if secret is not None else {}
        own = session is None
        client = session or aiohttp.ClientSession()
        try:
            async with client.post(webhook_url, json=dict(update), headers=headers) as response:
                await response.read()
                return response.status
        finally:
            if own:
                await client.close()

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
            m for m in self.messages(chat_id) if any(d.startswith("ack:") for d in _buttons(m))
        ]
        if not with_button:
            raise LookupError(f"no message with an acknowledgement button in chat {chat_id}")
        message = with_button[-1]
        data = next(d for d in _buttons(message) if d.startswith("ack:"))
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
            body: dict[str, Any] = {
                "ok": False,
                "error_code": exc.status,
                "description": exc.description,
            }
            if exc.retry_after is not None:
                body["parameters"] = {"retry_after": exc.retry_after}
            return web.json_response(body, status=exc.status)
        self._record(method, params, 200)
        return web.json_response({"ok": True, "result": result})

    def _record(self, method: str, params: Mapping[str, Any], status: int) -> None:
        self._calls.append(ApiCall(method, params, status, asyncio.get_running_loop().time()))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _maybe_fail(self, params: Mapping[str, Any]) -> None:
        scripted = self._failures.get(str(params.get("chat_id")))
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
        source, text = _message_text(params)
        message = SentMessage(
            chat_id, next(self._ids), source, text, params.get("reply_markup"), int(time.time())
        )
        self._messages[(str(chat_id), message.message_id)] = message
        return self._message_json(message)

    def _api_editMessageText(self, params: Mapping[str, Any]) -> Any:
        message = self._find(params)
        source, text = _message_text(params)
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

    def _message_json(self, message: SentMessage) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": message.message_id,
            "date": message.date,
            "chat": self.chat(message.chat_id),
            "from": self.bot_user,
            "text": message.text,
        }
        if message.reply_markup:
            data["reply_markup"] = message.reply_markup
        if message.edits:
            data["edit_date"] = int(time.time())
        return data


def _buttons(message: SentMessage) -> list[str]:
    rows = (message.reply_markup or {}).get("inline_keyboard") or []
    return [b["callback_data"] for row in rows for b in row if "callback_data" in b]


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


def _message_text(params: Mapping[str, Any]) -> tuple[str, str]:
    source = str(params.get("text") or "")
    text = source
    if str(params.get("parse_mode", "")).upper() == "HTML":
        try:
            text = visible_text(source)
        except ValueError as exc:
            raise ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
    if not text.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if _utf16_len(text) > MAX_LENGTH:
        raise ApiError(400, "Bad Request: message is too long")
    return source, text


async def _params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            params.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    for key in _JSON_PARAMS & params.keys():
        if isinstance(params[key], str):
            # Form-encoded calls carry these as JSON strings; a bad one stays a string.
            with contextlib.suppress(ValueError):
                params[key] = json.loads(params[key])
    return params
