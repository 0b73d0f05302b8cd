"""Telegram inbound: crisis-cell commands and the department heads' acknowledgement button.

python-telegram-bot's ``Application`` runs inside our aiohttp server, without its updater:
``POST /telegram/webhook`` checks the secret header, drops repeated ``update_id``s and hands
each update to the application. With ``tocsin serve --telegram-polling`` it polls
``getUpdates`` instead (development, where Telegram cannot reach the machine).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update, User
from telegram.constants import ParseMode
from telegram.error import BadRequest, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.channels.telegram import ACK_PREFIX, MAX_LENGTH, NO_PREVIEW, split_html, utf16_len
from bot.channels.telegram_request import AiohttpRequest, bot_urls
from bot.config import ConfigError
from bot.domain.errors import InvalidInput, NotFound, TocsinError
from bot.domain.models import Actor, ChannelName, Delivery, DeliveryState
from bot.interfaces.commands import execute, parse_command
from bot.interfaces.deps import ChatDeps

log = logging.getLogger("tocsin.telegram")

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
ALLOWED_UPDATES = ["message", "callback_query"]
_SECRET_FORMAT = re.compile(r"[A-Za-z0-9_-]{1,256}")  # what setWebhook accepts
_SEEN_MAX = 10_000  # update ids remembered; Telegram redelivers within hours, not days

REFUSAL = (
    "⛔ Accès refusé : vous n'êtes pas sur la liste de la cellule de crise.\n"
    "⛔ Not allowed: you are not on the crisis-cell list."
)
UNKNOWN_ACK = "Confirmation inconnue ou expirée. / Unknown or expired acknowledgement."
_ACK_TEXTS = {
    "fr": {
        "line": "✅ <b>Pris en compte</b> par {by} le {day} à {time}",
        "thanks": "✅ Pris en compte, merci.",
        "already": "Déjà pris en compte par {by} le {day} à {time}.",
        "closed": "Ce message n'attend plus de confirmation.",
        "day": "%d/%m/%Y",
    },
    "en": {
        "line": "✅ <b>Acknowledged</b> by {by} on {day} at {time}",
        "thanks": "✅ Acknowledged, thank you.",
        "already": "Already acknowledged by {by} on {day} at {time}.",
        "closed": "This message no longer awaits an acknowledgement.",
        "day": "%Y-%m-%d",
    },
}


def _texts(locale: str) -> dict[str, str]:
    return _ACK_TEXTS.get(locale.split("-")[0].split("_")[0], _ACK_TEXTS["en"])


def ack_fields(delivery: Delivery, timezone: str) -> dict[str, str]:
    """Who acknowledged and when, in the organisation's time zone, for the texts above."""
    at = delivery.acknowledged_at
    local = at.astimezone(ZoneInfo(timezone)) if at is not None else None
    day_format = _texts(delivery.locale)["day"]
    return {
        "by": delivery.acknowledged_by or "?",
        "day": local.strftime(day_format) if local else "?",
        "time": local.strftime("%H:%M") if local else "?",
    }


def build_application(
    token: str, api_url: str, session: aiohttp.ClientSession, *, polling: bool = False
) -> Application[Any, Any, Any, Any, Any, Any]:
    """A python-telegram-bot application over the shared session (no updater unless polling)."""
    base_url, base_file_url = bot_urls(api_url)
    builder = (
        ApplicationBuilder()
        .token(token)
        .base_url(base_url)
        .base_file_url(base_file_url)
        .request(AiohttpRequest(session))
        # Long polls wait up to 30 s for updates: the read timeout must outlast them.
        .get_updates_request(AiohttpRequest(session, read_timeout=45.0))
        .concurrent_updates(True)
    )
    if not polling:
        builder = builder.updater(None)
    return builder.build()


