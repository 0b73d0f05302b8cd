"""The live progress message: one Slack message per incident in the incident channel.

Posted when the incident's fan-out starts, then changed in place with ``chat.update`` — counts
by state for each audience — when the counts changed, with a final update once nothing is
queued, sending or retrying. The counts are read from the store, so deliveries sent by any
process (``tocsin worker`` on other machines) show; :meth:`SlackProgress.tick` is run by the
scheduler's leader (one ``serve`` per deployment) every ``interval`` seconds, and the
message's ``ts`` is stored so that a restarted ``serve`` updates the same message.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.channels import slack_blocks as kit
from bot.channels.http_errors import parse_retry_after
from bot.config import Settings, SlackChannelSettings
from bot.domain.models import PENDING_STATES, ChannelName, DeliveryState
from bot.ports import Clock, ProgressMessage, Store

log = logging.getLogger("tocsin.slack.progress")

# A resolution's fan-out still gets its final counts for this long after the resolution.
RECENTLY_RESOLVED = timedelta(hours=1)
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
    cfg: SlackChannelSettings | None = settings.channels.slack
    if cfg is None:
        return None
    if cfg.incident_channel:
        return cfg.incident_channel
    crisis = settings.audiences.get("crisis-cell")
    for destination in crisis.destinations if crisis else ():
        if destination.channel == ChannelName.SLACK:
            return destination.address
    return None


class SlackProgress:
    """Keeps one progress message per incident up to date from the store's counts.

    ``interval`` is the period the scheduler runs :meth:`tick` at (Slack allows about one
    ``chat.update`` per second and channel).
    """

    def __init__(
        self,
        client: AsyncWebClient,
        store: Store,
        channel: str,
        clock: Clock,
        *,
        interval: float = 1.0,
        locale: str = "fr",
        timezone: str = "UTC",
    ) -> None:
        self.client = client
        self.store = store
        self.channel = channel
        self.clock = clock
        self.interval = interval
        self._words = WORDS.get(locale[:2], WORDS["en"])
        self._zone = ZoneInfo(timezone)
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    async def tick(self) -> None:
        """Post or update the message of every incident whose counts moved since last time."""
        async with self._lock:  # one look at a time: two would both post a first message
            await self._tick()

    async def _tick(self) -> None:
        now = self.clock.now()
        if now.timestamp() < self._paused_until:
            return  # Slack asked us to wait (429)
        for incident_id in await self.store.progress_due(now - RECENTLY_RESOLVED):
            saved = await self.store.get_progress(incident_id)
            if saved is not None and not saved.ts:
                continue  # the bot cannot post there: said once, not at every tick
            try:
                await self._publish(incident_id, saved)
            except SlackApiError as exc:
                wait = self._retry_delay(exc)
                if wait is None:
                    # channel_not_found, not_in_channel…: say it once, not at every tick.
                    log.warning(
                        "progress message in %s disabled: %s", self.channel, _error_code(exc)
                    )
                    await self.store.save_progress(
                        ProgressMessage(incident_id, self.channel, "", "", 0)
                    )
                    continue
                self._paused_until = self.clock.now().timestamp() + wait
                return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("progress update failed: %s", type(exc).__name__)
                return  # the next tick tries again

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

    async def _publish(self, incident_id: str, saved: ProgressMessage | None) -> None:
        matrix = await self.store.delivery_matrix(incident_id)
        if not matrix:
            return
        incident = await self.store.get_incident(incident_id)
        title = incident.title if incident else ""
        now = self.clock.now()
        counts, pending = self.counts(incident_id, title, matrix)
        if saved is not None and saved.last_text == counts and saved.pending == pending:
            return  # nothing moved
        text, blocks, pending = self.render(incident_id, title, matrix, now)
        if saved is None:
            answer = await self.client.chat_postMessage(
                channel=self.channel, text=text, blocks=blocks, parse="none"
            )
            # Updates go to the channel id Slack answered with (a user id becomes a DM).
            channel, ts = str(answer.get("channel") or self.channel), str(answer.get("ts"))
        else:
            channel, ts = saved.channel, saved.ts
            await self.client.chat_update(
                channel=channel, ts=ts, text=text, blocks=blocks, parse="none"
            )
        await self.store.save_progress(ProgressMessage(incident_id, channel, ts, counts, pending))

    def counts(
        self, incident_id: str, title: str, matrix: list[tuple[str, str, str, int]]
    ) -> tuple[str, int]:
        """The message without its time: what a new update must differ by; and the pending."""
        text, _blocks, pending = self.render(incident_id, title, matrix, with_time=False)
        return text, pending

    def render(
        self,
        incident_id: str,
        title: str,
        matrix: list[tuple[str, str, str, int]],
        now: datetime | None = None,
        *,
        with_time: bool = True,
    ) -> tuple[str, list[dict[str, object]], int]:
        """The message's fallback text, blocks and the number of deliveries still pending
        (``with_time=False``: the message's text without its time, as the fallback)."""
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
        status = words["done"] if pending == 0 else f"{pending} {words['pending']}"
        if not with_time:
            lines.append(f"{words['total']} {total} · {status}")
            return "\n".join(lines), [], pending
        at = (now or self.clock.now()).astimezone(self._zone)
        lines.append(f"{words['total']} {total} · {status} · {words['at']} {at:%H:%M:%S}")
        text = "\n".join(lines)
        summary = f"{words['title']} {incident_id}: {total - pending}/{total}"
        return kit.escape(summary), [kit.section(p) for p in kit.split_sections(text)], pending


def _error_code(exc: SlackApiError) -> str | None:
    data = exc.response.data
    return str(data.get("error")) if isinstance(data, dict) else None
