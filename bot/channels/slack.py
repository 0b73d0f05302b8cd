"""Slack channel: ``chat.postMessage`` to a channel (``C…``) or a person (``U…``, as a DM).

The statement goes out as Block Kit sections of its ``slack`` rendering (mrkdwn, escaped by the
templates), with the plain ``text`` rendering, escaped, as the notification fallback; a delivery
that needs an acknowledgement carries the "Acknowledge / Pris en compte" button. The provider id
is ``<channel>:<ts>``, what ``chat.update`` needs to change that message later.

Slack's own retry handlers are off: a 429 comes back here at once with its ``Retry-After``, and
the worker's per-channel bucket owns the wait, so one busy channel never stalls the others.

``chat.postMessage`` is not idempotent. Every post carries message metadata
(``event_type: tocsin_delivery``, ``event_payload: {delivery_id}``); a post whose answer never
came (a timeout or a connection dropped after the request was written) is an
:class:`UnknownOutcome`, and before the next attempt the adapter reads the conversation's
history since the delivery was queued (``conversations.history`` with
``include_all_metadata``; for a person, the DM that ``conversations.open`` names, since a post
to a user id lands there) and takes the message carrying this delivery id as the receipt
instead of posting again. Reading history needs the ``channels:history``, ``groups:history``
and ``im:history`` scopes and the bot in the channel; without them the message is posted
again (a possible duplicate, visible in the record as an ``unknown`` attempt).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.channels import slack_blocks
from bot.channels.checks import CheckResult, failure_reason
from bot.channels.http_errors import exception_error, parse_retry_after
from bot.channels.spec import ChannelSpec, RateLimits, built_check
from bot.config_base import Duration, Strict
from bot.domain.errors import ChannelError, PermanentError, TransientError, UnknownOutcome
from bot.domain.models import ChannelName, DeliveryState
from bot.ports import MessageKey, OutboundMessage, Receipt

if TYPE_CHECKING:
    from bot.channels.spec import Settings


class SlackChannelSettings(Strict):
    """``channels.slack``: the bot's credentials and the Web API."""

    bot_token_env: str = "SLACK_BOT_TOKEN"  # noqa: S105 (a variable name)
    signing_secret_env: str = "SLACK_SIGNING_SECRET"  # noqa: S105 (a variable name)
    api_url: str = "https://slack.com/api/"
    incident_channel: str | None = None
    press_channel: str | None = None
    # Seconds to wait for Slack's answer; past it the post's outcome is unknown and the next
    # attempt first looks for the message in the conversation's history.
    timeout: Duration = 10.0
    limits: RateLimits = RateLimits()


log = logging.getLogger(__name__)

# The metadata event every delivery carries, so that a post of unknown outcome can be found.
METADATA_EVENT = "tocsin_delivery"
# How far back a reconciliation looks when the delivery's queued time is unknown, and the
# allowance for clocks that differ between Slack and us.
_LOOKBACK = timedelta(hours=24)
_CLOCK_SLACK = timedelta(minutes=5)
_HISTORY_PAGE = 200
_HISTORY_PAGES = 5  # 1,000 messages: a busy incident channel since the delivery was queued
_REMEMBERED = 10_000

# Slack error codes worth another try; any other ``ok: false`` will not fix itself.
TRANSIENT_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
    }
)
# Listed for the reader (and the tests); unlisted codes are permanent too.
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "user_not_found",
        "cannot_dm_bot",
        "msg_too_long",
        "no_text",
        "invalid_blocks",
        "restricted_action",
        "ekm_access_denied",
        "team_access_not_granted",
        "invalid_arguments",
    }
)


def slack_client(settings: Settings, session: aiohttp.ClientSession) -> AsyncWebClient:
    """The Web API client over the shared session, at the configured base URL, without the
    SDK's retries (ours decide, and a 429 must reach the rate limiter)."""
    cfg = settings.channels.get(SPEC)
    if cfg is None:
        raise ValueError("channels.slack is not configured")
    token = settings.secret(cfg.bot_token_env)
    assert token is not None  # required=True raises instead
    # The SDK formats a debug line holding the whole message (names, incident text) on every
    # call unless its logger's own level is above DEBUG: a quiet logger keeps that text out of
    # logs and makes each send about a fifth cheaper.
    sdk_log = logging.getLogger("tocsin.slack.sdk")
    sdk_log.setLevel(logging.INFO)
    return AsyncWebClient(
        token=token.get_secret_value(),
        base_url=cfg.api_url,
        session=session,
        retry_handlers=[],
        logger=sdk_log,
    )