class TelegramInbound:
    """The running Telegram interface: the application, the webhook's checks, the handlers."""

    def __init__(
        self,
        deps: ChatDeps,
        application: Application[Any, Any, Any, Any, Any, Any],
        secret: str | None,
        *,
        polling: bool = False,
    ) -> None:
        self.deps = deps
        self.application = application
        self.polling = polling
        self._secret = secret.encode() if secret else None
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._ready = False
        self._lock = asyncio.Lock()
        application.add_handler(CallbackQueryHandler(self.on_ack, pattern=f"^{ACK_PREFIX}"))
        # New messages only: an edited "/declare" must not declare a second time.
        application.add_handler(
            MessageHandler(filters.UpdateType.MESSAGE & filters.COMMAND, self.on_command)
        )
        application.add_error_handler(self.on_error)

    def accepts(self, given: str | None) -> bool:
        """The secret header matches (constant time); always False without a secret."""
        if self._secret is None or given is None:
            return False
        return hmac.compare_digest(given.encode(), self._secret)

    def first_time(self, update_id: int) -> bool:
        """True the first time an update id is seen (Telegram redelivers on timeouts)."""
        if update_id in self._seen:
            return False
        self._seen[update_id] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    async def start(self) -> bool:
        """Initialise (``getMe``) and start; then register the webhook or start polling.

        A Bot API outage at start-up must not keep the rest of Tocsin down: it is logged, and
        the next webhook call tries again.
        """
        if self._ready:
            return True
        async with self._lock:
            if self._ready:
                return True
            try:
                await self.application.initialize()
                await self.application.start()
            except TelegramError as exc:
                log.error("Telegram Bot API unavailable (%s); will retry", type(exc).__name__)
                return False
            self._ready = True
        try:
            if self.polling and self.application.updater is not None:
                await self.application.updater.start_polling(allowed_updates=ALLOWED_UPDATES)
            elif self._secret is not None:
                url = self.deps.settings.server.public_url.rstrip("/") + WEBHOOK_PATH
                await self.application.bot.set_webhook(
                    url, secret_token=self._secret.decode(), allowed_updates=ALLOWED_UPDATES
                )
        except TelegramError as exc:
            log.warning("Telegram refused the webhook/polling set-up: %s", exc.message)
        return True

    async def process(self, data: dict[str, Any]) -> None:
        """Run one update through the handlers (answers go out before this returns)."""
        await self.application.process_update(Update.de_json(data, self.application.bot))

    async def close(self) -> None:
        """Stop polling and the application; the session stays with the runtime."""
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()
        if self.application.running:
            await self.application.stop()
        await self.application.shutdown()

    # --- handlers --------------------------------------------------------------------------
    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/declare``, ``/status``, ``/update``, ``/resolve``, ``/help`` (and the other verbs
        of the shared parser) for allow-listed users; a refusal for everyone else."""
        message, user = update.message, update.effective_user
        if message is None or message.text is None or user is None:
            return
        words = message.text.split()
        verb, _, mention = words[0].removeprefix("/").partition("@")
        if mention and mention.lower() != (context.bot.username or "").lower():
            return  # addressed to another bot in the group
        actor = self.deps.auth.telegram_user(user.id)
        if actor is None:
            log.info("telegram command refused: user %s is not allow-listed", user.id)
            await message.reply_text(REFUSAL)
            return
        verb = "help" if verb.lower() == "start" else verb
        answer = await self._run(" ".join([verb, *words[1:]]), actor)
        for part in split_html(html.escape(answer, quote=False)):
            await message.reply_text(part, parse_mode=ParseMode.HTML)

    async def _run(self, raw: str, actor: Actor) -> str:
        try:
            return (await execute(parse_command(raw), actor, self.deps.service)).text
        except InvalidInput as exc:
            detail = exc.detail
            if isinstance(detail, dict):
                detail = "\n".join(f"{key}: {value}" for key, value in detail.items())
            return f"{exc}\n{detail}" if detail else str(exc)
        except TocsinError as exc:  # forbidden, not found, conflict
            return str(exc)

    async def on_ack(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The "Pris en compte / Acknowledge" button: acknowledge exactly that delivery, answer
        the press, and show on the message who acknowledged and when. Pressing again only
        answers."""
        query = update.callback_query
        if query is None or query.data is None:
            return
        token = query.data.removeprefix(ACK_PREFIX)
        delivery = await self.deps.service.acknowledgements.find(token)
        chat = query.message.chat.id if query.message is not None else None
        if (
            delivery is None
            or delivery.channel != ChannelName.TELEGRAM
            or str(chat) != delivery.address
        ):
            log.info("telegram acknowledgement refused: unknown token or wrong chat")
            await query.answer(UNKNOWN_ACK, show_alert=True)
            return
        texts = _texts(delivery.locale)
        first = delivery.state != DeliveryState.ACKNOWLEDGED
        if first:
            delivery = await self.deps.service.acknowledge(token, by=_name(query.from_user))
        if delivery.state != DeliveryState.ACKNOWLEDGED:
            await query.answer(texts["closed"])
            return
        fields = ack_fields(delivery, self.deps.settings.organisation.timezone)
        await query.answer(texts["thanks"] if first else texts["already"].format(**fields))
        message = query.message if isinstance(query.message, Message) else None
        if message is not None and message.reply_markup is not None:  # the button still shows
            await self._show_ack(message, delivery, texts, fields)

    async def _show_ack(
        self, message: Message, delivery: Delivery, texts: dict[str, str], fields: dict[str, str]
    ) -> None:
        escaped = {key: html.escape(value) for key, value in fields.items()}
        line = texts["line"].format(**escaped)
        try:
            statement = await self.deps.service.statement(delivery.statement_id)
        except NotFound:
            body = ""
        else:
            body = statement.bodies.get("telegram", "")
        # The button sits on the last part of a split message: that part is what we edit.
        original = split_html(body)[-1] if body.strip() else ""
        edited = f"{original}\n\n{line}"
        try:
            if original and utf16_len(edited) <= MAX_LENGTH:
                # Without reply_markup: the button goes.
                await message.edit_text(
                    edited, parse_mode=ParseMode.HTML, link_preview_options=NO_PREVIEW
                )
            else:  # no room for the line: the button itself says who and when
                done = InlineKeyboardButton(
                    texts["already"].format(**fields),
                    callback_data=ACK_PREFIX + self.deps.service.tokens.token(delivery),
                )
                await message.edit_reply_markup(InlineKeyboardMarkup([[done]]))
        except BadRequest as exc:  # e.g. "message is not modified" after a simultaneous press
            log.info("telegram acknowledgement edit skipped: %s", exc.message)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log a failed update without its payload (it may carry names and texts)."""
        error = context.error
        log.error(
            "telegram update failed: %s",
            type(error).__name__,
            exc_info=(type(error), error, error.__traceback__) if error else None,
        )


def _name(user: User) -> str:
    return user.full_name or f"telegram:{user.id}"


TELEGRAM = web.AppKey("telegram", TelegramInbound)


async def webhook(request: web.Request) -> web.Response:
    """``POST /telegram/webhook``: 403 on a wrong or missing secret (nothing processed)."""
    inbound = request.app.get(TELEGRAM)
    if inbound is None:
        return web.json_response({"error": "Telegram is not running"}, status=503)
    if not inbound.accepts(request.headers.get(SECRET_HEADER)):
        # Method, path and status only: the payload may hold personal data.
        log.info("rejected %s %s: 403 (secret token)", request.method, request.path)
        return web.json_response({"error": "forbidden", "detail": None}, status=403)
    try:
        data = await request.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        log.info("rejected %s %s: 400 (not an update)", request.method, request.path)
        return web.json_response({"error": "not a Telegram update", "detail": None}, status=400)
    if not await inbound.start():
        return web.json_response({"error": "Telegram Bot API unavailable"}, status=503)
    if inbound.first_time(data["update_id"]):
        try:
            await inbound.process(data)
        except (KeyError, TypeError, ValueError):
            log.info("rejected %s %s: 400 (malformed update)", request.method, request.path)
            return web.json_response({"error": "malformed update", "detail": None}, status=400)
    return web.Response(status=200)


async def setup(app: web.Application, deps: ChatDeps, *, polling: bool = False) -> None:
    """Build and start the Telegram application over the shared session; ``polling`` polls
    ``getUpdates`` instead of registering the webhook (development)."""
    cfg = deps.settings.channels.telegram
    if cfg is None:
        return
    token = deps.settings.secret(cfg.token_env)
    secret = deps.settings.secret(cfg.webhook_secret_env, required=not polling)
    assert token is not None
    if secret is not None and not _SECRET_FORMAT.fullmatch(secret.get_secret_value()):
        raise ConfigError(
            f"{cfg.webhook_secret_env}: a Telegram webhook secret is 1 to 256 characters "
            "among A-Z, a-z, 0-9, _ and -"
        )
    application = build_application(
        token.get_secret_value(), cfg.api_url, deps.session, polling=polling
    )
    inbound = TelegramInbound(
        deps, application, secret.get_secret_value() if secret else None, polling=polling
    )
    app[TELEGRAM] = inbound
    await inbound.start()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    # Registered after the runtime's context, so it stops before the shared session closes.
    yield
    inbound = app.get(TELEGRAM)
    if inbound is not None:
        await inbound.close()


def add_routes(app: web.Application) -> None:
    """``POST /telegram/webhook`` and the application's shutdown on cleanup."""
    app.router.add_post(WEBHOOK_PATH, webhook)
    app.cleanup_ctx.append(_lifecycle)
