"""Telegram channel: ``sendMessage`` (HTML) through python-telegram-bot over the shared session.

Department heads get an inline "Pris en compte / Acknowledge" button whose callback data is
``ack:`` + the delivery's opaque token; :mod:`bot.interfaces.telegram_bot` handles the press.

Rate limits. Telegram asks for ~30 messages/s overall, 1/s per private chat and 20/min per
group. The worker's buckets come from the class attributes (30/s overall, 1/s per chat), and
:meth:`TelegramChannel.destination_limit` gives the right per-address shape for a worker that
asks. Whatever the worker does, ``send`` itself never lets a group (negative chat id) receive
more than 20 messages in any 60 s: past that it raises ``TransientError(scope="destination")``
with the wait, without calling Telegram, so only that group waits.

What the Bot API cannot tell. ``sendMessage`` has no idempotency key and no way to look a
message up, so a request that left without an answer (a read timeout, a connection dropped
after sending) is an :class:`UnknownOutcome`: the next attempt sends again, and the record
keeps the ``unknown`` attempt (the post-incident report counts it as a possible duplicate).

A group upgraded to a supergroup answers ``migrate_to_chat_id``: the message is sent there at
once, in the same attempt, the receipt names the new chat (``moved_to``, which the worker
records for ``GET /api/v1/channels``), later sends from this process go straight to it, and
the move is logged once (chat ids are not personal data).

A statement longer than 4,096 characters goes as several messages. When part *k* fails, the
channel remembers (in this process, by delivery id) the parts already delivered, the error
names them, and the retry resumes at part *k*: parts before it are not sent twice. A worker
that restarts in between has lost that memory and sends every part again.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import aiohttp
from telegram import Bot, LinkPreviewOptions
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.error import Forbidden as TelegramForbidden

from bot.channels.checks import CheckResult, failure_reason
from bot.channels.spec import Settings
from bot.channels.telegram_request import AiohttpRequest, bot_urls, last_status, redact
from bot.config_base import ConfigError
from bot.domain.errors import ChannelError, PermanentError, TransientError, UnknownOutcome
from bot.domain.models import ChannelName, DeliveryState
from bot.ports import MessageKey, OutboundMessage, Receipt

log = logging.getLogger(__name__)

ACK_PREFIX = "ack:"
ACK_LABELS = {"fr": "Pris en compte", "en": "Acknowledge"}
MAX_LENGTH = 4096  # characters (UTF-16 code units) of one message
_MAX_CALLBACK_DATA = 64  # bytes, Telegram's limit
# Crisis messages stay compact: no preview card for the status-page link.
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
_NO_PREVIEW_JSON = NO_PREVIEW.to_dict()  # the same, as the channel sends it
_HTML = ParseMode.HTML.value
_REMEMBERED = 10_000  # deliveries whose split message is part-way out

_TAG = re.compile(r"<(/?)([A-Za-z][\w-]*)[^>]*>")
_TOKENS = re.compile(r"<[^>]*>|&#?\w+;|\s+|[^<&\s]+|[<&]")


def ack_label(locale: str) -> str:
    """The button's label in ``locale`` (English for a language without one)."""
    return ACK_LABELS.get(locale.split("-")[0].split("_")[0], ACK_LABELS["en"])


def ack_keyboard(token: str, locale: str) -> dict[str, Any]:
    """One button whose callback carries the delivery's opaque acknowledgement token: the Bot
    API's ``InlineKeyboardMarkup`` as JSON (PTB's objects would be built only to be turned
    back into this dict)."""
    data = ACK_PREFIX + token
    if len(data.encode()) > _MAX_CALLBACK_DATA:
        raise PermanentError("acknowledgement token too long for a Telegram button")
    return {"inline_keyboard": [[{"text": ack_label(locale), "callback_data": data}]]}


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def is_group(address: str) -> bool:
    """Groups, supergroups and channels have negative ids (or an ``@username``)."""
    return address.startswith(("-", "@"))


