"""The live progress message: one Slack message per incident in the incident channel.

Posted when the incident's fan-out starts (its first delivery outcome), then changed in place
with ``chat.update`` — counts by state for each audience — at most once every ``interval``
seconds, with a final update once nothing is queued, sending or retrying. It watches the
dispatcher through its ``observers`` hook, which is called after outcomes are committed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.channels import slack_blocks as kit
from bot.channels.http_errors import parse_retry_after
from bot.config import Settings
from bot.domain.models import PENDING_STATES, Delivery, DeliveryState, Outcome
from bot.ports import Store

log = logging.getLogger("tocsin.slack.progress")

PENDING = frozenset(state.value for state in PENDING_STATES)
STATE_ORDER = [state.value for state in DeliveryState]
WORDS = {
    "fr": {
        "title": "Diffusion",
        "pending": "en cours",
        "done": "Diffusion terminée",
        "total": "Total",
        "at": "mis à jour à",
    },
    "en": {
        "title": "Delivery",
        "pending": "pending",
        "done": "Delivery complete",
        "total": "Total",
        "at": "updated at",
    },
}


def incident_channel(settings: Settings) -> str | None:
    """``channels.slack.incident_channel``, else the crisis cell's first Slack channel."""
    cfg = settings.channels.slack
    if cfg is None:
        return None
    if cfg.incident_channel:
        return cfg.incident_channel
    crisis = settings.audiences.get("crisis-cell")
    for destination in crisis.destinations if crisis else ():
        if destination.slack_channel:
            return destination.slack_channel
    return None


@dataclass
class _Follow:
    """What is known about one incident's progress message."""

    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    ts: str | None = None
    task: asyncio.Task[None] | None = None
    given_up: bool = False


class SlackProgress:
    """Keeps one progress message per incident up to date; ``observe`` is the dispatcher hook.

    ``interval`` is the least time between two updates of one message (Slack rate-limits
    ``chat.update``; tests set it to 0).
    """

    def __init__(
        self,
        client: AsyncWebClient,
        store: Store,
        channel: str,
        *,
        interval: float = 5.0,
        locale: str = "fr",
        timezone: str = "UTC",
    ) -> None:
        self.client = client
        self.store = store
        self.channel = channel
        self.interval = interval
        self._words = WORDS.get(locale[:2], WORDS["en"])
        self._zone = ZoneInfo(timezone)
        self._follows: dict[str, _Follow] = {}
        self._closed = False
        self._closing = asyncio.Event()

    def observe(self, delivery: Delivery, outcome: Outcome) -> None:
        """Note that ``delivery``'s incident moved on; its message follows soon."""
        if self._closed:
            return
        follow = self._follows.setdefault(delivery.incident_id, _Follow())
        if follow.given_up:
            return
        follow.dirty.set()
        if follow.task is None or follow.task.done():
            follow.task = asyncio.create_task(self._follow(delivery.incident_id, follow))

    def message_ts(self, incident_id: str) -> str | None:
        """The ``ts`` of the incident's progress message, once posted."""
        follow = self._follows.get(incident_id)
        return follow.ts if follow else None

    async def close(self, timeout: float = 5.0) -> None:
        """Stop following: each message gets one last update if it is behind (within
        ``timeout`` seconds, after which what is left is cancelled)."""
        self._closed = True
        self._closing.set()
        tasks = [f.task for f in self._follows.values() if f.task and not f.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _follow(self, incident_id: str, follow: _Follow) -> None:
        while True:
            follow.dirty.clear()
            delay = self.interval
            try:
                pending = await self._publish(incident_id, follow)
            except SlackApiError as exc:
                wait = self._retry_delay(exc)
                if wait is None:
                    # channel_not_found, not_in_channel…: say it once, not at every delivery.
                    log.warning(
                        "progress message in %s disabled: %s", self.channel, _error_code(exc)
                    )
                    follow.given_up = True
                    return
                follow.dirty.set()
                pending, delay = 1, max(delay, wait)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("progress update failed: %s", type(exc).__name__)
                follow.dirty.set()
                pending, delay = 1, max(delay, 1.0)
            if self._closed or (pending == 0 and not follow.dirty.is_set()):
                return  # the final update is out
            # At most one update per interval (Slack rate-limits chat.update); closing cuts
            # the wait short so the last counts still go out.
            await _first_of(self._closing, timeout=delay)
            if not follow.dirty.is_set():
                await _first_of(follow.dirty, self._closing)
            if self._closed and not follow.dirty.is_set():
                return

    @staticmethod
    def _retry_delay(exc: SlackApiError) -> float | None:
        """Seconds before trying again, or None when trying again cannot help."""
        status = exc.response.status_code
        if status == 429 or _error_code(exc) == "ratelimited":
            wait = parse_retry_after(exc.response.headers.get("Retry-After"))
            return min(60.0, wait if wait is not None else 1.0)
        if status >= 500 or _error_code(exc) in {"internal_error", "service_unavailable"}:
            return 2.0
        return None

    async def _publish(self, incident_id: str, follow: _Follow) -> int:
        matrix = await self.store.delivery_matrix(incident_id)
        incident = await self.store.get_incident(incident_id)
        title = incident.title if incident else ""
        text, blocks, pending = self.render(incident_id, title, matrix)
        if follow.ts is None:
            answer = await self.client.chat_postMessage(
                channel=self.channel, text=text, blocks=blocks, parse="none"
            )
            follow.ts = str(answer.get("ts"))
            # Updates go to the channel id Slack answered with (a user id becomes a DM).
            self.channel = str(answer.get("channel") or self.channel)
        else:
            await self.client.chat_update(
                channel=self.channel, ts=follow.ts, text=text, blocks=blocks, parse="none"
            )
        return pending

    def render(
        self,
        incident_id: str,
        title: str,
        matrix: list[tuple[str, str, str, int]],
        now: datetime | None = None,
    ) -> tuple[str, list[dict[str, object]], int]:
        """The message's fallback text, blocks and the number of deliveries still pending."""
        by_audience: dict[str, dict[str, int]] = {}
        for audience, _channel, state, count in matrix:
            states = by_audience.setdefault(audience, {})
            states[state] = states.get(state, 0) + count
        total = sum(sum(states.values()) for states in by_audience.values())
        pending = sum(
            n for states in by_audience.values() for state, n in states.items() if state in PENDING
        )
        words = self._words
        lines = [f"*{words['title']} {kit.escape(incident_id)}* · {kit.escape(title)}"]
        for audience, states in sorted(by_audience.items()):
            counts = " · ".join(f"{s} {states[s]}" for s in STATE_ORDER if states.get(s))
            lines.append(f"• *{kit.escape(audience)}*: {counts}")
        at = (now or datetime.now(UTC)).astimezone(self._zone)
        status = words["done"] if pending == 0 else f"{pending} {words['pending']}"
        lines.append(f"{words['total']} {total} · {status} · {words['at']} {at:%H:%M:%S}")
        text = "\n".join(lines)
        summary = f"{words['title']} {incident_id}: {total - pending}/{total}"
        return kit.escape(summary), [kit.section(p) for p in kit.split_sections(text)], pending


def _error_code(exc: SlackApiError) -> str | None:
    data = exc.response.data
    return str(data.get("error")) if isinstance(data, dict) else None


async def _first_of(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return when one of ``events`` is set, or after ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
