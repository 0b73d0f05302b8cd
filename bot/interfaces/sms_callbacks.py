"""SMS gateway callbacks: delivery reports and "OK" replies, from Kannel and from Twilio.

Routes (each answers 403, logged without its payload, when its check fails):

- ``GET|POST /sms/kannel/status``: Kannel's ``dlr-url``. Kannel does not authenticate it, so
  the ``t`` parameter must be the *callback credential* of an SMS delivery (an HMAC of the
  delivery under the deployment key, only ever given to the gateway in that delivery's
  ``dlr-url``; it cannot acknowledge anything).
- ``GET|POST /sms/kannel/inbound``: an ``sms-service`` ``get-url``/``post-url`` with ``from``
  and ``text``; the request must carry ``secret=<the value of channels.sms.inbound_secret_env>``.
  Without that key every inbound SMS is refused (fail closed). A reply is taken once: its
  ``id`` (Kannel's ``%I``), or else its ``ts`` + sender + text, is remembered.
- ``POST /sms/twilio/status`` and ``POST /sms/twilio/inbound``: a valid ``X-Twilio-Signature``
  over ``server.public_url`` + the request's path and query, keyed with the auth token.

A provider's routes answer 404 when the other provider is configured.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from bot.channels.http_errors import excerpt
from bot.channels.sms import inbound_secret
from bot.channels.sms.signature import valid_twilio_signature
from bot.channels.sms.twilio import TWILIO_STATES
from bot.config import ConfigError, Settings, SmsChannelSettings
from bot.domain.ack_tokens import CALLBACK
from bot.domain.masking import mask_phone, scrub
from bot.domain.models import ChannelName, DeliveryState
from bot.domain.phone import normalise_phone
from bot.interfaces.deps import CLOCK, RECORDS, SERVICE, SETTINGS

log = logging.getLogger("tocsin.sms")

REPLY_BY = "SMS reply"
# Kannel's delivery-report types (``%d``) → (delivery state, attempt outcome).
KANNEL_DLR: Mapping[int, tuple[DeliveryState, str]] = {
    1: (DeliveryState.DELIVERED, "delivered"),
    2: (DeliveryState.FAILED, "failed"),
    4: (DeliveryState.SENT, "buffered"),
    8: (DeliveryState.SENT, "smsc accepted"),
    16: (DeliveryState.FAILED, "smsc rejected"),
}
_EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def is_ok_reply(text: str) -> bool:
    """True for an "OK" reply, whatever its case, accents, spacing or punctuation
    (``ok``, ``Ok !``, `` ÖK.``); anything with other letters (``OK merci``) is not one."""
    letters = "".join(c for c in unicodedata.normalize("NFKD", text) if c.isalpha())
    return letters.casefold() == "ok"


def _reject(request: web.Request, status: int, reason: str) -> web.Response:
    # Method, path and status only: query and body hold tokens and phone numbers.
    log.info("rejected %s %s: %s", request.method, request.path, status)
    return web.json_response({"error": reason, "detail": None}, status=status)


def _sms_settings(settings: Settings, provider: str) -> SmsChannelSettings | None:
    cfg = settings.channels.sms
    return cfg if cfg is not None and cfg.provider == provider else None


async def _params(request: web.Request) -> MultiDictProxy[str]:
    """Query parameters plus what a POST carries: form fields, or (Kannel's ``post-url``) the
    text as the body with ``X-Kannel-From``/``X-Kannel-To`` headers."""
    merged: MultiDict[str] = MultiDict(request.query)
    if request.method != "POST":
        return MultiDictProxy(merged)
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for name, value in (await request.post()).items():
            if isinstance(value, str):
                merged.add(name, value)
        return MultiDictProxy(merged)
    if "text" not in merged:
        merged.add("text", await request.text())
    for name, header in (("from", "X-Kannel-From"), ("to", "X-Kannel-To")):
        if name not in merged and header in request.headers:
            merged.add(name, request.headers[header])
    return MultiDictProxy(merged)


async def _report(
    request: web.Request,
    token: str,
    state: DeliveryState,
    outcome: str,
    code: str,
    error: str | None,
) -> web.Response | None:
    """Hand a delivery report to the service; a 403 answer if the token is not an SMS one."""
    service = request.app[SERVICE]
    delivery = await service.acknowledgements.find(token, CALLBACK) if token else None
    if delivery is None or delivery.channel != ChannelName.SMS:
        return _reject(request, 403, "unknown delivery token")
    await service.delivery_report(token, state, outcome=outcome, code=code, error=error)
    return None


async def kannel_status(request: web.Request) -> web.Response:
    """Kannel's delivery report: ``t`` token, ``s`` report type, ``a`` the SMSC's answer."""
    if _sms_settings(request.app[SETTINGS], "kannel") is None:
        return _reject(request, 404, "Kannel is not the configured SMS gateway")
    params = await _params(request)
    try:
        report = KANNEL_DLR[int(params.get("s", ""))]
    except (ValueError, KeyError):
        return _reject(request, 400, "s must be a Kannel delivery report type: 1, 2, 4, 8, 16")
    state, outcome = report
    answer = params.get("a", "").strip()
    error = (scrub(excerpt(answer)) or outcome) if state == DeliveryState.FAILED else None
    rejected = await _report(
        request, params.get("t", ""), state, outcome, params.get("s", ""), error
    )
    return rejected or web.Response(text="OK")


async def _acknowledge_reply(
    request: web.Request,
    sender: str,
    text: str,
    message_key: str,
    written_at: datetime | None = None,
) -> web.Response | None:
    """Acknowledge on an "OK" from ``sender``; a 400 answer if the sender is not a number.
    A reply whose ``message_key`` (the provider's message id) was already seen changes
    nothing: a replayed "OK" must not acknowledge the number's next delivery."""
    try:
        number = normalise_phone(sender, request.app[SETTINGS].organisation.phone_region)
    except ValueError:
        return _reject(request, 400, "the sender is not a valid phone number")
    now = request.app[CLOCK].now()
    if not await request.app[RECORDS].remember_inbound(message_key, now):
        log.info("SMS reply from %s already received: ignored", mask_phone(number))
        return None
    if not is_ok_reply(text):
        log.info("SMS reply from %s is not an acknowledgement", mask_phone(number))
        return None
    delivery = await request.app[SERVICE].acknowledgements.by_reply(
        ChannelName.SMS, number, REPLY_BY, written_at
    )
    log.info(
        "SMS reply OK from %s: %s",
        mask_phone(number),
        f"delivery {delivery.id} acknowledged" if delivery else "nothing pending",
    )
    return None


def _unix_time(value: str) -> datetime | None:
    """Kannel's ``%T`` (when the SMSC says the reply was sent), or None."""
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError):
        return None


async def kannel_inbound(request: web.Request) -> web.Response:
    """An SMS sent to us (``from``, ``text``): "OK" acknowledges the sender's latest pending
    delivery. The answer is empty so that Kannel sends nothing back."""
    settings = request.app[SETTINGS]
    if _sms_settings(settings, "kannel") is None:
        return _reject(request, 404, "Kannel is not the configured SMS gateway")
    params = await _params(request)
    try:
        secret = inbound_secret(settings)
    except ConfigError:
        secret = None
    if secret is None:
        return _reject(request, 403, "set channels.sms.inbound_secret_env to accept replies")
    if not hmac.compare_digest(params.get("secret", "").encode(), secret):
        return _reject(request, 403, "missing or wrong secret")
    if not params.get("from"):
        return _reject(request, 400, "from is required")
    text = params.get("text", "")
    key = params.get("id") or "\x1f".join((params.get("ts", ""), params["from"], text))
    rejected = await _acknowledge_reply(
        request,
        params["from"],
        text,
        "kannel:" + hashlib.sha256(key.encode()).hexdigest(),
        _unix_time(params.get("ts", "")),
    )
    return rejected or web.Response(text="")


async def _twilio_form(request: web.Request) -> MultiDictProxy[str] | web.Response:
    """The form of a correctly signed Twilio request, or the 403/404 answer."""
    settings = request.app[SETTINGS]
    cfg = _sms_settings(settings, "twilio")
    if cfg is None:
        return _reject(request, 404, "Twilio is not the configured SMS gateway")
    try:
        token = settings.secret(cfg.auth_token_env)
    except ConfigError:
        log.error("cannot check Twilio signatures: %s is not set", cfg.auth_token_env)
        token = None
    form: MultiDict[str] = MultiDict()
    for name, value in (await request.post()).items():
        if isinstance(value, str):
            form.add(name, value)
    url = settings.server.public_url.rstrip("/") + request.raw_path
    signature = request.headers.get("X-Twilio-Signature")
    if token is None or not valid_twilio_signature(
        token.get_secret_value(), url, form.items(), signature
    ):
        return _reject(request, 403, "missing or invalid X-Twilio-Signature")
    return MultiDictProxy(form)


async def twilio_status(request: web.Request) -> web.Response:
    """Twilio's status callback (``MessageStatus``, ``ErrorCode``), signed."""
    form = await _twilio_form(request)
    if isinstance(form, web.Response):
        return form
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if status not in TWILIO_STATES:
        return _reject(request, 400, "unknown MessageStatus")
    state = TWILIO_STATES[status]
    if state is None:
        return web.Response(text="")  # still on its way: nothing to record yet
    code = form.get("ErrorCode") or status
    error = f"Twilio {status} (error {code})" if state == DeliveryState.FAILED else None
    rejected = await _report(request, request.query.get("t", ""), state, status, code, error)
    return rejected or web.Response(text="")


async def twilio_inbound(request: web.Request) -> web.Response:
    """An SMS sent to our Twilio number (``From``, ``Body``), signed; answers empty TwiML."""
    form = await _twilio_form(request)
    if isinstance(form, web.Response):
        return form
    if not form.get("From"):
        return _reject(request, 400, "From is required")
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    if not sid:
        return _reject(request, 400, "MessageSid is required")
    rejected = await _acknowledge_reply(
        request, form["From"], form.get("Body", ""), "twilio:" + sid
    )
    return rejected or web.Response(text=_EMPTY_TWIML, content_type="text/xml")


def add_routes(app: web.Application) -> None:
    """Mount the SMS callback routes (their collaborators are set by the composition root)."""
    for path, handler in (
        ("/sms/kannel/status", kannel_status),
        ("/sms/kannel/inbound", kannel_inbound),
    ):
        app.router.add_get(path, handler, allow_head=False)
        app.router.add_post(path, handler)
    app.router.add_post("/sms/twilio/status", twilio_status)
    app.router.add_post("/sms/twilio/inbound", twilio_inbound)
