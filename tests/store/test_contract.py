"""One contract suite, run against every store backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import fields, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bot.domain.errors import Conflict, DuplicateRequest
from bot.domain.models import (
    Attempt,
    ChannelName,
    Delivery,
    DeliveryPolicy,
    DeliveryState,
    IncidentStatus,
    NewDelivery,
    Outcome,
    StatementStatus,
    TimelineEntry,
)
from bot.ports import (
    Changes,
    IdempotencyKey,
    IdempotentAnswer,
    Page,
    ProgressMessage,
    SiteQuorum,
    Store,
    StoredSession,
)
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


async def test_a_claimed_delivery_is_the_row_as_read_anywhere_else(store: Store) -> None:
    # The SQL stores build claimed rows without Delivery.__init__ (models.assemble), SQLite
    # from one JSON text per row: every field is there, times to the microsecond.
    changes = f.declaration(0)
    stmt = changes.statements[0]
    due = T0 + timedelta(microseconds=123457)
    changes.deliveries = [
        f.new_delivery(
            stmt,
            "+33612345678",
            ChannelName.SMS,
            contacts={"sms": "+33612345678", "email": "dr.martin@example.org"},
            policy=DeliveryPolicy(require_ack=True, escalate_after_s=600),
            site="Hôpital Nord",
            next_attempt_at=due,
        )
    ]
    await store.commit(changes)
    now = due + timedelta(seconds=1, microseconds=999999)
    [claimed] = await store.claim_due("w1", now, 60.000001, 10)
    assert set(vars(claimed)) == {field.name for field in fields(Delivery)}
    assert claimed == replace(claimed)
    [listed] = await store.deliveries(stmt.incident_id, Page(limit=10))
    assert claimed == listed
    assert claimed.contacts == {"sms": "+33612345678", "email": "dr.martin@example.org"}
    assert claimed.policy.require_ack and claimed.site == "Hôpital Nord"
    assert claimed.lease_until == now + timedelta(seconds=60.000001)
    assert claimed.next_attempt_at == due and claimed.updated_at == now


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
    applied = await store.record(
        [
            Outcome(
                a.id,
                DeliveryState.SENT,
                (Attempt(a.id, T0, "sent", "<m1@x>", None, "250"),),
                lease_owner="w",
            ),
            Outcome(
                b.id,
                DeliveryState.RETRYING,
                (Attempt(b.id, T0, "retry", None, "timeout", None),),
                next_attempt_at=retry_at,
                lease_owner="w",
            ),
            Outcome(
                c.id,
                DeliveryState.FAILED,
                (Attempt(c.id, T0, "failed", None, "550 no", "550"),),
                lease_owner="w",
            ),
        ]
    )
    assert applied == [a.id, b.id, c.id]
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


async def test_a_batch_of_outcomes_is_recorded_exactly(store: Store) -> None:
    # SQLite writes a batch in one statement over JSON: every time to the microsecond, the
    # attempts of one delivery in their order, provider texts as they came.
    await store.commit(f.declaration(2))
    a, b = await store.claim_due("w", T0, 60, 10)
    t1 = T0 + timedelta(seconds=1, microseconds=123457)
    t2 = T0 + timedelta(seconds=2, microseconds=999999)
    retry_at = T0 + timedelta(minutes=5, microseconds=1)
    escalate_at = T0 + timedelta(minutes=10, microseconds=654321)
    error = 'Réponse "502" de l\'hôte\nretry\\later'
    applied = await store.record(
        [
            Outcome(
                a.id,
                DeliveryState.DELIVERED,
                (
                    Attempt(a.id, t1, "retry", None, error, "502"),
                    Attempt(a.id, t2, "delivered", "id-7", None, "200"),
                ),
                escalate_at=escalate_at,
                lease_owner="w",
            ),
            Outcome(
                b.id,
                DeliveryState.RETRYING,
                (Attempt(b.id, t1, "unknown", None, error, None),),
                next_attempt_at=retry_at,
                lease_owner="w",
            ),
        ]
    )
    assert applied == [a.id, b.id]
    attempts = await store.attempts([a.id, b.id])
    assert [(x.at, x.outcome, x.error, x.code) for x in attempts[a.id]] == [
        (t1, "retry", error, "502"),
        (t2, "delivered", None, "200"),
    ]
    assert [(x.at, x.outcome, x.error) for x in attempts[b.id]] == [(t1, "unknown", error)]
    delivered, retrying = await store.get_delivery(a.id), await store.get_delivery(b.id)
    assert delivered is not None and retrying is not None
    assert (delivered.state, delivered.attempts, delivered.provider_id) == (
        DeliveryState.DELIVERED,
        2,
        "id-7",
    )
    assert delivered.escalate_at == escalate_at and delivered.updated_at == t2
    assert (retrying.state, retrying.next_attempt_at, retrying.last_error) == (
        DeliveryState.RETRYING,
        retry_at,
        error,
    )
    assert retrying.unknown_attempts == 1 and retrying.updated_at == t1
    assert await store.claim_due("w2", retry_at - timedelta(microseconds=1), 60, 10) == []
    [due] = await store.claim_due("w2", retry_at, 60, 10)
    assert due.id == b.id


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
    assert await store.record(
        [
            Outcome(
                d.id,
                DeliveryState.FAILED,
                (Attempt(d.id, T0, "failed", error="blocked"),),
                follow_up=follow_up,
                lease_owner="w",
            )
        ]
    ) == [d.id]
    rows = await store.deliveries(stmt.incident_id)
    assert [(r.channel, r.state, r.failover_of) for r in rows] == [
        (ChannelName.TELEGRAM, DeliveryState.FAILED, None),
        (ChannelName.SMS, DeliveryState.QUEUED, d.id),
    ]
    assert rows[1].policy == policy and rows[1].contacts == contacts


async def test_outcome_never_overwrites_acknowledgement(store: Store) -> None:
    await store.commit(f.declaration(1))
    [d] = await store.claim_due("w", T0, 60, 10)
    await store.record(
        [Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, T0, "sent"),), lease_owner="w")]
    )
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
    await store.record(
        [Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, T0, "sent", "p1"),), lease_owner="w")]
    )
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
                lease_owner="w",
            )
        ]
    )
    assert await store.due_escalations(T0 + timedelta(minutes=9), 10) == []
    [due] = await store.due_escalations(T0 + timedelta(minutes=10), 10)
    escalation = f.new_delivery(
        stmt, "+33612345678", ChannelName.SMS, contacts=contacts, escalation_of=d.id, root_id=d.id
    )
    at = T0 + timedelta(minutes=10)
    assert await store.mark_escalated(due.id, escalation, at) is True
    assert await store.mark_escalated(due.id, escalation, at) is False
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
    await store.release([(d.id, later)], "w")
    back = await store.get_delivery(d.id)
    assert back is not None and back.state == DeliveryState.QUEUED and back.attempts == 0
    assert await store.claim_due("w", T0, 60, 10) == []
    assert len(await store.claim_due("w", later, 60, 10)) == 1


async def test_a_release_gives_each_row_back_at_its_own_time(store: Store) -> None:
    await store.commit(f.declaration(3))
    first, second, third = await store.claim_due("w", T0, 60, 10)
    soon, later = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    # ``third`` is given back by a lease that does not hold it: left as it is.
    await store.release([(first.id, soon), (second.id, later)], "w")
    await store.release([(third.id, soon)], "another")
    rows = {r.id: r for r in await store.deliveries(first.incident_id)}
    assert [rows[d.id].state for d in (first, second, third)] == [
        DeliveryState.QUEUED,
        DeliveryState.QUEUED,
        DeliveryState.SENDING,
    ]
    assert [d.id for d in await store.claim_due("w2", soon, 60, 10)] == [first.id]
    assert [d.id for d in await store.claim_due("w2", later, 60, 10)] == [second.id]


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
        [
            Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, T0, "sent"),), lease_owner="w")
            for d in claimed
        ]
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
    await store.record(
        [Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, T0, "sent"),), lease_owner="w")]
    )
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
                lease_owner="w",
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


# --- fencing: only the current lease holder writes ------------------------------------------


async def test_stale_owner_outcome_changes_nothing(store: Store) -> None:
    await store.commit(f.declaration(1))
    [d] = await store.claim_due("w1:1", T0, 60, 10)
    [again] = await store.claim_due("w2:1", T0 + timedelta(seconds=61), 60, 10)
    assert again.id == d.id
    stale = Outcome(
        d.id,
        DeliveryState.FAILED,
        (Attempt(d.id, T0 + timedelta(seconds=62), "failed", error="late"),),
        lease_owner="w1:1",
    )
    unowned = replace(stale, lease_owner=None)
    assert await store.record([stale, unowned]) == []
    row = await store.get_delivery(d.id)
    assert row is not None
    assert (row.state, row.lease_owner, row.attempts) == (DeliveryState.SENDING, "w2:1", 0)
    assert row.lease_until == again.lease_until
    assert (await store.attempts([d.id]))[d.id] == []
    await store.release([(d.id, T0)], "w1:1")  # a stale release is ignored too
    assert await store.claim_due("w3:1", T0 + timedelta(seconds=62), 60, 10) == []
    sent_at = T0 + timedelta(seconds=63)
    assert await store.record(
        [Outcome(d.id, DeliveryState.SENT, (Attempt(d.id, sent_at, "sent"),), lease_owner="w2:1")]
    ) == [d.id]
    row = await store.get_delivery(d.id)
    assert row is not None and (row.state, row.attempts) == (DeliveryState.SENT, 1)
    assert row.updated_at == sent_at  # the worker's clock, not the database's


async def test_renewal_extends_the_lease_and_keeps_the_row(store: Store) -> None:
    await store.commit(f.declaration(2))
    a, b = await store.claim_due("w1:1", T0, 60, 10)
    later = T0 + timedelta(seconds=50)
    assert await store.renew("w1:1", [a.id, b.id], later, 60) == [a.id, b.id]
    renewed = await store.get_delivery(a.id)
    assert renewed is not None and renewed.lease_until == later + timedelta(seconds=60)
    # Past the first lease, the renewed rows are not due to anyone.
    assert await store.claim_due("w2:1", T0 + timedelta(seconds=61), 60, 10) == []
    # Once taken over, a renewal by the old owner keeps nothing and changes nothing.
    [taken, _] = await store.claim_due("w2:1", later + timedelta(seconds=61), 60, 10)
    assert await store.renew("w1:1", [a.id, b.id], later + timedelta(seconds=62), 60) == []
    row = await store.get_delivery(taken.id)
    assert row is not None and row.lease_owner == "w2:1"
    assert row.lease_until == later + timedelta(seconds=121)


async def test_unknown_attempts_are_counted(store: Store) -> None:
    await store.commit(f.declaration(1))
    [d] = await store.claim_due("w", T0, 60, 10)
    assert d.unknown_attempts == 0
    await store.record(
        [
            Outcome(
                d.id,
                DeliveryState.RETRYING,
                (
                    Attempt(d.id, T0, "retry", error="reset"),
                    Attempt(d.id, T0, "unknown", error="timeout after sending"),
                ),
                next_attempt_at=T0 + timedelta(seconds=5),
                lease_owner="w",
            )
        ]
    )
    [again] = await store.claim_due("w:2", T0 + timedelta(seconds=5), 60, 10)
    assert (again.attempts, again.unknown_attempts) == (2, 1)
    assert [a.outcome for a in (await store.attempts([d.id]))[d.id]] == ["retry", "unknown"]


async def test_deliveries_are_created_at_the_time_of_the_change(store: Store) -> None:
    changes = f.declaration(1)
    await store.commit(changes)
    [row] = await store.deliveries("INC-2023-0830-01")
    assert row.created_at == max(e.at for e in changes.timeline)


async def test_address_moves_keep_the_first_time_and_follow_a_second_move(store: Store) -> None:
    assert await store.address_moves() == []
    later = T0 + timedelta(minutes=5)
    await store.note_address_moved("telegram", "-1005", "-1001005", T0)
    await store.note_address_moved("telegram", "-1005", "-1001005", later)  # noted again
    await store.note_address_moved("telegram", "-1007", "-1001007", later)
    assert await store.address_moves() == [
        ("telegram", "-1005", "-1001005", T0),
        ("telegram", "-1007", "-1001007", later),
    ]
    await store.note_address_moved("telegram", "-1007", "-1009", later + timedelta(minutes=1))
    assert (await store.address_moves())[1] == (
        "telegram",
        "-1007",
        "-1009",
        later + timedelta(minutes=1),
    )


# --- coordination between processes (bot/store/sqlcoordination.py) ---------------------
async def test_incident_numbers_are_never_allocated_twice(store: Store) -> None:
    numbers = await asyncio.gather(
        *(store.next_incident_number("INC-2023-0830-") for _ in range(12))
    )
    assert sorted(numbers) == list(range(1, 13))
    # Ids written without the counter (older versions, imports) are never handed out again.
    await store.commit(f.declaration(0, "INC-2023-0830-40"))
    assert await store.next_incident_number("INC-2023-0830-") == 41
    assert await store.next_incident_number("INC-2023-0831-") == 1


def _key(key: str = "k1", request: str = "h1", at: datetime = T0) -> IdempotencyKey:
    return IdempotencyKey("api-client", key, request, at, "INC-2023-0830-01")


async def test_an_idempotency_key_is_committed_with_its_change_once(store: Store) -> None:
    first = f.declaration(1)
    first.idempotency = _key()
    await store.commit(first)
    found = await store.idempotent_answer("api-client", "k1", T0 - timedelta(hours=24))
    assert found == IdempotentAnswer("h1", "INC-2023-0830-01", T0)

    again = f.declaration(1, "INC-2023-0830-02")
    again.idempotency = _key(at=T0 + timedelta(minutes=1))
    with pytest.raises(DuplicateRequest):
        await store.commit(again)
    assert await store.get_incident("INC-2023-0830-02") is None  # nothing of it was written
    assert await store.pending_count() == 1

    await store.save_idempotent_answer("api-client", "k1", 201, '{"id": "INC-2023-0830-01"}')
    found = await store.idempotent_answer("api-client", "k1", T0 - timedelta(hours=24))
    assert (found.status, found.body) == (201, '{"id": "INC-2023-0830-01"}')  # type: ignore[union-attr]
    assert await store.idempotent_answer("other-client", "k1", T0 - timedelta(hours=24)) is None
    assert await store.idempotent_answer("api-client", "k1", T0 + timedelta(seconds=1)) is None

    # 24 hours later the key is free again; the purge forgets expired keys.
    later = f.declaration(0, "INC-2023-0831-01")
    later.idempotency = _key(request="h2", at=T0 + timedelta(hours=25))
    await store.commit(later)
    found = await store.idempotent_answer("api-client", "k1", T0)
    assert found is not None and found.request_hash == "h2"
    assert await store.purge_idempotency_keys(T0 + timedelta(hours=26)) == 1
    assert await store.idempotent_answer("api-client", "k1", T0) is None


async def test_progress_messages_are_kept_and_due_while_behind(store: Store) -> None:
    await store.commit(f.declaration(2))
    done = f.declaration(0, "INC-2023-0829-01")
    done.incident = replace(  # type: ignore[arg-type]
        done.incident, status=IncidentStatus.RESOLVED, resolved_at=T0 - timedelta(hours=3)
    )
    await store.commit(done)
    assert await store.progress_due(T0 - timedelta(hours=1)) == ["INC-2023-0830-01"]
    assert await store.get_progress("INC-2023-0830-01") is None

    message = ProgressMessage("INC-2023-0830-01", "C0CRISIS", "1700.0001", "2 pending", 2)
    await store.save_progress(message)
    assert await store.get_progress("INC-2023-0830-01") == message
    await store.save_progress(replace(message, last_text="done", pending=0))
    assert await store.get_progress("INC-2023-0830-01") == replace(
        message, last_text="done", pending=0
    )
    # Resolved long ago with a final message: no longer looked at.
    await store.save_progress(ProgressMessage("INC-2023-0829-01", "C0CRISIS", "1.2", "x", 1))
    assert await store.progress_due(T0 - timedelta(hours=1)) == [
        "INC-2023-0829-01",
        "INC-2023-0830-01",
    ]
    await store.save_progress(ProgressMessage("INC-2023-0829-01", "C0CRISIS", "1.2", "x", 0))
    assert await store.progress_due(T0 - timedelta(hours=1)) == ["INC-2023-0830-01"]


async def test_site_quorum_counts_confirmations_per_site(store: Store) -> None:
    changes = f.declaration(0)
    changes.incident = replace(changes.incident, audiences=("heads",))  # type: ignore[arg-type]
    stmt = changes.statements[0]

    def to(person: str, site: str) -> NewDelivery:
        return f.new_delivery(
            stmt, f"{person}@example.org", audience="heads", recipient=person, site=site
        )

    changes.deliveries = [
        to("martin", "Nord"),
        to("roux", "Nord"),
        to("diallo", "Sud"),
        to("nguyen", "Nord"),  # a deputy, already reached
        f.new_delivery(stmt, "staff@example.org", site="Sud"),  # another audience
    ]
    await store.commit(changes)
    other = f.declaration(0, "INC-2023-0830-02")  # declared later: not yet due
    other.incident = replace(other.incident, created_at=T0 + timedelta(minutes=30))  # type: ignore[arg-type]
    other.deliveries = [
        f.new_delivery(other.statements[0], "x@example.org", audience="heads", site="Sud")
    ]
    await store.commit(other)
    by_address = {d.address: d for d in await store.deliveries("INC-2023-0830-01")}
    for person in ("martin", "roux", "nguyen"):
        delivery = by_address[f"{person}@example.org"]
        await store.claim_due("w", T0, 60, 10)
        await store.record([Outcome(delivery.id, DeliveryState.SENT, (), lease_owner="w")])
        assert await store.acknowledge(delivery.id, person, T0 + timedelta(minutes=1))

    found = await store.site_quorum("heads", ["nguyen", "lefebvre"], T0 + timedelta(minutes=10))
    assert found == [
        SiteQuorum("INC-2023-0830-01", "Nord", 2, True),
        SiteQuorum("INC-2023-0830-01", "Sud", 0, False),
    ]
    await store.commit(
        Changes(
            timeline=[
                TimelineEntry(
                    "INC-2023-0830-01", 2, T0, "tocsin", "site_escalated", {"site": "Sud"}
                ),
                TimelineEntry(
                    "INC-2023-0830-01", 3, T0, "tocsin", "site_escalated", {"site": "Est"}
                ),
            ]
        )
    )
    found = await store.site_quorum("heads", [], T0 + timedelta(hours=1))
    assert found == [
        SiteQuorum("INC-2023-0830-01", "Est", 0, True),
        SiteQuorum("INC-2023-0830-01", "Nord", 3, False),
        SiteQuorum("INC-2023-0830-01", "Sud", 0, True),
        SiteQuorum("INC-2023-0830-02", "Sud", 0, False),
    ]
    resolved = replace(changes.incident, status=IncidentStatus.RESOLVED)  # type: ignore[arg-type]
    await store.commit(Changes(incident=resolved))
    assert [
        q.incident_id for q in await store.site_quorum("heads", [], T0 + timedelta(hours=1))
    ] == ["INC-2023-0830-02"]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def two_processes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store, str]]:
    """Two stores on one database, as two processes hold them (memory: one process)."""
    async with AsyncExitStack() as stack:
        stores: list[Store] = []
        if request.param == "memory":
            stores = [MemoryStore()] * 2
        elif request.param == "sqlite":
            stores = [SqliteStore(str(tmp_path / "tocsin.db")) for _ in range(2)]
        else:
            url = await stack.enter_async_context(pg_database())
            stores = [PostgresStore(url) for _ in range(2)]
        for backend in stores:
            await backend.open()
            stack.push_async_callback(backend.close)
            await backend.migrate()
        yield stores[0], stores[1], request.param


async def test_one_leader_at_a_time(two_processes: tuple[Store, Store, str]) -> None:
    first, second, backend = two_processes
    assert await first.try_lead("scheduler", "a", T0, 10)
    assert not await second.try_lead("scheduler", "b", T0, 10)
    assert await first.try_lead("scheduler", "a", T0 + timedelta(seconds=5), 10)  # renewed
    assert not await second.try_lead("scheduler", "b", T0 + timedelta(seconds=12), 10)
    assert await second.try_lead("other", "b", T0, 10)  # leaders of other names are apart
    await first.resign("scheduler", "a")
    assert await second.try_lead("scheduler", "b", T0 + timedelta(seconds=13), 10)
    assert not await first.try_lead("scheduler", "a", T0 + timedelta(seconds=14), 10)
    # The leader dies without resigning: the other takes over (PostgreSQL: at once, the lock
    # goes with its session; elsewhere: once its lease has run out).
    if backend == "postgres":
        await second.close()
        assert await first.try_lead("scheduler", "a", T0 + timedelta(seconds=15), 10)
    else:
        assert not await first.try_lead("scheduler", "a", T0 + timedelta(seconds=20), 10)
        assert await first.try_lead("scheduler", "a", T0 + timedelta(seconds=24), 10)


async def test_urgent_deliveries_are_claimed_before_earlier_normal_ones(store: Store) -> None:
    changes = f.declaration(0)
    stmt = changes.statements[0]
    public = [
        f.new_delivery(stmt, f"http://public/{i}", ChannelName.WEBHOOK, next_attempt_at=T0)
        for i in range(5)
    ]
    heads = [
        f.new_delivery(
            stmt,
            f"head{i}@example.org",
            audience="department-heads",
            next_attempt_at=T0 + timedelta(seconds=10),
            lane=0,
        )
        for i in range(3)
    ]
    not_yet = f.new_delivery(stmt, "later@example.org", next_attempt_at=T0 + timedelta(hours=1))
    changes.deliveries = [*public, *heads, replace(not_yet, lane=0)]
    await store.commit(changes)

    first = await store.claim_due("w1", T0 + timedelta(seconds=20), 60, 4)
    rest = await store.claim_due("w1", T0 + timedelta(seconds=20), 60, 10)

    assert sorted(d.address for d in first if d.lane == 0) == [
        "head0@example.org",
        "head1@example.org",
        "head2@example.org",
    ]
    assert [d.address for d in first if d.lane == 1] == ["http://public/0"]
    assert sorted(d.address for d in rest) == [f"http://public/{i}" for i in range(1, 5)]


async def test_a_follow_up_keeps_its_lane(store: Store) -> None:
    changes = f.declaration(0)
    stmt = changes.statements[0]
    changes.deliveries = [f.new_delivery(stmt, "head@example.org", lane=0)]
    await store.commit(changes)
    [claimed] = await store.claim_due("w1", T0, 60, 10)
    assert claimed.lane == 0
    follow_up = f.new_delivery(stmt, "+33612345678", ChannelName.SMS, lane=claimed.lane)
    await store.record(
        [
            Outcome(
                claimed.id,
                DeliveryState.FAILED,
                (Attempt(claimed.id, T0, "failed", error="550"),),
                follow_up=follow_up,
                lease_owner=claimed.lease_owner,
            )
        ]
    )
    [again] = await store.claim_due("w1", T0, 60, 10)
    assert (again.address, again.lane) == ("+33612345678", 0)


async def test_tokens_are_shared_up_to_the_burst_then_refill_at_the_rate(store: Store) -> None:
    now = T0.timestamp()
    assert await store.take_tokens("provider:webhook", 10.0, 5, 3, now) == (3, 0.0)
    assert await store.take_tokens("provider:webhook", 10.0, 5, 3, now) == (2, 0.0)  # all left
    granted, wait = await store.take_tokens("provider:webhook", 10.0, 5, 3, now)
    assert (granted, round(wait, 6)) == (0, 0.1)
    # Another key is another bucket; it starts full.
    assert await store.take_tokens("dest:webhook:http://one", 1.0, 2, 5, now) == (2, 0.0)
    # Refill: 0.35 s at 10/s is 3.5 tokens.
    assert await store.take_tokens("provider:webhook", 10.0, 5, 3, now + 0.35) == (3, 0.0)
    granted, wait = await store.take_tokens("provider:webhook", 10.0, 5, 3, now + 0.35)
    assert (granted, round(wait, 6)) == (0, 0.05)
    # Never more than the burst, however long the bucket was idle.
    assert await store.take_tokens("provider:webhook", 10.0, 5, 9, now + 3600) == (5, 0.0)


async def test_a_paused_bucket_grants_nothing_until_the_pause_ends(store: Store) -> None:
    now = T0.timestamp()
    assert await store.take_tokens("provider:slack", 10.0, 5, 1, now) == (1, 0.0)
    await store.pause_bucket("provider:slack", now + 30)
    await store.pause_bucket("provider:slack", now + 5)  # an earlier end never shortens it
    granted, wait = await store.take_tokens("provider:slack", 10.0, 5, 1, now + 10)
    assert (granted, round(wait, 6)) == (0, 20.0)
    # After the pause the bucket refills from empty.
    granted, wait = await store.take_tokens("provider:slack", 10.0, 5, 1, now + 30)
    assert (granted, round(wait, 6)) == (0, 0.1)
    assert await store.take_tokens("provider:slack", 10.0, 5, 1, now + 30.11) == (1, 0.0)
    # A pause of a key never used before holds too.
    await store.pause_bucket("dest:slack:C0CRISIS", now + 2)
    granted, wait = await store.take_tokens("dest:slack:C0CRISIS", 1.0, 3, 1, now)
    assert (granted, round(wait, 6)) == (0, 2.0)


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
