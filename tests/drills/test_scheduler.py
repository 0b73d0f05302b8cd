"""Periodic work in real ``tocsin serve`` processes: cadence reminders, site-quorum escalation
and the Slack progress message, exactly once per deployment, and still running when the
leading ``serve`` is killed.

Each drill writes a configuration, starts ``python -m bot serve`` (and ``worker``) against
SQLite or PostgreSQL and the local stand-ins (the webhook sink in its own process, the SMTP
and Slack stand-ins of ``tocsin_sandbox``), acts over HTTP as a client would, and counts what
the stand-ins received.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bot.domain.models import DeliveryState
from bot.ports import Store
from bot.store.postgres import PostgresStore
from bot.store.sqlite import SqliteStore
from tests.conftest import pg_database
from tests.drills import ROOT, Sink, WorkerProcess, wait_until, write_config
from tocsin_sandbox.slack_api import SlackSandbox
from tocsin_sandbox.smtp import SandboxSmtp

TOKEN_ENV = {
    "TOCSIN_DRILL_TOKEN": "drill-responder-token-0123456789",
    "SLACK_BOT_TOKEN": "xoxb-tocsin-drill",
    "SLACK_SIGNING_SECRET": "8f742231b10e8888abcd99yyyzzz85a5",
}
AUTH = {"Authorization": f"Bearer {TOKEN_ENV['TOCSIN_DRILL_TOKEN']}"}
CADENCE = 2.0
DECLARATION = {"title": "Orbis indisponible", "systems": ["Orbis"], "severity": "critical"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServeProcess(WorkerProcess):
    """One ``python -m bot serve --config <file> --port <port>`` process."""

    def __init__(self, config: Path, log: Path, port: int) -> None:
        super().__init__(config, log)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> ServeProcess:
        self._log = self.log_path.open("ab")
        env = {**os.environ, **TOKEN_ENV, "PYTHONPATH": str(ROOT)}
        command = ["serve", "--config", str(self.config), "--port", str(self.port)]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bot", *command],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        return self

    async def ready(self) -> ServeProcess:
        async def answers() -> bool:
            assert self.running(), self.log_tail()
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{self.url}/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(answers, f"serve on port {self.port}", timeout=60, every=0.1)
        return self


@contextmanager
def processes(*started: WorkerProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for process in started:
            process.close()


def serve_config(folder: Path, url: str, port: int, name: str, extra: dict[str, Any]) -> Path:
    """A serve configuration: the store, an API token, the public URL, no default cadence."""
    config: dict[str, Any] = {
        "auth": {
            "tokens": [{"name": "cellule", "token_env": "TOCSIN_DRILL_TOKEN", "role": "responder"}]
        },
        "server": {"public_url": f"http://127.0.0.1:{port}"},
        "reminders": {"cadence": {}, "check_every": "0.5s"},
    }
    return write_config(folder, url, name=name, extra={**config, **extra})


def reminder_config(sink_url: str) -> dict[str, Any]:
    """The crisis cell is a webhook at the sink; critical incidents are due every 2 s."""
    return {
        "reminders": {"cadence": {"critical": f"{CADENCE}s"}, "check_every": "0.5s"},
        "audiences": {
            "crisis-cell": {
                "statement": "internal",
                "destinations": [{"webhook": f"{sink_url}/crisis"}],
            }
        },
        "default_audiences": ["crisis-cell"],
    }


async def declare(url: str, body: dict[str, Any] | None = None) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/api/v1/incidents", json=body or DECLARATION, headers=AUTH) as answer,
    ):
        assert answer.status == 201, await answer.text()
        return str((await answer.json())["id"])


async def reminders(store: Store, incident: str) -> list[datetime]:
    return [e.at for e in await store.timeline(incident) if e.action == "reminder"]


async def check_once_per_period(store: Store, incident: str, sink: Sink) -> list[datetime]:
    """Reminders at least a cadence apart, each delivered once: never twice in one period."""
    timeline = await store.timeline(incident)
    declared = next(e.at for e in timeline if e.action == "declared")
    times = await reminders(store, incident)
    gaps = [(b - a).total_seconds() for a, b in zip([declared, *times], times, strict=False)]
    assert all(gap >= CADENCE - 0.001 for gap in gaps), gaps
    log = await sink.log()
    assert log.duplicates == {}
    sent = {d.id for d in await store.deliveries(incident) if d.state == DeliveryState.DELIVERED}
    assert log.distinct == sent
    return times


@asynccontextmanager
async def sqlite_store(path: Path) -> AsyncIterator[Store]:
    store = SqliteStore(str(path))
    await store.open()
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()


async def test_serve_reminds_the_crisis_cell_once_per_overdue_period(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path / "tocsin.db") as store:
        with Sink() as sink:
            port = free_port()
            config = serve_config(
                tmp_path,
                f"sqlite:///{tmp_path}/tocsin.db",
                port,
                "serve.yaml",
                reminder_config(sink.url),
            )
            serve = ServeProcess(config, tmp_path / "serve.log", port).start()
            with processes(serve):
                await serve.ready()
                incident = await declare(serve.url)
                await sink.wait_for(4, timeout=40)  # the declaration, then three reminders

                assert serve.stop() == 0
                times = await check_once_per_period(store, incident, sink)
                assert len(times) >= 3
                assert serve.errors() == []


QUORUM_HEADS: dict[str, Any] = {
    "statement": "department_heads",
    "policy": {
        "channels": ["email"],
        "require_ack": True,
        "confirm_per_site": 1,
        # Long enough for the drill to acknowledge Nord's head first, on a busy machine too.
        "escalate_after": "5s",
    },
    "members": [
        {"name": "Dr Martin", "site": "Nord", "email": "martin@example.org"},
        {"name": "Dr Nguyen", "site": "Nord", "email": "nguyen@example.org", "deputy": True},
        {"name": "Pr Diallo", "site": "Sud", "email": "diallo@example.org"},
        {"name": "Dr Lefebvre", "site": "Sud", "email": "lefebvre@example.org", "deputy": True},
    ],
}


async def test_serve_escalates_an_unconfirmed_site_to_its_deputy(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path / "tocsin.db") as store, SandboxSmtp() as smtp:
        port = free_port()
        config = serve_config(
            tmp_path,
            f"sqlite:///{tmp_path}/tocsin.db",
            port,
            "serve.yaml",
            {
                "channels": {"email": {"host": smtp.host, "port": smtp.port}},
                "audiences": {"department-heads": QUORUM_HEADS},
                "default_audiences": ["department-heads"],
            },
        )
        serve = ServeProcess(config, tmp_path / "serve.log", port).start()
        with processes(serve):
            await serve.ready()
            incident = await declare(serve.url, {**DECLARATION, "sites": ["Nord", "Sud"]})

            # Nord's head confirms from the link in the e-mail he received.
            async def martin_reached() -> bool:
                return any(
                    d.recipient == "Dr Martin"
                    and d.state in (DeliveryState.SENT, DeliveryState.DELIVERED)
                    for d in await store.deliveries(incident)
                ) and any("martin@example.org" in m.rcpt_tos for m in smtp.messages)

            await wait_until(martin_reached, "the e-mail to Nord's head")
            [mail] = [m for m in smtp.messages if "martin@example.org" in m.rcpt_tos]
            body = mail.message.get_body(("plain",))
            assert body is not None
            [link] = re.findall(r"https?://\S+/ack/[\w.-]+", body.get_content())
            async with aiohttp.ClientSession() as session:
                async with session.get(link) as page:  # the page alone changes nothing
                    assert page.status == 200
                async with session.post(link) as answer:  # his press on its button
                    assert answer.status == 200

            async def deputy_mailed() -> bool:
                return any("lefebvre@example.org" in m.rcpt_tos for m in smtp.messages)

            await wait_until(deputy_mailed, "the e-mail to Sud's deputy", timeout=30)
            # Both sites are judged in the same pass: Nord, confirmed, was left alone.
            recipients = sorted(d.recipient for d in await store.deliveries(incident))
            assert recipients == ["Dr Lefebvre", "Dr Martin", "Pr Diallo"]
            escalated = [e for e in await store.timeline(incident) if e.action == "site_escalated"]
            assert [(e.detail["site"], e.detail["deputies"]) for e in escalated] == [
                ("Sud", ["Dr Lefebvre"])
            ]
            assert not any("nguyen@example.org" in m.rcpt_tos for m in smtp.messages)
            assert serve.stop() == 0
            assert serve.errors() == []


async def _leader(admin: asyncpg.Connection) -> str | None:
    """The application name of the session holding the scheduler's advisory lock."""
    found = await admin.fetchval(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.classid = 7461636 AND l.granted "
        "AND a.datname = current_database()"
    )
    return str(found) if found else None


