"""Fencing drills: sends that outlive their lease, and a worker paused past its lease.

Real ``tocsin worker`` processes, real SMTP and HTTP, SQLite and PostgreSQL. What is proved:
a lease is renewed while its send runs, so a slow send is never started a second time; and a
worker that lost its lease (paused with SIGSTOP until another worker took its rows over)
neither sends those rows again nor overwrites the new holder's outcome when it resumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from aiohttp import web

from bot.domain.models import ChannelName, DeliveryState
from bot.ports import Page, Store
from tests import factories
from tests.drills import WorkerProcess, fan_out, wait_until, write_config
from tocsin_sandbox.smtp import SandboxSmtp

INCIDENT = "INC-2023-0830-01"


async def test_slow_smtp_outliving_the_lease_sends_each_mail_once(
    tmp_path: Path, storage_url: str, store: Store
) -> None:
    """12 e-mails queue behind one SMTP connection that takes 0.7 s per message: the last one
    is sent ~8 s after its claim, four leases (2 s) later. The worker renews its leases while
    the sends wait, so no row becomes due again: 12 e-mails, one attempt each."""
    recipients = 12
    changes = factories.declaration(0)
    statement = changes.statements[0]
    changes.deliveries = [
        factories.new_delivery(statement, f"person{i}@example.org", ChannelName.EMAIL)
        for i in range(recipients)
    ]
    async with SandboxSmtp(message_delay=0.7) as smtp:
        config = write_config(
            tmp_path,
            storage_url,
            lease_seconds=2,
            extra={
                "channels": {
                    "email": {
                        "host": "127.0.0.1",
                        "port": smtp.port,
                        "from": "cellule-crise@example.org",
                        "timeout": 10,
                    }
                }
            },
        )
        worker = WorkerProcess(config, tmp_path / "worker.log").start()
        try:
            await store.commit(changes)

            owners: dict[int, set[str]] = {}  # every lease token seen on each row
            renewed: set[int] = set()  # rows seen with their lease extended, same token
            seen: dict[tuple[int, str], float] = {}

            async def all_sent() -> bool:
                assert worker.running(), worker.log_tail()
                for d in await store.deliveries(INCIDENT):
                    if d.lease_owner is None or d.lease_until is None:
                        continue
                    owners.setdefault(d.id, set()).add(d.lease_owner)
                    until = d.lease_until.timestamp()
                    if until > seen.setdefault((d.id, d.lease_owner), until):
                        renewed.add(d.id)
                return await store.pending_count(INCIDENT) == 0

            await wait_until(all_sent, "every e-mail to be sent", 20, every=0.1)
            assert worker.stop() == 0, worker.log_tail()
        finally:
            worker.close()
        received = smtp.messages
    rows = await store.deliveries(INCIDENT)
    attempts = await store.attempts([d.id for d in rows])
    sent_ids = sorted(int(m.message["X-Tocsin-Delivery"]) for m in received)
    assert sent_ids == sorted(d.id for d in rows), "an e-mail was sent twice or not at all"
    # Each row was claimed once and kept by renewal (the last ones for ~4 leases).
    assert all(len(tokens) == 1 for tokens in owners.values()), owners
    assert len(renewed) >= recipients // 2, f"renewals seen on {len(renewed)} rows"
    assert {(d.state, d.attempts) for d in rows} == {(DeliveryState.SENT, 1)}
    assert {i: [a.outcome for a in found] for i, found in attempts.items()} == {
        d.id: ["sent"] for d in rows
    }
    assert worker.errors() == [], worker.log_tail()


class HoldingProvider:
    """A webhook provider on 127.0.0.1 that records each request's ``delivery_id`` when it
    arrives and, for the first ``hold`` requests, answers only when :meth:`release` is called
    (those answers carry a ``stale-…`` id; the others a ``fresh-…`` one)."""

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.arrived: list[int] = []
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def release(self) -> None:
        self._released.set()

    async def _receive(self, request: web.Request) -> web.Response:
        delivery_id = int(json.loads(await request.read())["delivery_id"])
        self.arrived.append(delivery_id)
        if len(self.arrived) <= self.hold:
            await self._released.wait()
            return web.json_response({"ok": True, "id": f"stale-{delivery_id}"})
        return web.json_response({"ok": True, "id": f"fresh-{delivery_id}"})

    async def __aenter__(self) -> HoldingProvider:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._receive)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()


def _warnings(worker: WorkerProcess, text: str) -> int:
    return sum(text in line for line in worker.log_path.read_text(encoding="utf-8").splitlines())


async def test_worker_paused_past_its_lease_neither_resends_nor_overwrites(
    tmp_path: Path, storage_url: str, store: Store
) -> None:
    """Worker A (concurrency 4, lease 2 s) sends 4 of 12 webhooks; the provider holds those 4
    requests unanswered, and A is frozen with SIGSTOP while they are on the wire. Worker B
    sends the other 8 at once and, when A's lease has expired, takes A's 4 rows over and sends
    them again — a send already on the wire cannot be recalled, so the provider sees exactly
    those 4 twice. Then the provider answers A's 4 held requests and A resumes with SIGCONT.

    Observable guarantee: the provider took 12 + 4 requests (the duplicates are exactly the
    sends that were on the wire when A stopped, and A sends nothing after it resumes); every
    delivery ends ``delivered`` with B's answer (``fresh-…``) and exactly one attempt. A's
    sends are stopped when it sees its lease lapsed (or, had they finished first, their
    outcomes would be dropped by fencing): nothing of A's is written over B's.
    """
    deliveries, on_the_wire = 12, 4
    async with HoldingProvider(hold=on_the_wire) as provider:
        first = WorkerProcess(
            write_config(tmp_path, storage_url, lease_seconds=2, concurrency=4, name="a.yaml"),
            tmp_path / "a.log",
        )
        second = WorkerProcess(
            write_config(tmp_path, storage_url, lease_seconds=2, name="b.yaml"),
            tmp_path / "b.log",
        )
        paused = False
        try:
            first.start()
            await store.commit(fan_out(provider.url, deliveries))

            async def held_on_the_wire() -> bool:
                assert first.running(), first.log_tail()
                return len(provider.arrived) == on_the_wire

            await wait_until(held_on_the_wire, "worker A's sends to reach the provider", 15)
            os.kill(first.pid, signal.SIGSTOP)
            paused = True
            held = set(provider.arrived)
            second.start()

            async def taken_over() -> bool:
                assert second.running(), second.log_tail()
                return await store.pending_count(INCIDENT) == 0

            await wait_until(taken_over, "worker B to finish every delivery", 15, every=0.1)
            provider.release()  # A's held requests are answered while A is frozen
            os.kill(first.pid, signal.SIGCONT)
            paused = False

            async def stale_outcomes_dropped() -> bool:
                assert first.running(), first.log_tail()
                lapsed = _warnings(first, "lease lapsed before its outcome")
                dropped = _warnings(first, "lease lost")
                return lapsed + dropped >= on_the_wire

            await wait_until(stale_outcomes_dropped, "worker A to give up its stale sends", 10)
            assert first.stop() == 0, first.log_tail()
            assert second.stop() == 0, second.log_tail()
        finally:
            if paused:
                os.kill(first.pid, signal.SIGCONT)
            first.close()
            second.close()
        arrived = list(provider.arrived)
    rows = await store.deliveries(INCIDENT, Page(limit=deliveries))
    attempts = await store.attempts([d.id for d in rows])
    twice = sorted(i for i in set(arrived) if arrived.count(i) == 2)
    assert sorted(set(arrived)) == sorted(d.id for d in rows)
    assert len(arrived) == deliveries + on_the_wire
    assert twice == sorted(held), "only the sends on the wire at the pause may repeat"
    assert {(d.state, d.attempts, d.lease_owner) for d in rows} == {
        (DeliveryState.DELIVERED, 1, None)
    }
    assert {d.provider_id for d in rows} == {f"fresh-{d.id}" for d in rows}
    assert all(len(found) == 1 for found in attempts.values())
    assert first.errors() == [], first.log_tail()
    assert second.errors() == [], second.log_tail()
