"""One contract suite, run against every store backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from bot.domain.errors import Conflict
from bot.domain.models import (
    Attempt,
    ChannelName,
    DeliveryPolicy,
    DeliveryState,
    Outcome,
    StatementStatus,
    TimelineEntry,
)
from bot.ports import Changes, Page, Store, StoredSession
from bot.store.memory import MemoryStore
from bot.store.postgres import PostgresStore
from bot.store.sqlite import SqliteStore
from tests import factories as f
from tests.conftest import pg_database

T0 = f.T0


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with AsyncExitStack() as stack:
        backend: Store
        if request.param == "memory":
            backend = MemoryStore()
        elif request.param == "sqlite":
            backend = SqliteStore(str(tmp_path / "tocsin.db"))
        else:
            backend = PostgresStore(await stack.enter_async_context(pg_database()))
        await backend.open()
        stack.push_async_callback(backend.close)
        await backend.migrate()
        yield backend


async def test_commit_is_readable_back(store: Store) -> None:
    changes = f.declaration(3)
    await store.commit(changes)
    incident = await store.get_incident("INC-2023-0830-01")
    assert incident == changes.incident
    assert await store.timeline("INC-2023-0830-01") == changes.timeline
    assert await store.statements("INC-2023-0830-01") == changes.statements
    rows = await store.deliveries("INC-2023-0830-01")
    assert [d.address for d in rows] == [
        "list0@example.org",
        "list1@example.org",
        "list2@example.org",
    ]
    assert {d.state for d in rows} == {DeliveryState.QUEUED}
    assert await store.delivery_counts("INC-2023-0830-01") == {"queued": 3}
    assert await store.pending_count("INC-2023-0830-01") == 3


async def test_commit_is_atomic(store: Store) -> None:
    await store.commit(f.declaration(1))
    clash = f.declaration(2)  # same incident id: the whole change must be refused
    clash.incident = replace(clash.incident, title="other")  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        await store.commit(clash)
    assert (await store.get_incident("INC-2023-0830-01")).title == "Orbis indisponible"  # type: ignore[union-attr]
    assert len(await store.deliveries("INC-2023-0830-01")) == 1


async def test_incident_numbers_and_paging(store: Store) -> None:
    assert await store.next_incident_number("INC-2023-0830-") == 1
    await store.commit(f.declaration(0, "INC-2023-0830-01"))
    later = f.declaration(0, "INC-2023-0830-02")
    later.incident = replace(later.incident, created_at=T0 + timedelta(hours=1))  # type: ignore[arg-type]
    await store.commit(later)
    assert await store.next_incident_number("INC-2023-0830-") == 3
    listed = await store.list_incidents(Page(limit=1, offset=0))
    assert [i.id for i in listed] == ["INC-2023-0830-02"]
    assert [i.id for i in await store.list_incidents(Page(limit=5, offset=1))] == [
        "INC-2023-0830-01"
    ]


async def test_claim_leases_each_row_once(store: Store) -> None:
    await store.commit(f.declaration(5))
    first = await store.claim_due("w1", T0, 60, 3)
    second = await store.claim_due("w2", T0, 60, 10)
    assert len(first) == 3 and len(second) == 2
    assert not {d.id for d in first} & {d.id for d in second}
    assert all(d.state == DeliveryState.SENDING and d.lease_owner == "w1" for d in first)
    assert await store.claim_due("w3", T0, 60, 10) == []


async def test_expired_lease_is_claimed_again(store: Store) -> None:
    await store.commit(f.declaration(1))
    [claimed] = await store.claim_due("crashed", T0, 60, 10)
    assert await store.claim_due("w2", T0 + timedelta(seconds=59), 60, 10) == []
    [again] = await store.claim_due("w2", T0 + timedelta(seconds=61), 60, 10)
    assert again.id == claimed.id and again.lease_owner == "w2"


async def test_not_yet_due_is_not_claimed(store: Store) -> None:
    changes = f.declaration(0)
    stmt = changes.statements[0]
    changes.deliveries = [f.new_delivery(stmt, next_attempt_at=T0 + timedelta(minutes=5))]
    await store.commit(changes)
    assert await store.claim_due("w", T0, 60, 10) == []
    assert len(await store.claim_due("w", T0 + timedelta(minutes=5), 60, 10)) == 1


async def test_record_outcomes_and_attempts(store: Store) -> None:
    await store.commit(f.declaration(3))
    a, b, c = await store.claim_due("w", T0, 60, 10)
    retry_at = T0 + timedelta(seconds=30)
    follow = await store.record(
        [
            Outcome(a.id, DeliveryState.SENT, (Attempt(a.id, T0, "sent", "<m1@x>", None, "250"),)),
            Outcome(
                b.id,
                DeliveryState.RETRYING,
                (Attempt(b.id, T0, "retry", None, "timeout", None),),
                next_attempt_at=retry_at,
            ),
            Outcome(
                c.id, DeliveryState.FAILED, (Attempt(c.id, T0, "failed", None, "550 no", "550"),)
            ),
        ]
    )
    assert follow == 0
    sent = await store.get_delivery(a.id)
    assert sent is not None and sent.state == DeliveryState.SENT
    assert sent.provider_id == "<m1@x>" and sent.attempts == 1 and sent.lease_owner is None
    retrying = await store.get_delivery(b.id)
    assert retrying is not None and retrying.state == DeliveryState.RETRYING
    assert retrying.next_attempt_at == retry_at and retrying.last_error == "timeout"
    failed = await store.get_delivery(c.id)
    assert failed is not None and failed.state == DeliveryState.FAILED
    attempts = await store.attempts([a.id, b.id, c.id])
    assert [x.outcome for x in attempts[a.id]] == ["sent"]
    assert attempts[c.id][0].code == "550"
    assert await store.claim_due("w", T0 + timedelta(seconds=29), 60, 10) == []
    [due] = await store.claim_due("w", retry_at, 60, 10)
    assert due.id == b.id
    assert await store.find_by_provider_id("email", "<m1@x>") == sent


async def test_failover_follow_up_is_queued(store: Store) -> None:
    changes = f.declaration(0)
    stmt = changes.statements[0]
    contacts = {"telegram": "1001", "sms": "+33612345678"}
    policy = DeliveryPolicy(channels=(ChannelName.TELEGRAM, ChannelName.SMS))
    changes.deliveries = [
        f.new_delivery(stmt, "1001", ChannelName.TELEGRAM, contacts=contacts, policy=policy)
    ]
    await store.commit(changes)
    [d] = await store.claim_due("w", T0, 60, 10)
    follow_up = f.new_delivery(
        stmt,
        "+33612345678",
        ChannelName.SMS,
        contacts=contacts,
        policy=policy,
        failover_of=d.id,
        root_id=d.id,
    )
    assert (
        await store.record(
            [
                Outcome(
                    d.id,
                    DeliveryState.FAILED,
                    (Attempt(d.id, T0, "failed", error="blocked"),),
                    follow_up=follow_up,
                )
            ]
        )
        == 1
    )
    rows = await store.deliveries(stmt.incident_id)
    assert [(r.channel, r.state, r.failover_of) for r in rows] == [
        (ChannelName.TELEGRAM, DeliveryState.FAILED, None),
        (ChannelName.SMS, DeliveryState.QUEUED, d.id),
    ]
    assert rows[1].policy == policy and rows[1].contacts == contacts


async def test_outcome_never_overwrites_acknowledgement(store: Store) -> None:
    await store.commit(f.declaration(1))
    [d] = await store.claim_due("w", T0, 60, 10)
    await store.record([Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, T0, "sent"),))])
    assert await store.advance(d.id, DeliveryState.DELIVERED, "dlr", T0) is True
    # Reports out of order: an older "sent"/SMSC-accepted report never moves it back.
    assert await store.advance(d.id, DeliveryState.SENT, "dlr", T0) is False
    assert await store.acknowledge(d.id, "Dr Martin", T0) is True
    assert await store.acknowledge(d.id, "Dr Martin", T0) is False
    assert await store.advance(d.id, DeliveryState.DELIVERED, "dlr", T0) is False
    final = await store.get_delivery(d.id)
    assert final is not None and final.state == DeliveryState.ACKNOWLEDGED
    assert final.acknowledged_by == "Dr Martin"


async def test_report_arriving_before_the_send_is_recorded(store: Store) -> None:
    await store.commit(f.declaration(1))
    [d] = await store.claim_due("w", T0, 60, 10)
    assert await store.advance(d.id, DeliveryState.DELIVERED, "dlr", T0) is True
    await store.record([Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, T0, "sent", "p1"),))])
    final = await store.get_delivery(d.id)
    assert final is not None and final.state == DeliveryState.DELIVERED
    assert final.provider_id == "p1" and final.lease_owner is None


async def test_acknowledging_settles_the_chain(store: Store) -> None:
    changes = f.declaration(0)
    stmt = changes.statements[0]
    contacts = {"telegram": "1001", "sms": "+33612345678"}
    changes.deliveries = [f.new_delivery(stmt, "1001", ChannelName.TELEGRAM, contacts=contacts)]
    await store.commit(changes)
    [d] = await store.claim_due("w", T0, 60, 10)
    await store.record(
        [
            Outcome(
                d.id,
                DeliveryState.SENT,
                (Attempt(d.id, T0, "sent"),),
                escalate_at=T0 + timedelta(minutes=10),
            )
        ]
    )
    assert await store.due_escalations(T0 + timedelta(minutes=9), 10) == []
    [due] = await store.due_escalations(T0 + timedelta(minutes=10), 10)
    escalation = f.new_delivery(
        stmt, "+33612345678", ChannelName.SMS, contacts=contacts, escalation_of=d.id, root_id=d.id
    )
    assert await store.mark_escalated(due.id, escalation) is True
    assert await store.mark_escalated(due.id, escalation) is False
    assert await store.due_escalations(T0 + timedelta(hours=1), 10) == []
    found = await store.find_by_ack_token(d.ack_token)
    assert found is not None and found.id == d.id
    await store.acknowledge(d.id, "Dr Martin", T0)
    rows = await store.deliveries(stmt.incident_id)
    assert [r.state for r in rows] == [DeliveryState.ACKNOWLEDGED, DeliveryState.CANCELLED]


async def test_release_does_not_count_an_attempt(store: Store) -> None:
    await store.commit(f.declaration(1))
    [d] = await store.claim_due("w", T0, 60, 10)
    later = T0 + timedelta(seconds=5)
    await store.release([d.id], "w", later)
    back = await store.get_delivery(d.id)
    assert back is not None and back.state == DeliveryState.QUEUED and back.attempts == 0
    assert await store.claim_due("w", T0, 60, 10) == []
    assert len(await store.claim_due("w", later, 60, 10)) == 1


async def test_latest_pending_acknowledgement_by_address(store: Store) -> None:
    changes = f.declaration(0)
    stmt = changes.statements[0]
    policy = DeliveryPolicy(channels=(ChannelName.SMS,), require_ack=True)
    changes.deliveries = [
        f.new_delivery(
            stmt, "+33612345678", ChannelName.SMS, policy=policy, contacts={"sms": "+33612345678"}
        )
        for _ in range(2)
    ]
    await store.commit(changes)
    claimed = await store.claim_due("w", T0, 60, 10)
    await store.record(
        [Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, T0, "sent"),)) for d in claimed]
    )
    latest = await store.latest_ack_pending("sms", "+33612345678")
    assert latest is not None and latest.id == max(d.id for d in claimed)
    assert await store.latest_ack_pending("sms", "+33600000000") is None


async def test_statement_versions(store: Store) -> None:
    changes = f.declaration(0)
    await store.commit(changes)
    old = changes.statements[0]
    new = replace(old, id="stm-new", version=2, author="press2", status=StatementStatus.DRAFT)
    await store.commit(
        Changes(
            statements=[new],
            statement_updates=[replace(old, status=StatementStatus.SUPERSEDED)],
            timeline=[TimelineEntry(old.incident_id, 2, T0, "press2", "statement_edited", {})],
        )
    )
    got = {s.id: s for s in await store.statements(old.incident_id)}
    assert got[old.id].status == StatementStatus.SUPERSEDED
    assert got["stm-new"].version == 2
    assert await store.get_statements(["stm-new", "missing"]) == [new]


async def test_matrix_counts_by_audience_channel_state(store: Store) -> None:
    await store.commit(f.declaration(3))
    [d, *_] = await store.claim_due("w", T0, 60, 1)
    await store.record([Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, T0, "sent"),))])
    assert await store.delivery_matrix("INC-2023-0830-01") == [
        ("all-staff", "email", "queued", 2),
        ("all-staff", "email", "sent", 1),
    ]


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


async def test_chain_channels(store: Store) -> None:
    changes = f.declaration(0)
    stmt = changes.statements[0]
    contacts = {"telegram": "1001", "sms": "+33612345678"}
    changes.deliveries = [f.new_delivery(stmt, "1001", ChannelName.TELEGRAM, contacts=contacts)]
    await store.commit(changes)
    [d] = await store.claim_due("w", T0, 60, 10)
    await store.record(
        [
            Outcome(
                d.id,
                DeliveryState.FAILED,
                (Attempt(d.id, T0, "failed"),),
                follow_up=f.new_delivery(
                    stmt,
                    "+33612345678",
                    ChannelName.SMS,
                    contacts=contacts,
                    failover_of=d.id,
                    root_id=d.id,
                ),
            )
        ]
    )
    assert await store.chain_channels(d.id) == {"telegram", "sms"}


async def test_channel_health_is_kept(store: Store) -> None:
    assert await store.channel_health() == []
    await store.save_health("smtp:127.0.0.1:25", "down", T0, "connection refused")
    await store.save_health("smtp:127.0.0.1:25", "up", T0 + timedelta(seconds=5), None)
    assert await store.channel_health() == [
        ("smtp:127.0.0.1:25", "up", T0 + timedelta(seconds=5), None)
    ]


async def test_an_inbound_reply_is_remembered_once(store: Store) -> None:
    assert await store.remember_inbound("twilio:SM1", f.T0) is True
    assert await store.remember_inbound("twilio:SM1", f.T0 + timedelta(seconds=5)) is False
    assert await store.remember_inbound("twilio:SM2", f.T0) is True


async def test_a_dashboard_session_is_kept_and_revoked(store: Store) -> None:
    session = StoredSession("d1", "press-a", "csrf-1", f.T0, f.T0 + timedelta(hours=12))
    assert await store.find_session("d1") is None
    await store.open_session(session)
    assert await store.find_session("d1") == session
    await store.revoke_session("d1", f.T0 + timedelta(minutes=5))
    await store.revoke_session("d1", f.T0 + timedelta(minutes=9))  # revoking again: no change
    revoked = await store.find_session("d1")
    assert revoked == replace(session, revoked_at=f.T0 + timedelta(minutes=5))
