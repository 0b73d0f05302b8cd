"""Unknown-outcome drill: a real ``tocsin worker`` posting to a Slack that takes the message
and then answers too late.

The Slack Web API stand-in runs in the test; the worker's ``channels.slack.api_url`` points at
it with a short ``channels.slack.timeout``. The first ``chat.postMessage`` is taken (the
message is in the channel) and its answer held past the worker's timeout: the worker cannot
know whether Slack has it. The next attempt must find it by its metadata in the channel's
history instead of posting again: one message in the channel, the delivery ``delivered``, its
attempts ``unknown`` then the reconciled success.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.domain.models import ChannelName, DeliveryState
from bot.ports import Store
from bot.store import open_store
from tests import factories
from tests.drills import WorkerProcess, wait_until, write_config
from tocsin_sandbox.slack_api import SlackSandbox

INCIDENT = "INC-2023-0830-01"
TOKEN = "xoxb-drill-token"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    backend = open_store(f"sqlite:///{tmp_path / 'queue.db'}")
    await backend.open()
    try:
        await backend.migrate()
        yield backend
    finally:
        await backend.close()


async def test_a_slack_post_answered_too_late_is_reconciled_not_sent_twice(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changes = factories.declaration(0, INCIDENT)
    statement = changes.statements[0]
    changes.deliveries = [
        factories.new_delivery(statement, "C0CRISIS", ChannelName.SLACK, audience="crisis-cell"),
        factories.new_delivery(statement, "C0STAFF", ChannelName.SLACK, audience="all-staff"),
    ]
    await store.commit(changes)
    monkeypatch.setenv("DRILL_SLACK_TOKEN", TOKEN)
    async with SlackSandbox(token=TOKEN) as slack:
        slack.hold_after_post("C0CRISIS", seconds=30)
        config = write_config(
            tmp_path,
            f"sqlite:///{tmp_path / 'queue.db'}",
            extra={
                "channels": {
                    "slack": {
                        "api_url": slack.api_url,
                        "bot_token_env": "DRILL_SLACK_TOKEN",
                        "timeout": 1.0,
                    }
                },
                # The second attempt comes a fraction of a second after the first.
                "delivery": {
                    "lease_seconds": 10,
                    "poll_interval": 0.1,
                    "backoff_base": 0.1,
                    "shutdown_timeout": 2,
                },
            },
        )
        worker = WorkerProcess(config, tmp_path / "worker.log").start()
        try:

            async def settled() -> bool:
                rows = await store.deliveries(INCIDENT)
                return all(d.state == DeliveryState.DELIVERED for d in rows)

            await wait_until(settled, "both Slack deliveries delivered", timeout=30)
        finally:
            worker.stop()
            worker.close()

        assert len(slack.messages_in("C0CRISIS")) == 1, worker.log_tail()
        assert len(slack.messages_in("C0STAFF")) == 1
        assert len(slack.calls_to("chat.postMessage")) == 2
        assert [c.args["channel"] for c in slack.calls_to("conversations.history")] == ["C0CRISIS"]
    rows = {d.address: d for d in await store.deliveries(INCIDENT)}
    attempts = await store.attempts([d.id for d in rows.values()])
    crisis = rows["C0CRISIS"]
    [message] = slack.messages_in("C0CRISIS")
    assert [(a.outcome, a.code) for a in attempts[crisis.id]] == [
        ("unknown", None),
        ("delivered", "reconciled"),
    ]
    assert attempts[crisis.id][-1].provider_id == f"C0CRISIS:{message.ts}"
    assert [a.outcome for a in attempts[rows["C0STAFF"].id]] == ["delivered"]
    assert worker.errors() == []
