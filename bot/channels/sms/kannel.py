"""SMS through Kannel's smsbox ``sendsms`` HTTP interface, with delivery reports.

The message goes as a ``text/plain`` POST whose ``X-Kannel-*`` headers carry the credentials,
the sender, the recipient and the delivery-report settings, so that no secret is ever part of
a URL (which proxies and access logs keep). Kannel calls the ``dlr-url`` back for every report
of ``dlr-mask=31``; the URL carries the delivery's unguessable acknowledgement token because
Kannel's callbacks are not authenticated otherwise (see :mod:`bot.interfaces.sms_callbacks`).

The smsbox ``sendsms-user`` must allow long texts (``concatenation = true`` and
``max-messages`` at least the configured segment budget): otherwise Kannel cuts the text to
160 characters and still answers success.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr

from bot.channels.checks import CheckResult, failure_reason
from bot.channels.http_errors import MAX_BODY, excerpt, response_error
from bot.domain.errors import PermanentError, TransientError, UnknownOutcome
from bot.domain.masking import mask_phone
from bot.domain.models import ChannelName, DeliveryState
from bot.domain.sms_text import sms_encoding
from bot.ports import MessageKey, OutboundMessage, Receipt

log = logging.getLogger(__name__)

# Every report Kannel knows: 1 delivered, 2 failed, 4 buffered, 8 SMSC accepted, 16 rejected.
DLR_MASK = 31
# Kannel's answers that mean "it is in my queue": accepted (0) or queued for later (3).
_ACCEPTED = ("0", "3")


def dlr_url(status_url: str, callback_token: str) -> str:
    """The ``dlr-url`` Kannel fills in: ``%d`` report type, ``%A`` the SMSC's answer, ``%T``
    the time (Unix seconds), ``%F`` the SMSC's message id.

    A literal ``%`` in our own URL is doubled, or Kannel would read ``%A0``-like sequences of
    a percent-encoded path as its own escapes.
    """
    base = status_url.rstrip("/").replace("%", "%%")
    # The delivery's callback credential, never its acknowledgement token: gateway logs keep
    # this URL.
    token = quote(callback_token, safe="").replace("%", "%%")
    return f"{base}/sms/kannel/status?t={token}&s=%d&a=%A&ts=%T&id=%F"


class KannelChannel:
    """Sends a delivery's ``sms`` rendering through a Kannel smsbox.

    GSM-7 (``coding`` 0) when every character fits the GSM 03.38 alphabet, UCS-2 (``coding``
    2, the text posted as UTF-8) otherwise; a text over the segment budget is refused rather
    than cut by the gateway. ``0: Accepted`` and ``3: Queued`` give a ``sent`` receipt (the
    delivery report says more later); 4xx answers are permanent (403: wrong credentials, 400:
    no sender), 5xx and refused connections transient. A timeout or a dropped connection after
    the request went out is an unknown outcome: Kannel may already have queued the message.
    """

    name = ChannelName.SMS
    # Kannel's dlr-url carries the callback credential back with each delivery report.
    keys: frozenset[MessageKey] = frozenset({"callback_token"})
    # Kannel queues what it accepts and paces the SMSC itself (its ``throughput``); this only
    # keeps a declaration's burst from flooding the smsbox.
    rate: float = 100.0
    burst: int = 200
    # One person's phone: a few texts in a row are fine, a stream is not.
    destination_rate: float | None = 1.0
    destination_burst: int = 5

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        url: str,
        username: SecretStr,
        password: SecretStr,
        sender: str | None,
        max_segments: int = 2,
        timeout: float = 10.0,
    ) -> None:
        self._session = session
        self._url = url
        self._username = username
        self._password = password
        self._sender = sender
        self.max_segments = max_segments
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:
        # The URL of a smsbox carries no secret in the POST form; the credentials stay out.
        return f"KannelChannel(url={self._url!r}, sender={self._sender!r})"

    def provider_key(self, address: str) -> str:
        """One smsbox: every number shares its health and rate."""
        return "sms:kannel"

    def headers(self, message: OutboundMessage, coding: int) -> dict[str, str]:
        """The ``X-Kannel-*`` headers of one send (they hold the credentials: never log them)."""
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-Kannel-Username": self._username.get_secret_value(),
            "X-Kannel-Password": self._password.get_secret_value(),
            "X-Kannel-To": message.address,
            "X-Kannel-Coding": str(coding),
        }
        if self._sender:
            headers["X-Kannel-From"] = self._sender
        if message.status_url:
            headers["X-Kannel-DLR-Mask"] = str(DLR_MASK)
            headers["X-Kannel-DLR-Url"] = dlr_url(message.status_url, message.callback_token)
        return headers

    async def send(self, message: OutboundMessage) -> Receipt:
        """POST the text to ``sendsms``; see the class docstring for the outcomes."""
        text = message.bodies.get("sms")
        if not text:
            raise PermanentError("the statement has no sms rendering")
        encoding = sms_encoding(text)
        if encoding.segments > self.max_segments:
            raise PermanentError(
                f"the SMS text is {encoding.segments} segments ({encoding.encoding}), over the "
                f"budget of {self.max_segments}: not sent rather than cut by the gateway"
            )
        coding = 0 if encoding.encoding == "gsm7" else 2
        try:
            async with self._session.post(
                self._url,
                data=text.encode("utf-8"),
                headers=self.headers(message, coding),
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                error = await response_error(response)
                if error is not None:
                    log.info(
                        "kannel refused an SMS to %s: %s", mask_phone(message.address), error.code
                    )
                    raise error
                answer = (await response.content.read(MAX_BODY)).decode("utf-8", "replace")
        except aiohttp.ClientConnectorError as exc:
            # Never reached the smsbox: nothing was queued, trying again is safe.
            raise TransientError(f"smsbox unreachable: {exc.__class__.__name__}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UnknownOutcome(
                f"no answer from the smsbox after sending ({exc.__class__.__name__}): "
                "it may have queued the message"
            ) from exc
        code = answer.strip().split(":", 1)[0].strip()
        if code not in _ACCEPTED:
            raise PermanentError(f"unexpected sendsms answer: {excerpt(answer)}", code or None)
        return Receipt(provider_id=None, state=DeliveryState.SENT, code=code)

    async def close(self) -> None:
        """Nothing to release: the session belongs to the caller."""

    async def check(self) -> CheckResult:
        """A ``sendsms`` request with our credentials and no receiver: smsbox checks the
        credentials first (403 "Authorization failed") and only then refuses the missing
        receiver (400 "Missing receiver(s) number(s)"), so nothing is ever sent."""
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-Kannel-Username": self._username.get_secret_value(),
            "X-Kannel-Password": self._password.get_secret_value(),
        }
        name = "sms (kannel)"
        try:
            async with self._session.post(
                self._url, data=b"", headers=headers, timeout=self._timeout
            ) as response:
                body = (await response.content.read(MAX_BODY)).decode("utf-8", "replace")
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            return CheckResult(name, False, failure_reason(exc))
        if response.status == 400 and "receiver" in body.lower():
            return CheckResult(name, True, "credentials accepted (probe without receiver)")
        if response.status == 403:
            return CheckResult(name, False, "credentials refused (403 Authorization failed)")
        return CheckResult(name, False, f"unexpected answer: HTTP {response.status}")
