"""What passes between a bot and the Telegram stand-in, apart from the server: the failures it
can be programmed to answer with, the messages the bot has sent, how Telegram reads their HTML,
and the users, chats and updates (messages, button presses) Telegram would send the bot.

:class:`TelegramUpdates` is the base of :class:`~tocsin_sandbox.telegram_api.TelegramSandbox`,
which serves the Bot API itself.
"""

from __future__ import annotations

import html
import itertools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import aiohttp

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


def utf16_len(text: str) -> int:
    """The length of ``text`` as Telegram counts it, in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def message_text(params: Mapping[str, Any]) -> tuple[str, str]:
    """The text of a ``sendMessage``/``editMessageText`` call as sent and as a reader sees it;
    :class:`ApiError` where Telegram refuses it (HTML it cannot parse, empty, too long)."""
    source = str(params.get("text") or "")
    text = source
    if str(params.get("parse_mode", "")).upper() == "HTML":
        try:
            text = visible_text(source)
        except ValueError as exc:
            raise ApiError(400, f"Bad Request: can't parse entities: {exc}") from None
    if not text.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if utf16_len(text) > MAX_LENGTH:
        raise ApiError(400, "Bad Request: message is too long")
    return source, text


class TelegramUpdates:
    """The Telegram side of a conversation with the bot: who the bot is, the people and chats
    it talks to (named with :meth:`register`), and the updates they would send it."""

    def __init__(self, *, bot_username: str, bot_id: int) -> None:
        self.bot_user = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Tocsin",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.names: dict[int, tuple[str, str | None]] = {}
        # Message ids and callback query ids, shared with the messages the bot sends.
        self._ids = itertools.count(101)
        self._update_ids = itertools.count(500_000_001)
        self._callbacks: set[str] = set()

    def register(self, user_id: int, first_name: str, last_name: str | None = None) -> None:
        """Give a person a name (their private chat has the same id)."""
        self.names[user_id] = (first_name, last_name)

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
                {"type": "bot_command", "offset": 0, "length": utf16_len(command)}
            ]
        return {"update_id": next(self._update_ids), "message": message}

    def callback_update(
        self, message: SentMessage, user_id: int, data: str | None = None, **user: str
    ) -> dict[str, Any]:
        """An update for ``user_id`` pressing the (first) button of ``message``."""
        if data is None:
            data = buttons(message)[0]
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


def buttons(message: SentMessage) -> list[str]:
    """The ``callback_data`` of every inline button of ``message``, row by row."""
    rows = (message.reply_markup or {}).get("inline_keyboard") or []
    return [b["callback_data"] for row in rows for b in row if "callback_data" in b]