class SlackChannel:
    """Posts deliveries to Slack channels and users through ``chat.postMessage``."""

    name = ChannelName.SLACK
    keys: frozenset[MessageKey] = frozenset()
    # The workspace-wide bucket: Slack allows "several hundred messages a minute" per app.
    rate: float = 5.0
    burst: int = 20
    # About one message a second per channel, with short bursts.
    destination_rate: float | None = 1.0
    destination_burst: int = 3

    def __init__(self, client: AsyncWebClient, *, timeout: float = 10.0) -> None:
        self._client = client
        # The SDK's own timeout applies only to sessions it opens itself, not a shared one.
        self._timeout = timeout
        # Deliveries whose last post here had an unknown outcome (another process learns it
        # from ``OutboundMessage.unknown_attempts``).
        self._uncertain: OrderedDict[int, None] = OrderedDict()

    def __repr__(self) -> str:
        # Never the client: it holds the bot token.
        return f"SlackChannel(base_url={self._client.base_url!r})"

    def provider_key(self, address: str) -> str:
        """One workspace, one bucket: every address shares ``slack``."""
        return "slack"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The ``chat.postMessage`` arguments for ``message``."""
        if not message.address.startswith(("C", "G", "D", "U", "W")):
            raise PermanentError(f"not a Slack channel or user id: {message.address!r}")
        mrkdwn = message.bodies.get("slack")
        plain = message.bodies.get("text")
        if mrkdwn is None and plain is None:
            raise PermanentError("the statement has no slack or text rendering")
        if mrkdwn is None:
            mrkdwn = slack_blocks.escape(str(plain))
        fallback = slack_blocks.escape(plain) if plain is not None else mrkdwn
        try:
            blocks = slack_blocks.statement_blocks(
                mrkdwn, ack_token=message.ack_token if message.require_ack else None
            )
        except ValueError as exc:
            raise PermanentError(str(exc), "msg_too_long") from None
        return {
            "channel": message.address,
            # The fallback shows in notifications and search; Slack parses it as mrkdwn too.
            "text": slack_blocks.fallback_text(fallback),
            "blocks": blocks,
            "parse": "none",
            "link_names": False,
            "unfurl_links": False,
            "unfurl_media": False,
            "metadata": {
                "event_type": METADATA_EVENT,
                "event_payload": {"delivery_id": message.delivery_id},
            },
        }

    async def send(self, message: OutboundMessage) -> Receipt:
        """Post the message (after looking for an earlier post of unknown outcome); Slack's
        answer becomes a receipt or a channel error."""
        arguments = self.payload(message)
        code = "ok"
        if message.unknown_attempts > 0 or message.delivery_id in self._uncertain:
            found = await self.reconcile(message)
            if isinstance(found, Receipt):
                self._uncertain.pop(message.delivery_id, None)
                return found
            if found:  # Slack's history shows the earlier post never landed
                code = "reconciled:not-found"
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.chat_postMessage(**arguments)
        except Exception as exc:
            error = slack_error(exc)
            if error is None:
                raise
            if isinstance(error, UnknownOutcome):
                self._remember(message.delivery_id)
            log.info("slack post to %s failed: %s", message.address, error.code or error.reason)
            raise error from exc
        self._uncertain.pop(message.delivery_id, None)
        channel, ts = response.get("channel"), response.get("ts")
        provider_id = f"{channel}:{ts}" if channel and ts else None
        return Receipt(provider_id=provider_id, state=DeliveryState.DELIVERED, code=code)

    async def reconcile(self, message: OutboundMessage) -> Receipt | bool:
        """The receipt of an earlier post of this delivery if the conversation holds one; True
        when it does not (post again: no duplicate). A history that cannot be read now raises
        :class:`TransientError` (look again on the next attempt, never post blindly); one that
        cannot be read at all (a missing scope, the bot not in the channel) gives False (post
        again, a possible duplicate)."""
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await self._look_up(message)
        except Exception as exc:
            error = slack_error(exc)
            if error is None:
                raise
            if isinstance(error, PermanentError):
                log.warning(
                    "slack history of %s unreadable (%s): posting again, a duplicate is possible",
                    message.address,
                    error.code,
                )
                return False
            raise TransientError(f"cannot reconcile: {error.reason}", error.code) from exc

    async def _look_up(self, message: OutboundMessage) -> Receipt | bool:
        """Read the conversation since the delivery was queued, newest first, a few pages."""
        since = (message.queued_at or datetime.now(UTC) - _LOOKBACK) - _CLOCK_SLACK
        channel = await self._conversation(message.address)
        cursor: str | None = None
        for _ in range(_HISTORY_PAGES):
            page = await self._client.conversations_history(
                channel=channel,
                oldest=f"{since.timestamp():.6f}",
                include_all_metadata=True,
                limit=_HISTORY_PAGE,
                cursor=cursor,
            )
            for item in page.get("messages") or []:
                if _carries(item, message.delivery_id):
                    log.info(
                        "slack post of delivery %s found: not posted again", message.delivery_id
                    )
                    provider_id = f"{channel}:{item.get('ts')}"
                    return Receipt(provider_id, DeliveryState.DELIVERED, "reconciled")
            meta = page.get("response_metadata") or {}
            cursor = meta.get("next_cursor") if isinstance(meta, Mapping) else None
            if not page.get("has_more") or not cursor:
                return True  # the whole window was read: the earlier post is not there
        log.warning("slack history of %s too long to search: posting again", message.address)
        return False

    async def _conversation(self, address: str) -> str:
        """The conversation a post to ``address`` lands in: a user's DM with the bot."""
        if not address.startswith(("U", "W")):
            return address
        opened = await self._client.conversations_open(users=address)
        channel = opened.get("channel")
        if not isinstance(channel, Mapping) or not channel.get("id"):
            raise TransientError("conversations.open gave no channel")
        return str(channel["id"])

    def _remember(self, delivery_id: int) -> None:
        self._uncertain[delivery_id] = None
        self._uncertain.move_to_end(delivery_id)
        while len(self._uncertain) > _REMEMBERED:
            self._uncertain.popitem(last=False)

    async def close(self) -> None:
        """Nothing to release: the session belongs to the caller."""

    async def check(self) -> CheckResult:
        """``auth.test``: is the bot token accepted? (Sends nothing.)"""
        try:
            answer = await self._client.auth_test()
        except Exception as exc:
            error = slack_error(exc)
            if error is None:
                raise
            if error.code is None:  # no answer from Slack: the reason may quote the host
                return CheckResult("slack", False, failure_reason(exc))
            return CheckResult("slack", False, f"auth.test refused: {error.code}")
        return CheckResult("slack", True, f"auth.test ok (workspace {answer.get('team')!s})")


