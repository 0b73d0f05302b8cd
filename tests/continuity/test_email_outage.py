"""The organisation's own e-mail goes down mid fan-out (a real SMTP server is stopped):
people move to their other channels, lists wait and resume, nothing is lost or doubled."""

from __future__ import annotations

from collections import Counter

from bot.channels.email import EmailChannel
from bot.config import EmailChannelSettings
from bot.delivery.retry import RetryPolicy
from bot.delivery.worker import DispatchConfig, Dispatcher
from bot.domain.clock import FakeClock
from bot.domain.models import ChannelName, DeliveryPolicy, DeliveryState, StatementKind
from bot.store.memory import MemoryStore
from tests import factories as f
from tests.fakes.channels import RecordingChannel
from tocsin_sandbox.smtp import SandboxSmtp

POLICY = DeliveryPolicy(
    channels=(ChannelName.EMAIL, ChannelName.SMS), kind=StatementKind.DEPARTMENT_HEADS
)


def people_and_lists(stmt_id: str, count: int, start: int) -> list:
    stmt = f.statement(id=stmt_id)
    rows = [
        f.new_delivery(
            stmt,
            f"head{i}@example.org",
            ChannelName.EMAIL,
            audience="department-heads",
            recipient=f"Dr {i}",
            policy=POLICY,
            contacts={"email": f"head{i}@example.org", "sms": f"+336123456{i:02d}"},
        )
        for i in range(start, start + count)
    ]
    rows += [
        f.new_delivery(stmt, f"list{i}@example.org", ChannelName.EMAIL, audience="all-staff")
        for i in range(start, start + 2)
    ]
    return rows


async def test_smtp_outage_reroutes_people_and_holds_lists() -> None:
    store, clock = MemoryStore(), FakeClock()
    changes = f.declaration(0)
    stmt = changes.statements[0]
    sms_stmt = f.statement(kind=StatementKind.SMS, bodies={"sms": "Orbis HS"})
    heads = f.statement(kind=StatementKind.DEPARTMENT_HEADS, id="stm-heads")
    changes.statements += [sms_stmt, heads]
    changes.deliveries = people_and_lists(heads.id, 4, 0)
    await store.commit(changes)
    async with SandboxSmtp() as smtp:
        provider = f"smtp:{smtp.host}:{smtp.port}"
        email = EmailChannel(EmailChannelSettings(host=smtp.host, port=smtp.port, timeout=2))
        sms = RecordingChannel(ChannelName.SMS)
        worker = Dispatcher(
            store,
            {ChannelName.EMAIL: email, ChannelName.SMS: sms},
            clock,
            worker_id="w",
            config=DispatchConfig(concurrency=1, breaker_threshold=3, breaker_cooldown=30),
            retry=RetryPolicy(quick_tries=1, jitter=lambda: 1.0),
        )
        notes: list[tuple[str, str, dict]] = []

        async def note(incident: str, action: str, detail: dict) -> None:
            notes.append((incident, action, detail))

        worker.timeline_note = note
        await worker.drain()
        assert len(smtp.messages) == 6  # the first wave went out by e-mail

        await smtp.stop()  # e-mail is down from here
        await store.commit(type(changes)(deliveries=people_and_lists(heads.id, 8, 10)))
        await worker.drain()
        rows = await store.deliveries(stmt.incident_id)
        second = [d for d in rows if d.id > 6]
        states = Counter((d.audience, d.channel.value, d.state.value) for d in second)
        # three transport failures opened the breaker; everything after it moved at once
        assert states[("department-heads", "sms", "delivered")] == 8 - 3 + 0
        assert states[("all-staff", "email", "queued")] == 2  # blocked, not failed
        assert states[("department-heads", "email", "retrying")] == 3
        assert {m.address for _, m in sms.sent} == {f"+336123456{i:02d}" for i in range(13, 18)}
        assert all(m.bodies["sms"] == "Orbis HS" for _, m in sms.sent)
        [(_, action, detail)] = notes
        assert action == "channel_down" and detail["rerouted_to"] == ["sms"]
        health = await store.channel_health()
        assert [(name, state) for name, state, _, _ in health] == [(provider, "down")]

        # The three that failed come round again while e-mail is still down: re-routed too.
        clock.advance(20)
        await worker.drain()
        assert len(sms.sent) == 8

        await smtp.start()  # e-mail is back on the same port
        clock.advance(31)
        await worker.drain()
        await email.close()
    assert [(a, d.get("count")) for _, a, d in notes] == [("channel_down", None), ("rerouted", 8)]
    rows = await store.deliveries(stmt.incident_id)
    lists = [d for d in rows if d.audience == "all-staff"]
    assert {d.state for d in lists} == {DeliveryState.SENT}
    # nothing lost: every person reached once, on exactly one channel that worked
    reached = Counter(
        d.recipient for d in rows if d.state in (DeliveryState.SENT, DeliveryState.DELIVERED)
    )
    assert set(reached.values()) == {1} and len(reached) == 12 + 4
    assert [(n, s) for n, s, _, _ in await store.channel_health()] == [(provider, "up")]
