"""What Tocsin does for each Slack request bolt hands it: ``/incident <command>`` (``declare``
alone opens a form), the declare and press-edit forms, the press draft's Edit / Approve buttons,
the delivery's Acknowledge button and ``@tocsin <command>`` mentions.

Every listener ``ack()``s at once — Slack gives up after 3 seconds — and leaves the work to a
task of :class:`~bot.interfaces.slack_app.SlackInbound`, which answers through the
``response_url`` (ephemeral) or the Web API.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.channels import slack_blocks as kit
from bot.domain.declarations import IncidentDraft
from bot.domain.errors import InvalidInput, NotFound, TocsinError
from bot.domain.models import Actor, ChannelName, Delivery, Role
from bot.domain.rendering import BUILTIN_CLAIMS
from bot.interfaces.commands import USAGE, Command, execute, parse_command
from bot.interfaces.deps import ChatDeps
from bot.interfaces.slack_payloads import (
    action_value,
    explain,
    field_errors,
    form_values,
    press_view,
    view_metadata,
)

log = logging.getLogger("tocsin.slack")

REFUSAL = "You are not allowed to use /incident. Ask the crisis cell to add you."
INTERNAL_ERROR = "Something went wrong on Tocsin's side; the details are in its log."


class Inbound(Protocol):
    """What the listeners use of :class:`~bot.interfaces.slack_app.SlackInbound`."""

    deps: ChatDeps
    client: AsyncWebClient

    def spawn(self, work: Coroutine[Any, Any, None]) -> None: ...

    async def actor(self, user_id: str) -> Actor | None: ...

    async def reply(self, response_url: Any, text: str) -> None: ...

    async def replace(self, response_url: Any, text: str, blocks: list[dict[str, Any]]) -> None: ...

    async def respond(self, response_url: Any, message: dict[str, Any]) -> None: ...


class SlackListeners:
    """The bolt listeners of one :class:`~bot.interfaces.slack_app.SlackInbound`: who may do
    what, and what each command, form and button does."""

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound
        self.deps = inbound.deps
        self.client = inbound.client

    # --- /incident --------------------------------------------------------------------
    async def incident(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """``/incident …``: refuse, explain or acknowledge at once; the work follows."""
        actor = await self.inbound.actor(str(body.get("user_id", "")))
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
            self.inbound.spawn(self._open_declare(body))
        elif command.verb == "press":
            self.inbound.spawn(self._post_press(actor, command, body))
        else:
            self.inbound.spawn(self._run(command, actor, body.get("response_url")))

    async def _run(self, command: Command, actor: Actor, response_url: Any) -> None:
        try:
            reply = await execute(command, actor, self.deps.service)
        except TocsinError as exc:
            await self.inbound.reply(response_url, explain(exc))
            return
        except Exception:
            log.exception("/incident %s failed", command.verb)
            await self.inbound.reply(response_url, INTERNAL_ERROR)
            return
        await self.inbound.reply(response_url, reply.text)

    async def _open_declare(self, body: Mapping[str, Any]) -> None:
        service = self.deps.service
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
            await self.inbound.reply(
                body.get("response_url"), f"Could not open the form ({exc.response.get('error')})."
            )

    async def declare_submitted(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """The declare form: field errors go back into the form; a valid one is declared."""
        actor = await self.inbound.actor(str(body.get("user", {}).get("id", "")))
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
        self.inbound.spawn(self._declare(actor, draft, view_metadata(view).get("response_url")))

    def _draft(self, values: dict[str, Any]) -> IncidentDraft:
        draft = IncidentDraft.from_mapping(values)
        service, problems = self.deps.service, {}
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
            incident = await self.deps.service.declare(actor, draft)
        except TocsinError as exc:
            await self.inbound.reply(url, explain(exc))
            return
        except Exception:
            log.exception("declaration from the Slack form failed")
            await self.inbound.reply(url, INTERNAL_ERROR)
            return
        await self.inbound.reply(
            url,
            f"Declared {incident.id}: {incident.title} "
            f"({incident.severity.value}). Sending to "
            f"{', '.join(incident.audiences)}.",
        )

    # --- the press draft --------------------------------------------------------------
    async def _post_press(self, actor: Actor, command: Command, body: Mapping[str, Any]) -> None:
        response_url = body.get("response_url")
        try:
            reply = await execute(command, actor, self.deps.service)
        except TocsinError as exc:
            await self.inbound.reply(response_url, explain(exc))
            return
        if reply.statement is None:
            await self.inbound.reply(response_url, reply.text)
            return
        text, blocks = press_view(reply.statement)
        cfg = self.deps.settings.channels.slack
        channel = (cfg.press_channel if cfg else None) or str(body.get("channel_id", ""))
        try:
            await self.client.chat_postMessage(
                channel=channel, text=text, blocks=blocks, parse="none", unfurl_links=False
            )
        except SlackApiError as exc:
            # Not in that channel: show it to the person who asked instead.
            log.info("press draft post failed: %s", exc.response.get("error"))
            await self.inbound.reply(response_url, reply.text)
            return
        where = kit.channel_link(channel)
        await self.inbound.respond(
            response_url,
            {"text": f"Press statement draft posted in {where}.", "response_type": "ephemeral"},
        )

    async def press_approve(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """Approve: four-eyes is the service's rule; the message shows the outcome."""
        await ack()
        self.inbound.spawn(self._approve(body))

    async def _approve(self, body: Mapping[str, Any]) -> None:
        response_url = body.get("response_url")
        actor = await self.inbound.actor(str(body.get("user", {}).get("id", "")))
        if actor is None:
            await self.inbound.reply(response_url, REFUSAL)
            return
        try:
            statement = await self.deps.service.approve_statement(actor, action_value(body))
        except TocsinError as exc:
            await self.inbound.reply(response_url, explain(exc))
            return
        await self.inbound.replace(response_url, *press_view(statement))

    async def press_edit(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """Edit: open the form with the current text (press role only)."""
        await ack()
        self.inbound.spawn(self._open_edit(body))

    async def _open_edit(self, body: Mapping[str, Any]) -> None:
        response_url = body.get("response_url")
        actor = await self.inbound.actor(str(body.get("user", {}).get("id", "")))
        if actor is None or not actor.can(Role.PRESS):
            await self.inbound.reply(
                response_url, "Only the press office can edit a press statement."
            )
            return
        try:
            statement = await self.deps.service.statement(action_value(body))
        except NotFound as exc:
            await self.inbound.reply(response_url, str(exc))
            return
        if len(statement.text) > kit.INPUT_LIMIT:
            await self.inbound.reply(response_url, "Too long to edit in Slack: use the dashboard.")
            return
        metadata = json.dumps({"statement": statement.id, "response_url": response_url})
        try:
            await self.client.views_open(
                trigger_id=str(body.get("trigger_id", "")),
                view=kit.press_edit_modal(statement.text, metadata),
            )
        except SlackApiError as exc:
            await self.inbound.reply(
                response_url, f"Could not open the form ({exc.response.get('error')})."
            )

    async def press_edit_submitted(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """The edited text becomes a new draft version; the posted draft shows it."""
        view = body.get("view", {})
        text = str(form_values(view.get("state", {}).get("values", {})).get("text") or "")
        actor = await self.inbound.actor(str(body.get("user", {}).get("id", "")))
        if actor is None or not actor.can(Role.PRESS):
            await ack(response_action="errors", errors={"text": "Press role required."})
            return
        if not text.strip():
            await ack(response_action="errors", errors={"text": "The statement cannot be empty."})
            return
        await ack()
        self.inbound.spawn(self._edit(actor, view_metadata(view), text))

    async def _edit(self, actor: Actor, metadata: Mapping[str, Any], text: str) -> None:
        url = metadata.get("response_url")
        try:
            edited = await self.deps.service.edit_statement(
                actor, str(metadata.get("statement", "")), text
            )
        except TocsinError as exc:
            await self.inbound.reply(url, explain(exc))
            return
        await self.inbound.replace(url, *press_view(edited))

    # --- acknowledgements -------------------------------------------------------------
    async def acknowledge(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """The delivery's button: only the Slack user the message was sent to may acknowledge
        it (a message can be forwarded or shown in a shared channel); anyone else gets an
        ephemeral "this button is for …" and nothing changes."""
        await ack()
        self.inbound.spawn(self._acknowledge(body))

    async def _acknowledge(self, body: Mapping[str, Any]) -> None:
        user_id = str(body.get("user", {}).get("id", ""))
        token = action_value(body)
        found = await self.deps.service.acknowledgements.find(token)
        if found is None or found.channel != ChannelName.SLACK:
            await self.inbound.reply(
                body.get("response_url"), "unknown or expired acknowledgement link"
            )
            return
        if found.address != user_id:
            log.info("slack acknowledgement refused: pressed by someone else")
            await self.inbound.reply(
                body.get("response_url"), f"This button is for {found.recipient}."
            )
            return
        try:
            delivery = await self.deps.service.acknowledge(token, by=f"slack:{user_id}")
        except NotFound as exc:
            await self.inbound.reply(body.get("response_url"), str(exc))
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
        at = delivery.acknowledged_at or self.deps.clock.now()
        local = at.astimezone(ZoneInfo(self.deps.settings.organisation.timezone))
        if delivery.locale.startswith("fr"):
            return f":white_check_mark: Pris en compte par {who} le {local:%d/%m/%Y à %H:%M}"
        return f":white_check_mark: Acknowledged by {who} on {local:%Y-%m-%d at %H:%M}"

    # --- @tocsin <command> ------------------------------------------------------------
    async def mention(self, ack: AsyncAck, event: dict[str, Any]) -> None:
        """``@tocsin status`` and friends, answered in the thread."""
        await ack()
        self.inbound.spawn(self._mentioned(event))

    async def _mentioned(self, event: Mapping[str, Any]) -> None:
        words = str(event.get("text", "")).split()
        text = " ".join(w for w in words if not (w.startswith("<@") and w.endswith(">")))
        actor = await self.inbound.actor(str(event.get("user", "")))
        if actor is None:
            answer = REFUSAL
        else:
            try:
                command = parse_command(text)
                if command.verb == "declare" and command.system is None:
                    answer = "Use /incident declare to open the form."
                else:
                    answer = (await execute(command, actor, self.deps.service)).text
            except TocsinError as exc:
                answer = explain(exc)
        with contextlib.suppress(SlackApiError):
            await self.client.chat_postMessage(
                channel=str(event.get("channel", "")),
                thread_ts=str(event.get("ts", "")),
                text=kit.escape(answer),
                parse="none",
            )