@pytest.mark.postgres
async def test_two_serves_remind_once_and_the_survivor_takes_over(tmp_path: Path) -> None:
    async with pg_database() as url:
        store = PostgresStore(url)
        await store.open()
        admin = await asyncpg.connect(url)
        try:
            await store.migrate()
            with Sink() as sink:
                serves = {}
                for name in ("serve-a", "serve-b"):
                    port = free_port()
                    config = serve_config(
                        tmp_path,
                        f"{url}?application_name={name}",
                        port,
                        f"{name}.yaml",
                        reminder_config(sink.url),
                    )
                    serves[name] = ServeProcess(config, tmp_path / f"{name}.log", port)
                with processes(*serves.values()):
                    for serve in serves.values():
                        await serve.start().ready()
                    incident = await declare(serves["serve-a"].url)
                    await sink.wait_for(4, timeout=40)
                    before = await check_once_per_period(store, incident, sink)

                    leader = await _leader(admin)
                    assert leader in serves
                    [survivor] = [n for n in serves if n != leader]
                    serves[leader].kill()  # kill -9: no resignation, the lock goes with it
                    killed_at = time.monotonic()

                    async def reminded_again() -> bool:
                        return len(await reminders(store, incident)) >= len(before) + 2

                    await wait_until(reminded_again, "reminders from the survivor", timeout=40)
                    print(
                        f"takeover: next reminder {time.monotonic() - killed_at:.1f} s after kill"
                    )
                    assert await _leader(admin) == survivor
                    assert serves[survivor].stop() == 0
                    times = await check_once_per_period(store, incident, sink)
                    assert len(times) >= len(before) + 2
                    assert serves[survivor].errors() == []
        finally:
            await admin.close()
            await store.close()


