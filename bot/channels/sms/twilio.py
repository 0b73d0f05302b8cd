"""SMS through a Twilio-compatible REST API, with status callbacks and reconciliation.

Creating a message (``POST /2010-04-01/Accounts/{sid}/Messages.json``) is not idempotent: a
request that timed out may or may not have created one. Such an attempt is reported as
:class:`UnknownOutcome`, and before the engine's next attempt at the same delivery the adapter
lists the recipient's recent messages and looks for ours (by its exact body, which ends with a
short reference derived from the delivery's idempotency key): found, the earlier attempt is
the receipt; not found, the message is sent again. The list is filtered by ``To`` and read
newest first, not filtered by ``DateSent``: a message still ``queued`` has no send date yet.

Every retry is reconciled, in whichever worker it runs: the message carries its attempt count
and the time its delivery was queued, so a restarted worker or another one also looks first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr

from bot.channels.checks import CheckResult, failure_reason
from bot.channels.http_errors import MAX_BODY, excerpt, parse_retry_after
from bot.domain.errors import ChannelError, PermanentError, TransientError, UnknownOutcome
from bot.domain.masking import mask_phone
from bot.domain.models import ChannelName, DeliveryState
from bot.domain.sms_text import sms_encoding
from bot.ports import MessageKey, OutboundMessage, Receipt

log = logging.getLogger(__name__)

# Twilio's message states, as Tocsin's delivery states (None: nothing to record yet).
TWILIO_STATES: dict[str, DeliveryState | None] = {
    "accepted": None,
    "scheduled": None,
    "queued": None,
    "sending": None,
    "sent": DeliveryState.SENT,
    "delivered": DeliveryState.DELIVERED,
    "read": DeliveryState.DELIVERED,
    "undelivered": DeliveryState.FAILED,
    "failed": DeliveryState.FAILED,
    "canceled": DeliveryState.FAILED,
}
_REFERENCE_LABEL = {"fr": "Réf.", "en": "Ref."}  # both fit GSM-7: é is in its basic set
# A created message appears in the list a little after its creation time; clocks differ.
_CLOCK_SLACK = timedelta(minutes=5)
_REMEMBERED = 10_000


def reference(message: OutboundMessage) -> str:
    """A short code, stable across the attempts of one delivery, that ends its SMS text."""
    key = message.idempotency_key or f"tocsin-{message.delivery_id}"
    return base64.b32encode(hashlib.sha256(key.encode()).digest()).decode()[:6]


class TwilioChannel:
    """Sends a delivery's ``sms`` rendering through Twilio's Messages API (or a compatible one).

    429 and 5xx are transient (the 5xx ones are reconciled before the next attempt: the
    message may exist); other 4xx are permanent, with Twilio's error code; a timeout or a
    connection dropped after sending is an :class:`UnknownOutcome`.
    """

    name = ChannelName.SMS
    keys: frozenset[MessageKey] = frozenset({"callback_token", "idempotency_key"})
    # Twilio queues what it accepts (up to four hours) and paces each sender itself.
    rate: float = 30.0
    burst: int = 60
    destination_rate: float | None = 1.0
    destination_burst: int = 5

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_url: str,
        account_sid: str,
        auth_token: SecretStr,
        sender: str | None,
        max_segments: int = 2,
        timeout: float = 15.0,
    ) -> None:
        self._session = session
        self._messages_url = (
            f"{api_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}/Messages.json"
        )
        # Kept as the header value only (aiohttp 3.14 deprecates BasicAuth objects).
        self._authorization = SecretStr(
            aiohttp.encode_basic_auth(account_sid, auth_token.get_secret_value())
        )
        self._sender = sender
        self.max_segments = max_segments
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # idempotency key → when the attempt of unknown outcome started
        self._uncertain: OrderedDict[str, datetime] = OrderedDict()

    def __repr__(self) -> str:
        return f"TwilioChannel(url={self._messages_url!r}, sender={self._sender!r})"

    def provider_key(self, address: str) -> str:
        """One account: every number shares its health and rate."""
        return "sms:twilio"

    def text_for(self, message: OutboundMessage) -> str:
        """The SMS text: the ``sms`` rendering plus the reference, when that still fits the
        budget (otherwise the bare text, reconciled by its exact body alone)."""
        text = message.bodies.get("sms")
        if not text:
            raise PermanentError("the statement has no sms rendering")
        segments = sms_encoding(text).segments
        if segments > self.max_segments:
            raise PermanentError(
                f"the SMS text is {segments} segments, over the budget of {self.max_segments}"
            )
        label = _REFERENCE_LABEL.get(message.locale.split("-")[0], "Ref.")
        marked = f"{text}\n{label} {reference(message)}"
        return marked if sms_encoding(marked).segments <= segments else text

    def form(self, message: OutboundMessage, text: str) -> dict[str, str]:
        """The form posted to create the message."""
        form = {"To": message.address, "Body": text}
        if self._sender:
            form["From"] = self._sender
        if message.status_url:
            form["StatusCallback"] = (
                f"{message.status_url.rstrip('/')}/sms/twilio/status"
                f"?t={quote(message.callback_token, safe='')}"
            )
        return form

    async def send(self, message: OutboundMessage) -> Receipt:
        """Create the message, after reconciling an earlier attempt of unknown outcome."""
        text = self.text_for(message)
        key = message.idempotency_key or str(message.delivery_id)
        since = self._uncertain.get(key)
        if since is None and message.attempt > 0 and message.queued_at is not None:
            # A retry this process knows nothing about (another worker tried before, or this
            # one restarted): the earlier attempt may have created the message.
            since = message.queued_at
        if since is not None:
            try:
                found = await self.reconcile(message.address, text, since)
            except PermanentError:
                self._uncertain.pop(key, None)  # it exists and failed: no new attempt
                raise
            if found is not None:
                self._uncertain.pop(key, None)
                return found
        started = datetime.now(UTC)
        try:
            receipt = await self._create(message, text)
        except UnknownOutcome:
            self._remember(key, since or started)
            raise
        except TransientError as exc:
            if exc.code is not None and exc.code.startswith("5"):
                self._remember(key, since or started)  # a 5xx may come after the insert
            raise
        self._uncertain.pop(key, None)
        return receipt

    async def _create(self, message: OutboundMessage, text: str) -> Receipt:
        try:
            async with self._session.post(
                self._messages_url,
                data=self.form(message, text),
                headers=self._headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                data = await _json(response)
                if response.status >= 300:
                    error = _twilio_error(response.status, data, response.headers)
                    log.info(
                        "twilio refused an SMS to %s: %s", mask_phone(message.address), error.code
                    )
                    raise error
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(f"Twilio unreachable: {exc.__class__.__name__}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UnknownOutcome(
                f"no answer from Twilio after sending ({exc.__class__.__name__}): "
                "the message may exist; it is reconciled before any new attempt"
            ) from exc
        sid = data.get("sid") if isinstance(data, dict) else None
        status = data.get("status") if isinstance(data, dict) else None
        return Receipt(
            provider_id=sid if isinstance(sid, str) else None,
            state=DeliveryState.SENT,
            code=status if isinstance(status, str) else str(response.status),
        )

    async def reconcile(self, to: str, text: str, since: datetime) -> Receipt | None:
        """Our message to ``to`` created since ``since`` with exactly ``text``, if Twilio has
        it; raises :class:`TransientError` when the list cannot be read (try again later)."""
        params = {"To": to, "PageSize": "50"}
        try:
            async with self._session.get(
                self._messages_url,
                params=params,
                headers=self._headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                data = await _json(response)
                if response.status >= 300:
                    error = _twilio_error(response.status, data, response.headers)
                    raise TransientError(f"cannot reconcile: {error.reason}", error.code)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransientError(f"cannot reconcile: {exc.__class__.__name__}") from exc
        messages = data.get("messages") if isinstance(data, dict) else None
        for item in messages if isinstance(messages, list) else []:
            if not isinstance(item, dict) or item.get("body") != text:
                continue
            if not str(item.get("direction", "outbound")).startswith("outbound"):
                continue
            created = _parse_date(item.get("date_created"))
            if created is not None and created < since - _CLOCK_SLACK:
                continue
            return _receipt_of(item)
        return None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._authorization.get_secret_value()}

    def _remember(self, key: str, since: datetime) -> None:
        self._uncertain[key] = since
        self._uncertain.move_to_end(key)
        while len(self._uncertain) > _REMEMBERED:
            self._uncertain.popitem(last=False)

    async def close(self) -> None:
        """Nothing to release: the session belongs to the caller."""

    async def check(self) -> CheckResult:
        """``GET /2010-04-01/Accounts/{sid}.json``: are the account SID and token accepted?"""
        url = self._messages_url.removesuffix("/Messages.json") + ".json"
        headers = {"Authorization": self._authorization.get_secret_value()}
        name = "sms (twilio)"
        try:
            async with self._session.get(url, headers=headers, timeout=self._timeout) as answer:
                status = answer.status
                data = await answer.json(content_type=None) if status < 500 else None
        except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
            return CheckResult(name, False, failure_reason(exc))
        if status == 200:
            state = data.get("status") if isinstance(data, dict) else None
            if state not in (None, "active"):
                return CheckResult(name, False, f"account is {state}")
            return CheckResult(name, True, "account fetched")
        code = data.get("code") if isinstance(data, dict) else None
        detail = f" (error {code})" if code else ""
        return CheckResult(name, False, f"account fetch refused: HTTP {status}{detail}")


def _receipt_of(item: dict[str, Any]) -> Receipt:
    """The receipt an existing message stands for (a failed one is a permanent failure)."""
    status = str(item.get("status", ""))
    sid = item.get("sid") if isinstance(item.get("sid"), str) else None
    state = TWILIO_STATES.get(status)
    if state == DeliveryState.FAILED:
        code = str(item["error_code"]) if item.get("error_code") is not None else status
        raise PermanentError(f"Twilio {status}: error {code}", code)
    return Receipt(provider_id=sid, state=state or DeliveryState.SENT, code=status or None)


async def _json(response: aiohttp.ClientResponse) -> Any:
    raw = await response.content.read(MAX_BODY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


def _twilio_error(status: int, data: Any, headers: Any) -> ChannelError:
    """A Twilio error answer (``{"code", "message", "status"}``) as a channel error."""
    if isinstance(data, dict):
        code = str(data.get("code") or status)
        reason = f"Twilio error {code} (HTTP {status}): {excerpt(str(data.get('message', '')))}"
    else:
        code = str(status)
        reason = f"HTTP {status}: {excerpt(str(data or ''))}"
    if status == 429:
        # Twilio's 429 is the account's concurrency limit, not one number's.
        return TransientError(
            reason, "429", retry_after=parse_retry_after(headers.get("Retry-After"))
        )
    if status >= 500 or status in (408, 425):
        return TransientError(
            reason, str(status), retry_after=parse_retry_after(headers.get("Retry-After"))
        )
    return PermanentError(reason, code)


def _parse_date(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