def split_html(text: str, limit: int = MAX_LENGTH) -> list[str]:
    """Cut Telegram HTML into parts of at most ``limit`` UTF-16 units.

    Cuts fall on line boundaries (inside an over-long line, between words); a tag open at a cut
    is closed at the end of the part and reopened at the start of the next, so every part is
    valid HTML on its own.
    """
    text = text.strip()
    if utf16_len(text) <= limit:
        return [text]
    parts: list[str] = []
    stack: list[tuple[str, str]] = []  # (name, opening tag) open at the end of ``current``
    current = ""
    fresh = True  # ``current`` holds only reopened tags
    for piece in _pieces(text, max(limit // 2, 1)):
        after = _open_tags(piece, stack)
        if not fresh and utf16_len(current + piece) + _closing_len(after) > limit:
            parts.append(current.rstrip() + _closing(stack))
            current, fresh = "".join(tag for _, tag in stack), True
        current += piece
        stack, fresh = after, fresh and not piece.strip()
    if not fresh:
        parts.append(current.rstrip() + _closing(stack))
    return [part for part in parts if part.strip()]


def _pieces(text: str, size: int) -> list[str]:
    """Lines (with their newline); a line longer than ``size`` cut between words or entities."""
    pieces: list[str] = []
    for line in text.splitlines(keepends=True):
        if utf16_len(line) <= size:
            pieces.append(line)
            continue
        chunk = ""
        for token in _TOKENS.findall(line):
            # A single huge word is cut; a tag or an entity never is.
            while utf16_len(token) > size and token[0] not in "<&":
                head, token = token[:size], token[size:]
                pieces.extend([chunk, head] if chunk else [head])
                chunk = ""
            if chunk and utf16_len(chunk + token) > size:
                pieces.append(chunk)
                chunk = ""
            chunk += token
        if chunk:
            pieces.append(chunk)
    return pieces


def _open_tags(piece: str, stack: list[tuple[str, str]]) -> list[tuple[str, str]]:
    after = list(stack)
    for match in _TAG.finditer(piece):
        closing, name = match.group(1) == "/", match.group(2).lower()
        if not closing:
            after.append((name, match.group(0)))
        elif after and after[-1][0] == name:
            after.pop()
    return after


def _closing(stack: list[tuple[str, str]]) -> str:
    return "".join(f"</{name}>" for name, _ in reversed(stack))


def _closing_len(stack: list[tuple[str, str]]) -> int:
    return sum(len(name) + 3 for name, _ in stack)


class TelegramChannel:
    """Sends a delivery's Telegram rendering to a chat id with the Bot API's ``sendMessage``."""

    name = ChannelName.TELEGRAM
    keys: frozenset[MessageKey] = frozenset()
    max_length = MAX_LENGTH
    rate: float = 30.0  # messages/s for the whole bot
    burst: int = 30
    destination_rate: float | None = 1.0  # per private chat
    destination_burst: int = 1
    group_per_minute: int = 20  # per group, enforced in send (see the module docstring)

    def __init__(self, bot: Bot, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._bot = bot
        self._monotonic = monotonic
        self._group_sends: dict[str, deque[float]] = {}
        self._moved: dict[str, str] = {}  # old chat id → the supergroup it became
        self._parts_sent: OrderedDict[int, int] = OrderedDict()  # delivery id → parts out

    def __repr__(self) -> str:
        return "TelegramChannel(bot=•••)"

    def provider_key(self, address: str) -> str:
        """One bot, one provider: every chat shares Telegram's health and overall rate."""
        return "telegram"

    def destination_limit(self, address: str) -> tuple[float, int]:
        """``(rate per second, burst)`` for one chat: 1/s for a person, 20/min for a group."""
        if is_group(address):
            return self.group_per_minute / 60.0, 1
        return self.destination_rate or 1.0, self.destination_burst

    @property
    def moves(self) -> dict[str, str]:
        """Chats this process learned were moved (old id → new id)."""
        return dict(self._moved)

    async def send(self, message: OutboundMessage) -> Receipt:
        """Send the ``telegram`` body (HTML, split past 4,096 characters); the button, when an
        acknowledgement is required, goes on the last part, whose id becomes the provider id.
        See the module docstring for moved groups, unknown outcomes and resumed parts."""
        text = message.bodies.get("telegram")
        if not text or not text.strip():
            raise PermanentError("the statement has no Telegram rendering")
        address = self._moved.get(message.address, message.address)
        parts = split_html(text, self.max_length)
        start = min(self._parts_sent.get(message.delivery_id, 0), len(parts) - 1)
        self._take_group_slots(address, len(parts) - start)
        markup = ack_keyboard(message.ack_token, message.locale) if message.require_ack else None
        index, hops = start, 0
        last_status.set(None)
        try:
            while index < len(parts):
                try:
                    markup_here = markup if index == len(parts) - 1 else None
                    sent = await self._send_part(address, parts[index], markup_here)
                except ChatMigrated as exc:
                    if hops >= 2 or address == str(exc.new_chat_id):
                        raise  # moved again and again, or to itself: not a real upgrade
                    hops += 1
                    address = self._move(address, str(exc.new_chat_id))
                    continue  # the same part, to the supergroup, in this attempt
                index += 1
        except TelegramError as exc:
            error = channel_error(exc, last_status.get())
            if index > 0:
                self._remember_parts(message.delivery_id, index)
            if len(parts) > 1:
                error.reason = f"{error.reason} (part {index + 1} of {len(parts)}; {index} sent)"
                error.args = (error.reason,)
            raise error from None
        try:
            provider_id = f"{sent['chat']['id']}:{sent['message_id']}"
        except (KeyError, TypeError):
            # Telegram took the last part (2xx) and named no message: it is likely in the chat.
            if len(parts) > 1:
                self._remember_parts(message.delivery_id, len(parts) - 1)
            raise UnknownOutcome("Telegram's answer names no message: it may be sent") from None
        self._parts_sent.pop(message.delivery_id, None)
        moved_to = address if address != message.address else None
        return Receipt(provider_id, DeliveryState.SENT, "200", moved_to=moved_to)

    async def _send_part(self, address: str, text: str, markup: dict[str, Any] | None) -> Any:
        """``sendMessage``; the answer's ``result`` (the Message as JSON), as a dict.

        ``Bot.send_message`` would build a ``telegram.Message`` from it, a third of this
        channel's CPU time, for the one id the receipt keeps. ``Bot._post`` is the path every
        ``Bot`` method takes (defaults, PTB's errors from the answer, our request class); it is
        private, so mypy checks the call against PTB's types (pinned below v23) and the tests
        run it. The public ``Bot.do_api_request`` warns on every call to a method ``Bot``
        already has.
        """
        data: dict[str, Any] = {
            "chat_id": _chat_id(address),
            "text": text,
            "parse_mode": _HTML,
            "link_preview_options": _NO_PREVIEW_JSON,
        }
        if markup is not None:
            data["reply_markup"] = markup
        return await self._bot._post("sendMessage", data)

    def _move(self, old: str, new: str) -> str:
        """Note that ``old`` became ``new``; later sends here go straight to ``new``."""
        if self._moved.get(old) != new:
            log.warning(
                "telegram chat %s was upgraded to supergroup %s: sending there; "
                "update the configuration to the new id",
                old,
                new,
            )
        self._moved[old] = new
        for source, target in list(self._moved.items()):  # a chain of moves ends at the last
            if target == old:
                self._moved[source] = new
        return new

    def _remember_parts(self, delivery_id: int, count: int) -> None:
        self._parts_sent[delivery_id] = count
        self._parts_sent.move_to_end(delivery_id)
        while len(self._parts_sent) > _REMEMBERED:
            self._parts_sent.popitem(last=False)

    def _take_group_slots(self, address: str, count: int) -> None:
        if not is_group(address):
            return
        now = self._monotonic()
        sends = self._group_sends.setdefault(address, deque())
        while sends and sends[0] <= now - 60.0:
            sends.popleft()
        count = min(count, self.group_per_minute)  # a 20-part message waits for an empty minute
        room = self.group_per_minute - len(sends)
        if count > room:
            # The slot that frees last among those this message needs.
            index = min(count - room, len(sends)) - 1
            wait = max(sends[index] + 60.0 - now, 0.001)
            raise TransientError(
                f"group limit: {self.group_per_minute} messages a minute",
                retry_after=round(wait, 3),
                scope="destination",
            )
        sends.extend([now] * count)

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the caller."""

    async def check(self) -> CheckResult:
        """``getMe``: is the bot token accepted? (Sends nothing.)"""
        try:
            me = await self._bot.get_me()
        except NetworkError as exc:  # no answer from Telegram (TimedOut is one too)
            return CheckResult("telegram", False, failure_reason(exc.__cause__ or exc))
        except TelegramError as exc:
            return CheckResult("telegram", False, f"getMe refused: {redact(exc.message)}")
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            return CheckResult("telegram", False, failure_reason(exc))
        return CheckResult("telegram", True, f"getMe ok (@{me.username})")


def _chat_id(address: str) -> int | str:
    if address.startswith("@") and len(address) > 1:
        return address  # a public channel's username
    try:
        return int(address)
    except ValueError:
        raise PermanentError("not a Telegram chat id") from None


def channel_error(exc: TelegramError, status: int | None = None) -> ChannelError:
    """The channel error a python-telegram-bot exception stands for."""
    code = str(status) if status else None
    reason = redact(exc.message)
    if isinstance(exc, RetryAfter):
        with warnings.catch_warnings():  # int vs timedelta: read it whichever PTB gives
            warnings.simplefilter("ignore")
            raw = exc.retry_after
        seconds = raw.total_seconds() if isinstance(raw, timedelta) else float(raw)
        # A 429 is about this chat: only its bucket pauses, other chats keep flowing.
        return TransientError(reason, code or "429", retry_after=seconds, scope="destination")
    if isinstance(exc, ChatMigrated):  # only when the new chat moved again (a loop)
        return PermanentError(f"the group became chat {exc.new_chat_id}", code or "400")
    if isinstance(exc, TelegramForbidden):  # blocked by the user, kicked from the group…
        return PermanentError(reason, code or "403")
    if isinstance(exc, BadRequest):  # chat not found, can't parse entities…
        return PermanentError(reason, code or "400")
    if isinstance(exc, InvalidToken):
        return PermanentError("the bot token was refused", code or "401")
    if isinstance(exc, TimedOut):
        # The request left (see telegram_request): the message may be in the chat already.
        return UnknownOutcome("no answer from Telegram after sending: the message may be sent")
    return TransientError(reason, code)  # 5xx, connection failures, odd answers


def build_bot(
    token: str, api_url: str, session: aiohttp.ClientSession, *, read_timeout: float = 10.0
) -> Bot:
    """A ``telegram.Bot`` whose requests go through ``session`` to ``api_url``."""
    base_url, base_file_url = bot_urls(api_url)
    return Bot(
        token,
        base_url=base_url,
        base_file_url=base_file_url,
        request=AiohttpRequest(session, read_timeout=read_timeout),
        get_updates_request=AiohttpRequest(session, read_timeout=read_timeout),
    )


def from_settings(settings: Settings, session: aiohttp.ClientSession) -> TelegramChannel:
    """The channel for ``channels.telegram`` (token from the environment)."""
    # Its settings model lives in telegram_spec, which imports this module when it is used.
    cfg: Any = settings.channels.section(ChannelName.TELEGRAM)
    if cfg is None:
        raise ConfigError("channels.telegram is not configured")
    token = settings.secret(cfg.token_env)
    assert token is not None  # required=True raises instead
    bot = build_bot(token.get_secret_value(), cfg.api_url, session, read_timeout=cfg.timeout)
    return TelegramChannel(bot)
