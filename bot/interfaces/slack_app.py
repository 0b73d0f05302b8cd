"""Slack inbound: ``POST /slack/events`` → slack-bolt ``AsyncApp`` → the domain services.

``/incident <command>`` (the shared text commands; ``declare`` alone opens a form), the press
draft's Edit / Approve buttons, the "Acknowledge / Pris en compte" button on deliveries, and
``@tocsin <command>`` mentions. Every request's signature is checked before bolt sees it (and
again by bolt): a bad or missing signature, a timestamp outside Slack's 5-minute window or a
replay of a request already taken gets 401 and changes nothing. Listeners ``ack()`` at once —
Slack gives up after 3 seconds — and do the work in tracked background tasks, answering through
the ``response_url`` (ephemeral) or the Web API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.app import Runtime
from bot.channels import slack_blocks as kit
from bot.channels.slack import slack_client
from bot.domain.declarations import IncidentDraft
from bot.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, TocsinError
from bot.domain.models import Actor, Delivery, Role, Statement
from bot.domain.rendering import BUILTIN_CLAIMS
from bot.interfaces.commands import USAGE, Command, execute, parse_command
from bot.interfaces.slack_progress import SlackProgress, incident_channel

log = logging.getLogger("tocsin.slack")

WINDOW_SECONDS = 300  # Slack's own: a request older than this is refused
REFUSAL = "You are not allowed to use /incident. Ask the crisis cell to add you."
INTERNAL_ERROR = "Something went wrong on Tocsin's side; the details are in its log."


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

    def __init__(self, runtime: Runtime, client: AsyncWebClient, signing_secret: str) -> None:
        self.runtime = runtime
        self.client = client
        self.guard = RequestGuard(signing_secret)
        self.events = EventLog()
        self.progress: SlackProgress | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        cfg = runtime.settings.auth.slack_users
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
        self.bolt.command("/incident")(self.incident)
        self.bolt.view(kit.DECLARE_VIEW)(self.declare_submitted)
        self.bolt.view(kit.PRESS_EDIT_VIEW)(self.press_edit_submitted)
        self.bolt.action(kit.ACK_ACTION)(self.acknowledge)
        self.bolt.action(kit.PRESS_APPROVE_ACTION)(self.press_approve)
        self.bolt.action(kit.PRESS_EDIT_ACTION)(self.press_edit)
        self.bolt.event("app_mention")(self.mention)

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
        """Stop following progress; let running work finish (up to ``timeout``), then cancel."""
        if self.progress is not None:
            await self.progress.close(timeout)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def actor(self, user_id: str) -> Actor | None:
        """The allow-listed actor behind a Slack user, directly or through a user group."""
        auth = self.runtime.auth
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
        await self._respond(
            response_url,
            {
                "text": kit.escape(text),
                "response_type": "ephemeral",
                "replace_original": False,
            },
        )

    async def replace(self, response_url: Any, text: str, blocks: list[dict[str, Any]]) -> None:
        """Replace the message a button was pressed on (``text``, ``blocks``: mrkdwn-safe)."""
        await self._respond(
            response_url,
            {
                "text": text,
                "blocks": blocks,
                "response_type": "in_channel",
                "replace_original": True,
            },
        )

    async def _respond(self, response_url: Any, message: dict[str, Any]) -> None:
        if not isinstance(response_url, str) or not response_url:
            return
        hook = AsyncWebhookClient(response_url, session=self.runtime.session)
        try:
            await hook.send_dict(message)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("slack response_url failed: %s", type(exc).__name__)

    # --- /incident --------------------------------------------------------------------
    async def incident(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """``/incident …``: refuse, explain or acknowledge at once; the work follows."""
        actor = await self.actor(str(body.get("user_id", "")))
        if actor is None:
            await ack(text=REFUSAL, response_type="ephemeral")
            return
        try:
            command = parse_command(str(body.get("text", "")))
        except InvalidInput as exc:
            await ack(text=kit.escape(f"{exc}\n{USAGE}"), response_type="ephemeral")
            return
        if command.verb == "help":
            await ack(text=kit.escape(USAGE), response_type="ephemeral")
            return
        await ack()
        if command.verb == "declare" and command.system is None:
            self.spawn(self._open_declare(body))
        elif command.verb == "press":
            self.spawn(self._post_press(actor, command, body))
        else:
            self.spawn(self._run(command, actor, body.get("response_url")))

    async def _run(self, command: Command, actor: Actor, response_url: Any) -> None:
        try:
            reply = await execute(command, actor, self.runtime.service)
        except TocsinError as exc:
            await self.reply(response_url, explain(exc))
            return
        except Exception:
            log.exception("/incident %s failed", command.verb)
            await self.reply(response_url, INTERNAL_ERROR)
            return
        await self.reply(response_url, reply.text)

    async def _open_declare(self, body: Mapping[str, Any]) -> None:
        service = self.runtime.service
        metadata = json.dumps({"response_url": body.get("response_url")})
        view = kit.declare_modal(
            audiences=sorted(service.audiences),
            default_audiences=list(service.default_audiences),
            locales=list(service.org.locales),
            default_locale=service.org.locale,
            claims=[c for c in BUILTIN_CLAIMS if service.renderer.known_claim(c)],
            metadata=metadata,
        )
        try:
            await self.client.views_open(trigger_id=str(body.get("trigger_id", "")), view=view)
        except SlackApiError as exc:
            await self.reply(
                body.get("response_url"), f"Could not open the form ({exc.response.get('error')})."
            )

    async def declare_submitted(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """The declare form: field errors go back into the form; a valid one is declared."""
        actor = await self.actor(str(body.get("user", {}).get("id", "")))
        if actor is None or not actor.can(Role.RESPONDER):
            await ack(response_action="errors", errors={"title": REFUSAL})
            return
        view = body.get("view", {})
        try:
            draft = self._draft(form_values(view.get("state", {}).get("values", {})))
        except InvalidInput as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {"title": str(exc)}
            await ack(response_action="errors", errors=field_errors(detail))
            return
        await ack()
        self.spawn(self._declare(actor, draft, _metadata(view).get("response_url")))

    def _draft(self, values: dict[str, Any]) -> IncidentDraft:
        draft = IncidentDraft.from_mapping(values)
        service, problems = self.runtime.service, {}
        unknown = [a for a in draft.audiences or () if a not in service.audiences]
        if unknown:
            problems["audiences"] = f"unknown audience(s): {', '.join(unknown)}"
        if draft.locale and draft.locale not in service.org.locales:
            problems["locale"] = f"one of {', '.join(service.org.locales)}"
        if [c for c in draft.claims if not service.renderer.known_claim(c)]:
            problems["claims"] = "unknown claim"
        if problems:
            raise InvalidInput("invalid declaration", detail=problems)
        return draft

    async def _declare(self, actor: Actor, draft: IncidentDraft, url: Any) -> None:
        try:
            incident = await self.runtime.service.declare(actor, draft)
        except TocsinError as exc:
            await self.reply(url, explain(exc))
            return
        except Exception:
            log.exception("declaration from the Slack form failed")
            await self.reply(url, INTERNAL_ERROR)
            return
        await self.reply(
            url,
            f"Declared {incident.id}: {incident.title} "
            f"({incident.severity.value}). Sending to "
            f"{', '.join(incident.audiences)}.",
        )

    # --- the press draft --------------------------------------------------------------
    async def _post_press(self, actor: Actor, command: Command, body: Mapping[str, Any]) -> None:
        response_url = body.get("response_url")
        try:
            reply = await execute(command, actor, self.runtime.service)
        except TocsinError as exc:
            await self.reply(response_url, explain(exc))
            return
        if reply.statement is None:
            await self.reply(response_url, reply.text)
            return
        text, blocks = press_view(reply.statement)
        cfg = self.runtime.settings.channels.slack
        channel = (cfg.press_channel if cfg else None) or str(body.get("channel_id", ""))
        try:
            await self.client.chat_postMessage(
                channel=channel, text=text, blocks=blocks, parse="none", unfurl_links=False
            )
        except SlackApiError as exc:
            # Not in that channel: show it to the person who asked instead.
            log.info("press draft post failed: %s", exc.response.get("error"))
            await self.reply(response_url, reply.text)
            return
        where = kit.channel_link(channel)
        await self._respond(
            response_url,
            {"text": f"Press statement draft posted in {where}.", "response_type": "ephemeral"},
        )

    async def press_approve(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """Approve: four-eyes is the service's rule; the message shows the outcome."""
        await ack()
        self.spawn(self._approve(body))

    async def _approve(self, body: Mapping[str, Any]) -> None:
        response_url = body.get("response_url")
        actor = await self.actor(str(body.get("user", {}).get("id", "")))
        if actor is None:
            await self.reply(response_url, REFUSAL)
            return
        try:
            statement = await self.runtime.service.approve_statement(actor, _action_value(body))
        except TocsinError as exc:
            await self.reply(response_url, explain(exc))
            return
        await self.replace(response_url, *press_view(statement))

    async def press_edit(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """Edit: open the form with the current text (press role only)."""
        await ack()
        self.spawn(self._open_edit(body))

    async def _open_edit(self, body: Mapping[str, Any]) -> None:
        response_url = body.get("response_url")
        actor = await self.actor(str(body.get("user", {}).get("id", "")))
        if actor is None or not actor.can(Role.PRESS):
            await self.reply(response_url, "Only the press office can edit a press statement.")
            return
        try:
            statement = await self.runtime.service.statement(_action_value(body))
        except NotFound as exc:
            await self.reply(response_url, str(exc))
            return
        if len(statement.text) > kit.INPUT_LIMIT:
            await self.reply(response_url, "Too long to edit in Slack: use the dashboard.")
            return
        metadata = json.dumps({"statement": statement.id, "response_url": response_url})
        try:
            await self.client.views_open(
                trigger_id=str(body.get("trigger_id", "")),
                view=kit.press_edit_modal(statement.text, metadata),
            )
        except SlackApiError as exc:
            await self.reply(
                response_url, f"Could not open the form ({exc.response.get('error')})."
            )

    async def press_edit_submitted(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """The edited text becomes a new draft version; the posted draft shows it."""
        view = body.get("view", {})
        text = str(form_values(view.get("state", {}).get("values", {})).get("text") or "")
        actor = await self.actor(str(body.get("user", {}).get("id", "")))
        if actor is None or not actor.can(Role.PRESS):
            await ack(response_action="errors", errors={"text": "Press role required."})
            return
        if not text.strip():
            await ack(response_action="errors", errors={"text": "The statement cannot be empty."})
            return
        await ack()
        self.spawn(self._edit(actor, _metadata(view), text))

    async def _edit(self, actor: Actor, metadata: Mapping[str, Any], text: str) -> None:
        url = metadata.get("response_url")
        try:
            edited = await self.runtime.service.edit_statement(
                actor, str(metadata.get("statement", "")), text
            )
        except TocsinError as exc:
            await self.reply(url, explain(exc))
            return
        await self.replace(url, *press_view(edited))

    # --- acknowledgements -------------------------------------------------------------
    async def acknowledge(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """The delivery's button: whoever holds the message may acknowledge it (the token is
        the capability, as with an e-mail link)."""
        await ack()
        self.spawn(self._acknowledge(body))

    async def _acknowledge(self, body: Mapping[str, Any]) -> None:
        user_id = str(body.get("user", {}).get("id", ""))
        try:
            delivery = await self.runtime.service.acknowledge(
                _action_value(body), by=f"slack:{user_id}"
            )
        except NotFound as exc:
            await self.reply(body.get("response_url"), str(exc))
            return
        container = body.get("container", {})
        message = body.get("message", {})
        blocks = [
            *kit.without_actions(message.get("blocks")),
            kit.context(self._acknowledged_line(delivery)),
        ]
        try:
            await self.client.chat_update(
                channel=str(container.get("channel_id", "")),
                ts=str(container.get("message_ts", "")),
                text=str(message.get("text", "")),
                blocks=blocks,
                parse="none",
            )
        except SlackApiError as exc:
            log.info("ack message update failed: %s", exc.response.get("error"))

    def _acknowledged_line(self, delivery: Delivery) -> str:
        by = delivery.acknowledged_by or ""
        who = (
            kit.user_mention(by.removeprefix("slack:"))
            if by.startswith("slack:")
            else kit.escape(by)
        )
        at = delivery.acknowledged_at or self.runtime.clock.now()
        local = at.astimezone(ZoneInfo(self.runtime.settings.organisation.timezone))
        if delivery.locale.startswith("fr"):
            return f":white_check_mark: Pris en compte par {who} le {local:%d/%m/%Y à %H:%M}"
        return f":white_check_mark: Acknowledged by {who} on {local:%Y-%m-%d at %H:%M}"

    # --- @tocsin <command> ------------------------------------------------------------
    async def mention(self, ack: AsyncAck, event: dict[str, Any]) -> None:
        """``@tocsin status`` and friends, answered in the thread."""
        await ack()
        self.spawn(self._mentioned(event))

    async def _mentioned(self, event: Mapping[str, Any]) -> None:
        words = str(event.get("text", "")).split()
        text = " ".join(w for w in words if not (w.startswith("<@") and w.endswith(">")))
        actor = await self.actor(str(event.get("user", "")))
        if actor is None:
            answer = REFUSAL
        else:
            try:
                command = parse_command(text)
                if command.verb == "declare" and command.system is None:
                    answer = "Use /incident declare to open the form."
                else:
                    answer = (await execute(command, actor, self.runtime.service)).text
            except TocsinError as exc:
                answer = explain(exc)
        with contextlib.suppress(SlackApiError):
            await self.client.chat_postMessage(
                channel=str(event.get("channel", "")),
                thread_ts=str(event.get("ts", "")),
                text=kit.escape(answer),
                parse="none",
            )


SLACK = web.AppKey("slack_inbound", SlackInbound)


def explain(exc: TocsinError) -> str:
    """What a person sees when a command is refused or fails."""
    if isinstance(exc, Forbidden):
        return f"Refused: {exc}"
    if isinstance(exc, InvalidInput):
        detail = exc.detail
        if isinstance(detail, dict):
            return f"{exc}: " + "; ".join(f"{k}: {v}" for k, v in detail.items())
        return f"{exc}\n{detail}" if isinstance(detail, str) else str(exc)
    if isinstance(exc, NotFound | Conflict):
        return str(exc)
    return f"Failed: {exc}"


def press_view(statement: Statement) -> tuple[str, list[dict[str, Any]]]:
    """The press message of a statement (buttons while it is a draft)."""
    return kit.press_message(
        incident_id=statement.incident_id,
        statement_id=statement.id,
        version=statement.version,
        status=statement.status.value,
        author=statement.author,
        approved_by=statement.approved_by,
        text=statement.text,
    )


LIST_FIELDS = {"systems", "unaffected", "sites", "impact", "claims", "audiences"}


def form_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A modal's ``state.values`` → a declaration mapping (empty fields left out, so that no
    audience chosen means the default audiences)."""
    out: dict[str, Any] = {}
    for block_id, actions in values.items():
        element = actions.get(block_id) if isinstance(actions, Mapping) else None
        if not isinstance(element, Mapping):
            continue
        if "selected_options" in element:
            value: Any = [o.get("value") for o in element.get("selected_options") or []]
        elif "selected_option" in element:
            value = (element.get("selected_option") or {}).get("value")
        else:
            value = element.get("value")
            if isinstance(value, str) and block_id in LIST_FIELDS:
                parts = value.splitlines() if block_id == "impact" else re.split(r"[,\n]", value)
                value = [part.strip() for part in parts if part.strip()]
        if value not in (None, "", []):
            out[block_id] = value
    return out


def field_errors(detail: Mapping[str, Any]) -> dict[str, str]:
    """Problems by field → Slack's ``errors`` by block id (unknown fields on the title)."""
    known = {
        "title",
        "systems",
        "severity",
        "impact",
        "sites",
        "unaffected",
        "cause",
        "audiences",
        "locale",
        "claims",
    }
    errors: dict[str, str] = {}
    for key, message in detail.items():
        block = key if key in known else "title"
        errors[block] = (errors.get(block, "") + " " + str(message)).strip()[:150]
    return errors


def _metadata(view: Mapping[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _action_value(body: Mapping[str, Any]) -> str:
    actions = body.get("actions") or [{}]
    return str(actions[0].get("value", ""))


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


def setup(app: web.Application, runtime: Runtime) -> None:
    """Build the bolt app over the runtime's shared session; follow fan-outs in Slack."""
    cfg = runtime.settings.channels.slack
    if cfg is None:
        return
    if runtime.session is None:
        raise RuntimeError("Slack needs the runtime's shared HTTP session")
    secret = runtime.settings.secret(cfg.signing_secret_env)
    assert secret is not None  # required=True raises instead
    client = slack_client(runtime.settings, runtime.session)
    inbound = SlackInbound(runtime, client, secret.get_secret_value())
    channel = incident_channel(runtime.settings)
    if runtime.dispatcher is not None and channel is not None:
        inbound.progress = SlackProgress(
            client,
            runtime.store,
            channel,
            locale=runtime.settings.organisation.locale,
            timezone=runtime.settings.organisation.timezone,
        )
        runtime.dispatcher.observers.append(inbound.progress.observe)
    app[SLACK] = inbound
