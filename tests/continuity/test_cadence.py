"""Update-cadence reminders fire with a fake clock, once per cadence, into the timeline."""

from __future__ import annotations

from bot.app import build_dispatcher, open_runtime
from bot.config import settings_from_dict
from bot.domain.cadence import remind_overdue
from bot.domain.clock import FakeClock
from bot.domain.declarations import IncidentDraft
from bot.domain.models import Actor, ChannelName, Role, Severity
from bot.store.memory import MemoryStore
from tests.fakes.channels import RecordingChannel

CONFIG = {
    "organisation": {"name": "AP-HP", "locale": "fr"},
    "channels": {"slack": {}},
    "audiences": {
        "crisis-cell": {"statement": "internal", "destinations": [{"slack_channel": "C0CRISIS"}]}
    },
    "default_audiences": ["crisis-cell"],
    "reminders": {"cadence": {"critical": "30m"}},
}
CADENCE = {Severity.CRITICAL: 1800.0}


async def test_overdue_incident_reminds_the_crisis_cell() -> None:
    clock = FakeClock()
    slack = RecordingChannel(ChannelName.SLACK)
    async with open_runtime(
        settings_from_dict(CONFIG),
        clock=clock,
        store=MemoryStore(),
        channel_factory=lambda _s, _x: {ChannelName.SLACK: slack},
    ) as rt:
        cell = Actor("cellule", Role.RESPONDER)
        critical = await rt.service.declare(
            cell,
            IncidentDraft.from_mapping(
                {"title": "Orbis", "systems": ["Orbis"], "severity": "critical"}
            ),
        )
        await rt.service.declare(
            cell,
            IncidentDraft.from_mapping(
                {"title": "Imprimantes", "systems": ["Impression"], "severity": "minor"}
            ),
        )
        worker = build_dispatcher(rt)
        await worker.drain()
        assert len(slack.sent) == 2
        clock.advance(29 * 60)
        assert await remind_overdue(rt.service, CADENCE, "crisis-cell") == []
        clock.advance(60)
        assert await remind_overdue(rt.service, CADENCE, "crisis-cell") == [critical.id]
        assert await remind_overdue(rt.service, CADENCE, "crisis-cell") == []
        await worker.drain()
        [(_, reminder)] = slack.sent[2:]
        assert reminder.address == "C0CRISIS"
        assert reminder.bodies["text"].startswith(
            f"Rappel : aucune mise à jour publiée pour {critical.id}"
        )
        assert "30 min" in reminder.bodies["text"]
        timeline = await rt.store.timeline(critical.id)
        assert (timeline[-1].action, timeline[-1].detail["minutes_since_update"]) == (
            "reminder",
            30,
        )
        # an update resets the cadence; resolving stops it
        await rt.service.update(cell, critical.id, "identified", "Cause identifiée")
        clock.advance(29 * 60)
        assert await remind_overdue(rt.service, CADENCE, "crisis-cell") == []
        await rt.service.resolve(cell, critical.id)
        clock.advance(3600)
        assert await remind_overdue(rt.service, CADENCE, "crisis-cell") == []
