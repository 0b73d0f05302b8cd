"""Slack inbound: ``POST /slack/events`` → slack-bolt ``AsyncApp`` → the domain services.

Every request's signature is checked before bolt sees it (and again by bolt): a bad or missing
signature, a timestamp outside Slack's 5-minute window or a replay of a request already taken
gets 401 and changes nothing. Events API retries of an event already handled are answered
without running it twice. :class:`SlackInbound` wires bolt to the listeners of
:mod:`bot.interfaces.slack_listeners` and runs their work in tracked background tasks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.channels import slack_blocks as kit
from bot.channels.slack import slack_client
from bot.delivery.scheduler import Scheduler
from bot.domain.models import Actor
from bot.interfaces.deps import ChatDeps
from bot.interfaces.slack_listeners import INTERNAL_ERROR, REFUSAL, SlackListeners
from bot.interfaces.slack_payloads import (
    LIST_FIELDS,
    explain,
    field_errors,
    form_values,
    press_view,
)
from bot.interfaces.slack_progress import SlackProgress, incident_channel
from bot.ports import Store

__all__ = [
    "INTERNAL_ERROR",
    "LIST_FIELDS",
    "REFUSAL",
    "SLACK",
    "WINDOW_SECONDS",
    "EventLog",
    "RequestGuard",
    "SlackInbound",
    "add_routes",
    "events",
    "explain",
    "field_errors",
    "form_values",
    "press_view",
    "setup",
]

log = logging.getLogger("tocsin.slack")

WINDOW_SECONDS = 300  # Slack's own: a request older than this is refused


class RequestGuard:
    """Signature (v0 HMAC-SHA256 over ``v0:{ts}:{body}``), freshness and replay checks."""

    def __init__(self, signing_secret: str, *, max_remembered: int = 100_000) -> None:
        self._verifier = SignatureVerifier(signing_secret)
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_remembered

    def rejection(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """Why this request must be refused, or None when it is genuine and new."""
        timestamp = headers.get("X-Slack-Request-Timestamp", "")
        signature = headers.get("X-Slack-Signature", "")
        if not timestamp or not signature:
            return "missing signature headers"
        if not self._verifier.is_valid(body, timestamp, signature):
            return "bad signature or stale timestamp"
        now = time.time()
        while self._seen and (next(iter(self._seen.values())) < now or len(self._seen) > self._max):
            self._seen.popitem(last=False)
        if signature in self._seen:
            return "replayed request"
        # Remembered until its timestamp leaves the window, after which it is refused anyway.
        self._seen[signature] = int(timestamp) + WINDOW_SECONDS
        return None


class EventLog:
    """Events API ``event_id``s already handled, so that Slack's retries of them
    (``X-Slack-Retry-Num``) are answered without running them twice."""

    def __init__(self, keep: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._keep = keep

    @staticmethod
    def event_id(body: bytes) -> str | None:
        """The ``event_id`` of an Events API body (slash commands and interactions are forms,
        which Slack does not retry)."""
        try:
            data = json.loads(body)
        except ValueError:
            return None
        event_id = data.get("event_id") if isinstance(data, dict) else None
        return event_id if isinstance(event_id, str) else None

    def handled(self, event_id: str) -> bool:
        """True when this event was already handled."""
        return event_id in self._ids

    def remember(self, event_id: str) -> None:
        """Note an event as handled (the oldest are forgotten past ``keep``)."""
        self._ids[event_id] = None
        if len(self._ids) > self._keep:
            self._ids.popitem(last=False)


class SlackInbound:
    """The bolt app, its guards, the progress message and the background work of one server."""

    def __init__(self, deps: ChatDeps, client: AsyncWebClient, signing_secret: str) -> None:
        self.deps = deps
        self.client = client
        self.guard = RequestGuard(signing_secret)
        self.events = EventLog()
        self.progress: SlackProgress | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        cfg = deps.settings.auth.slack_users
        self._group_ids = tuple(k for k in cfg if k.startswith("S"))
        self._groups: dict[str, frozenset[str]] = {}
        self._groups_at = -1e9
        self.bolt = AsyncApp(
            client=client,
            signing_secret=signing_secret,
            name="tocsin",
            # The listeners ack at once and hand the work to tracked tasks (see spawn), so
            # the answer waits for nothing slow and shutdown can wait for the work.
            process_before_response=True,
            request_verification_enabled=True,
        )
        listeners = SlackListeners(self)
        self.bolt.command("/incident")(listeners.incident)
        self.bolt.view(kit.DECLARE_VIEW)(listeners.declare_submitted)
        self.bolt.view(kit.PRESS_EDIT_VIEW)(listeners.press_edit_submitted)
        self.bolt.action(kit.ACK_ACTION)(listeners.acknowledge)
        self.bolt.action(kit.PRESS_APPROVE_ACTION)(listeners.press_approve)
        self.bolt.action(kit.PRESS_EDIT_ACTION)(listeners.press_edit)
        self.bolt.event("app_mention")(listeners.mention)

    # --- plumbing ---------------------------------------------------------------------
    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` after the answer has gone; failures are logged, never lost."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("slack work failed", exc_info=task.exception())

    async def idle(self) -> None:
        """Return once no background work is running (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self, timeout: float = 5.0) -> None:
        """Let running work finish (up to ``timeout``), then cancel."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def actor(self, user_id: str) -> Actor | None:
        """The allow-listed actor behind a Slack user, directly or through a user group."""
        auth = self.deps.auth
        actor = auth.slack_user(user_id)
        if actor is not None or not self._group_ids:
            return actor
        return auth.slack_user(user_id, await self._groups_of(user_id))

    async def _groups_of(self, user_id: str) -> tuple[str, ...]:
        if time.monotonic() - self._groups_at > 300:
            for group in self._group_ids:
                try:
                    answer = await self.client.usergroups_users_list(usergroup=group)
                    self._groups[group] = frozenset(answer.get("users") or ())
                except (SlackApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("cannot list Slack user group %s: %s", group, type(exc).__name__)
            self._groups_at = time.monotonic()
        return tuple(g for g, members in self._groups.items() if user_id in members)

    async def reply(self, response_url: Any, text: str) -> None:
        """An ephemeral answer through ``response_url`` (plain text, escaped here)."""
        await self.respond(
            response_url,
            {
                "text": kit.escape(text),
                "response_type": "ephemeral",
                "replace_original": False,
            },
        )

    async def replace(self, response_url: Any, text: str, blocks: list[dict[str, Any]]) -> None:
        """Replace the message a button was pressed on (``text``, ``blocks``: mrkdwn-safe)."""
        await self.respond(
            response_url,
            {
                "text": text,
                "blocks": blocks,
                "response_type": "in_channel",
                "replace_original": True,
            },
        )

    async def respond(self, response_url: Any, message: dict[str, Any]) -> None:
        """Send ``message`` through ``response_url``: nothing without one, and a failure is only
        logged."""
        if not isinstance(response_url, str) or not response_url:
            return
        hook = AsyncWebhookClient(response_url, session=self.deps.session)
        try:
            await hook.send_dict(message)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("slack response_url failed: %s", type(exc).__name__)


SLACK = web.AppKey("slack_inbound", SlackInbound)


async def events(request: web.Request) -> web.StreamResponse:
    """``POST /slack/events``: guard, de-duplicate, hand to bolt."""
    inbound = request.app.get(SLACK)
    if inbound is None:
        raise web.HTTPServiceUnavailable(text="Slack is starting")
    body = await request.read()
    reason = inbound.guard.rejection(request.headers, body)
    if reason is not None:
        # Never the payload: it may carry names and incident details.
        log.info("rejected Slack request: %s", reason)
        return web.json_response({"error": "invalid request"}, status=401)
    event_id = inbound.events.event_id(body)
    if event_id is not None and inbound.events.handled(event_id):
        return web.Response(status=200, headers={"X-Slack-No-Retry": "1"})
    answer = await inbound.bolt.async_dispatch(await to_bolt_request(request))
    if event_id is not None and answer.status < 500:
        # Only once handled: a retry after our own failure must still be processed.
        inbound.events.remember(event_id)
    return await to_aiohttp_response(answer)


async def _close(app: web.Application) -> None:
    inbound = app.get(SLACK)
    if inbound is not None:
        await inbound.close()


def add_routes(app: web.Application) -> None:
    """Register ``POST /slack/events`` (and the shutdown of the background work)."""
    app.router.add_post("/slack/events", events)
    app.on_shutdown.append(_close)


def setup(
    app: web.Application,
    deps: ChatDeps,
    *,
    progress_store: Store,
    scheduler: Scheduler | None,
) -> None:
    """Build the bolt app over the shared session; follow fan-outs in Slack when this process
    runs the ``scheduler`` (its leader keeps the progress messages in ``progress_store``)."""
    settings = deps.settings
    cfg = settings.channels.slack
    if cfg is None:
        return
    secret = settings.secret(cfg.signing_secret_env)
    assert secret is not None  # required=True raises instead
    client = slack_client(settings, deps.session)
    inbound = SlackInbound(deps, client, secret.get_secret_value())
    channel = incident_channel(settings)
    if scheduler is not None and channel is not None:
        inbound.progress = SlackProgress(
            client,
            progress_store,
            channel,
            deps.clock,
            locale=settings.organisation.locale,
            timezone=settings.organisation.timezone,
        )
        scheduler.add("slack progress", inbound.progress.interval, inbound.progress.tick)
    app[SLACK] = inbound