def slack_error(exc: BaseException) -> ChannelError | None:
    """The channel error a Slack SDK or aiohttp failure stands for, or None if it is not one.

    ``ok: false`` codes in :data:`TRANSIENT_ERRORS`, 429 and 5xx are transient; a 429 is
    scoped to the destination (Slack limits each channel) with Slack's ``Retry-After``.
    """
    if isinstance(exc, SlackApiError):
        status = int(getattr(exc.response, "status_code", 0) or 0)
        data = getattr(exc.response, "data", None)
        code = str(data.get("error") or "") if isinstance(data, Mapping) else ""
        headers = getattr(exc.response, "headers", None) or {}
        retry_after = parse_retry_after(_header(headers, "Retry-After"))
        reason = f"Slack {code or 'error'} (HTTP {status})"
        if status == 429 or code in {"ratelimited", "rate_limited"}:
            return TransientError(
                reason, code or "429", retry_after=retry_after, scope="destination"
            )
        if status >= 500 or code in TRANSIENT_ERRORS:
            return TransientError(reason, code or str(status), retry_after=retry_after)
        return PermanentError(reason, code or str(status))
    if isinstance(exc, SlackClientError):
        return TransientError(f"Slack client error: {type(exc).__name__}")
    if isinstance(exc, TimeoutError):
        # The request was (most likely) written and Slack may have posted it: a connect
        # timeout is rare on a pooled session and reconciling it costs one history read.
        return UnknownOutcome("no answer from Slack in time: the message may be posted")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) and not isinstance(
        exc, aiohttp.ClientConnectorError
    ):
        # Dropped after the request went out: Slack may have taken it.
        return UnknownOutcome(f"connection lost after sending ({type(exc).__name__})")
    return exception_error(exc)


def _carries(item: Any, delivery_id: int) -> bool:
    """True when a history message is the post of ``delivery_id`` (by its metadata)."""
    if not isinstance(item, Mapping):
        return False
    metadata = item.get("metadata")
    if not isinstance(metadata, Mapping) or metadata.get("event_type") != METADATA_EVENT:
        return False
    payload = metadata.get("event_payload")
    return isinstance(payload, Mapping) and str(payload.get("delivery_id")) == str(delivery_id)


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name) or headers.get(name.lower())
    if isinstance(value, list):  # some SDK paths keep headers as lists
        value = value[0] if value else None
    return str(value) if value is not None else None


def from_settings(settings: Settings, session: aiohttp.ClientSession) -> SlackChannel:
    """The Slack channel of this configuration, over the shared HTTP session."""
    cfg = settings.channels.get(SPEC)
    timeout = cfg.timeout if cfg is not None else 10.0
    return SlackChannel(slack_client(settings, session), timeout=timeout)


SPEC = ChannelSpec(
    name=ChannelName.SLACK,
    settings_model=SlackChannelSettings,
    from_settings=from_settings,
    formats=("slack", "text"),
    destination_key="slack_channel",
    member_key="slack",
    check=built_check(from_settings),
)