def _progress(slack: SlackSandbox) -> list[Any]:
    return [
        c
        for c in slack.calls
        if c.method in ("chat.postMessage", "chat.update")
        and c.args.get("channel") == "C0CRISIS"
        and str(c.args.get("text", "")).startswith("Diffusion ")
    ]


WARDS = [f"C0WARD{i}" for i in range(10)]


def slack_config(api_url: str) -> dict[str, Any]:
    """Ten wards' Slack channels; the progress message goes to C0CRISIS."""
    return {
        "delivery": {"backoff_base": "20ms", "backoff_max": "100ms", "max_attempts": 1000},
        "channels": {
            "slack": {
                "api_url": api_url,
                "incident_channel": "C0CRISIS",
                "limits": {"unlimited_destinations": True, "rate": 1000, "burst": 1000},
            }
        },
        "audiences": {
            "wards": {
                "statement": "internal",
                "destinations": [{"slack_channel": ward} for ward in WARDS],
            }
        },
        "default_audiences": ["wards"],
    }


def _final(slack: SlackSandbox, total: int) -> bool:
    calls = _progress(slack)
    text = calls[-1].args["blocks"][0]["text"]["text"] if calls else ""
    return f"Total {total} · Diffusion terminée" in text


async def test_slack_progress_counts_every_process_and_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ward is reached by a separate ``tocsin worker`` while no ``serve`` runs (the CLI
    declares and updates); the ``serve`` started afterwards posts one progress message with
    the worker's counts, and a restarted ``serve`` updates that same message."""
    for name, value in TOKEN_ENV.items():
        monkeypatch.setenv(name, value)  # the worker process needs the Slack token too
    token = TOKEN_ENV["SLACK_BOT_TOKEN"]
    async with (
        sqlite_store(tmp_path / "tocsin.db") as store,
        SlackSandbox(token=token) as seen_by_serve,
        SlackSandbox(token=token) as seen_by_worker,
    ):
        port = free_port()
        db = f"sqlite:///{tmp_path}/tocsin.db"
        # The CLI acts as a configured person (the crisis cell's token belongs to Marc).
        marc = {"name": "cellule", "token_env": "TOCSIN_DRILL_TOKEN", "role": "responder"}
        extra = {
            **slack_config(seen_by_serve.api_url),
            "auth": {"tokens": [marc | {"person": "marc"}]},
        }
        config = serve_config(tmp_path, db, port, "serve.yaml", extra)
        worker = WorkerProcess(
            write_config(
                tmp_path, db, name="worker.yaml", extra=slack_config(seen_by_worker.api_url)
            ),
            tmp_path / "worker.log",
        )
        with processes(worker):
            worker.start()
            declared = _cli(
                "declare",
                "--config",
                str(config),
                "--title",
                "Orbis indisponible",
                "--system",
                "Orbis",
                "--severity",
                "critical",
                "--no-wait",
                "--as",
                "marc",
            )
            [incident] = [i.id for i in await store.list_incidents()]
            assert incident in declared
            await seen_by_worker.wait_until(lambda: len(seen_by_worker.messages) == 10, timeout=30)
            assert sorted(m.channel for m in seen_by_worker.messages) == sorted(WARDS)

            serve = ServeProcess(config, tmp_path / "serve.log", port)
            with processes(serve):
                await serve.start().ready()
                await seen_by_serve.wait_until(lambda: _final(seen_by_serve, 10), timeout=30)
                assert await store.pending_count(incident) == 0
                posts = [c for c in _progress(seen_by_serve) if c.method == "chat.postMessage"]
                assert len(posts) == 1
                [message] = seen_by_serve.messages  # the progress message only: no ward post
                assert message.channel == "C0CRISIS"
                assert "• *wards*: delivered 10" in message.blocks[0]["text"]["text"]
                assert serve.stop() == 0

            # The update goes out while no serve runs; a new serve goes on with the message.
            _cli(
                "update",
                incident,
                "--config",
                str(config),
                "--status",
                "identified",
                "-m",
                "Base de données.",
                "--as",
                "marc",
            )
            await seen_by_worker.wait_until(lambda: len(seen_by_worker.messages) == 20, timeout=30)
            serve = ServeProcess(config, tmp_path / "serve2.log", port)
            with processes(serve):
                await serve.start().ready()
                await seen_by_serve.wait_until(lambda: _final(seen_by_serve, 20), timeout=30)
                calls = _progress(seen_by_serve)
                assert [c.method for c in calls].count("chat.postMessage") == 1
                assert {c.args["ts"] for c in calls if c.method == "chat.update"} == {message.ts}
                assert [m.channel for m in seen_by_serve.messages] == ["C0CRISIS"]
                assert serve.stop() == 0
            assert worker.stop() == 0
            assert worker.errors() == []


def _cli(*args: str) -> str:
    """Run ``tocsin`` as a crisis-cell member would; its output, after checking it succeeded."""
    done = subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
