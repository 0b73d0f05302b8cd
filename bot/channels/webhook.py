"""Webhook channel: a JSON POST to an incoming-webhook URL (Mattermost, Slack, Teams style)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from yarl import URL

from bot.channels import slack_blocks as kit
from bot.channels.checks import CheckResult, failure_reason
from bot.channels.email import ack_prompt
from bot.channels.http_errors import MAX_BODY, response_error, translated_errors
from bot.channels.spec import ChannelSpec, RateLimits
from bot.config_base import Duration, Strict
from bot.domain.errors import PermanentError
from bot.domain.masking import mask_url
from bot.domain.models import ChannelName, DeliveryState
from bot.ports import MessageKey, OutboundMessage, Receipt

if TYPE_CHECKING:
    from bot.channels.spec import Settings


class WebhookChannelSettings(Strict):
    """``channels.webhook``: always on; each destination's URL is its own."""

    timeout: Duration = 10.0
    limits: RateLimits = RateLimits()


log = logging.getLogger(__name__)


# Mattermost, Rocket.Chat and Teams-style receivers notify on these words.
_AT_MENTION = re.compile(r"(?<![\w@])@(all|channel|here|everyone)\b", re.IGNORECASE)


@lru_cache(maxsize=1024)
def defuse_mentions(text: str) -> str:
    """Text that notifies nobody: Slack's ``<!channel>``, ``<!here>``, ``<@U…>`` are shown as
    text (as the Slack adapter does), and ``@all``/``@channel``/``@here``/``@everyone`` get a
    word joiner after the ``@`` so that no receiver reads them as a mention."""
    return _AT_MENTION.sub("@\u2060\\1", kit.defuse(text))


class WebhookChannel:
    """Posts a delivery as JSON to the destination's URL, through the caller's shared session.

    The body carries ``text`` (what Mattermost, Slack and Teams incoming webhooks display)
    plus ``subject``, ``delivery_id``, ``idempotency_key`` and ``ack_url`` for receivers that
    want them; the ``Idempotency-Key`` header lets a receiver drop a retried duplicate.
    A 2xx means the receiver has it, so the receipt says ``delivered``.
    """

    name = ChannelName.WEBHOOK
    # Its Idempotency-Key comes from the delivery id alone; no gateway calls back.
    keys: frozenset[MessageKey] = frozenset()
    # Per receiving host (see provider_key); generous, the per-URL limit is the tight one.
    rate: float = 20.0
    burst: int = 40
    # Slack allows about one message a second per incoming webhook, with short bursts.
    destination_rate: float | None = 1.0
    destination_burst: int = 5

    def __init__(self, session: aiohttp.ClientSession, settings: WebhookChannelSettings) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)

    def __repr__(self) -> str:
        return f"WebhookChannel(timeout={self._timeout.total})"

    def provider_key(self, address: str) -> str:
        """``webhook:host:port``: receivers on one host share their health and rate."""
        try:
            url = URL(address)
        except (TypeError, ValueError):
            return "webhook:invalid"
        if not url.host:
            return "webhook:invalid"
        return f"webhook:{url.host}:{url.port}"

    @staticmethod
    def idempotency_key(message: OutboundMessage) -> str:
        """The same key on every attempt of a delivery, from its id alone (never from the
        acknowledgement token, which is a secret the receiver has no need of)."""
        return f"tocsin-delivery-{message.delivery_id}"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The JSON body posted for ``message``."""
        text = message.bodies.get("text")
        if text is None:
            raise PermanentError("the statement has no text rendering for a webhook")
        text = defuse_mentions(text)
        if message.ack_url:
            # Most receivers show only ``text``: the reader must see where to acknowledge.
            text = f"{text.rstrip()}\n\n{ack_prompt(message.locale)} {message.ack_url}"
        subject = message.bodies.get("subject")
        return {
            "text": text,
            "subject": defuse_mentions(subject) if subject is not None else None,
            "delivery_id": message.delivery_id,
            "idempotency_key": self.idempotency_key(message),
            "ack_url": message.ack_url,
        }

    async def send(self, message: OutboundMessage) -> Receipt:
        """POST the payload; map the answer with :mod:`bot.channels.http_errors`."""
        body = orjson.dumps(self.payload(message))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": self.idempotency_key(message),
        }
        # A timeout here stays transient (see http_errors): the resend carries the same
        # Idempotency-Key, so a receiver that honours it drops the copy; there is nothing to
        # look up first.
        with translated_errors():
            async with self._session.post(
                message.address,
                data=body,
                headers=headers,
                timeout=self._timeout,
                # A webhook that redirects is misconfigured; following would turn a POST
                # into a GET and report success for a message nobody received.
                allow_redirects=False,
            ) as response:
                error = await response_error(response)
                if error is not None:
                    log.info(
                        "webhook %s answered %s", self.provider_key(message.address), error.code
                    )
                    raise error
                provider_id = await _provider_id(response)
                status = response.status
        return Receipt(provider_id=provider_id, state=DeliveryState.DELIVERED, code=str(status))

    async def close(self) -> None:
        """Nothing to release: the session belongs to the caller."""

    async def check(self, urls: Iterable[str]) -> list[CheckResult]:
        """A ``HEAD`` to one URL per distinct host: does the receiver answer at all? Any
        answer below 500 passes (many receivers allow POST only); the line names the host
        only, since a webhook's path is its secret."""
        by_host: dict[str, str] = {}
        for url in urls:
            by_host.setdefault(self.provider_key(url), url)
        results = []
        for key, url in sorted(by_host.items()):
            name = key.replace("webhook:", "webhook ", 1)
            try:
                async with self._session.head(url, timeout=self._timeout) as answer:
                    status = answer.status
            except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
                results.append(CheckResult(name, False, failure_reason(exc)))
                continue
            results.append(CheckResult(name, status < 500, f"answers HTTP {status}"))
        return results


async def _provider_id(response: aiohttp.ClientResponse) -> str | None:
    """The receiver's id for the message: a JSON ``id``, else the ``X-Request-Id`` header."""
    try:
        raw = await response.content.read(MAX_BODY)
    except (aiohttp.ClientError, TimeoutError):
        raw = b""  # the 2xx already says it arrived; only the id is lost
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("id"), str | int) and data["id"] != "":
        return str(data["id"])
    return response.headers.get("X-Request-Id")


def from_settings(settings: Settings, session: aiohttp.ClientSession) -> WebhookChannel:
    """The webhook adapter, over the shared session."""
    return WebhookChannel(session, settings.channels.get(SPEC) or WebhookChannelSettings())


def destination_address(value: Any) -> Any:
    """A destination's webhook URL, refused unless http(s)."""
    if isinstance(value, str) and not value.startswith(("http://", "https://")):
        raise ValueError("webhook must be an http:// or https:// URL")
    return value


# No ``check``: ``tocsin check`` sends one HEAD per webhook host instead (``check_hosts``).
SPEC = ChannelSpec(
    name=ChannelName.WEBHOOK,
    settings_model=WebhookChannelSettings,
    from_settings=from_settings,
    formats=("subject", "text"),
    destination_key="webhook",
    mask=mask_url,
    mask_always=True,
    destination_address=destination_address,
    always_on=True,
)
