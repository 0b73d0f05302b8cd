"""Reliability drills: real ``tocsin worker`` processes, a sink in its own process, real faults.

The helpers below are shared by the drills and by the ``bench/`` scripts that print figures:
a recording sink (``bench/sink.py --record``), a worker process started from a configuration
file written for the drill, and waits on observable facts (rows in the database, requests at
the sink) instead of sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml

from bot.domain.audiences import NORMAL_LANE, Audience, StatementIndex, Target, plan_deliveries
from bot.domain.models import ChannelName, DeliveryPolicy, StatementKind
from bot.ports import Changes
from tests import factories

ROOT = Path(__file__).resolve().parents[2]


async def wait_until(
    fact: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0, every: float = 0.05
) -> float:
    """Check ``fact`` until it holds; return the seconds it took, or fail naming ``what``."""
    started = time.monotonic()
    while not await fact():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)  # polling an outside process's state, not synchronising
    return time.monotonic() - started


def fan_out(url: str, n: int, incident_id: str = "INC-2023-0830-01", spread: int = 1) -> Changes:
    """An incident with ``n`` webhook deliveries to ``url`` (``/hook/<i % spread>``), one commit."""
    changes = factories.declaration(0, incident_id)
    statement = changes.statements[0]
    changes.deliveries = [
        factories.new_delivery(
            statement, f"{url}/hook/{i % spread}", ChannelName.WEBHOOK, audience="intranet"
        )
        for i in range(n)
    ]
    return changes


@dataclass(frozen=True)
class SinkLog:
    """What the sink saw: every POST's delivery id, in arrival order (and arrival times)."""

    ids: list[int]
    at: list[float] = field(default_factory=list)
    refused_at: list[float] = field(default_factory=list)

    @property
    def distinct(self) -> set[int]:
        return set(self.ids)

    @property
    def duplicates(self) -> Counter[int]:
        """Delivery ids seen more than once, with how many extra times."""
        return Counter({i: n - 1 for i, n in Counter(self.ids).items() if n > 1})


class Sink:
    """``bench/sink.py --record`` in its own process; use as a context manager."""

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        limit_rate: float = 0.0,
        limit_burst: int = 1,
        limit_tolerance_ms: float = 0.0,
    ) -> None:
        self._args = ["--record"] + (["--latency-ms", str(latency_ms)] if latency_ms else [])
        if limit_rate:
            self._args += ["--limit-rate", str(limit_rate), "--limit-burst", str(limit_burst)]
            self._args += ["--limit-tolerance-ms", str(limit_tolerance_ms)]
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> Sink:
        self._proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "sink.py"), *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # the sink prints its port once it listens
        if not line.strip():
            self.__exit__()
            raise RuntimeError("the sink did not start")
        self.url = f"http://127.0.0.1:{int(line)}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def count(self, at_least: int = 0, timeout: float = 30.0) -> int:
        """Requests taken so far; with ``at_least``, wait (up to ``timeout``) until reached."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{self.url}/count", params={"at_least": at_least, "timeout": timeout}
            ) as response,
        ):
            return int((await response.json())["count"])

    async def wait_for(self, requests: int, timeout: float = 30.0) -> int:
        """Wait until the sink has taken ``requests`` requests, or fail."""
        seen = await self.count(requests, timeout)
        if seen < requests:
            raise AssertionError(f"the sink took {seen} requests, expected {requests}")
        return seen

    async def log(self) -> SinkLog:
        """Every delivery id received so far."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/deliveries") as response,
        ):
            data = await response.json()
        return SinkLog(
            [int(i) for i in data["ids"] if i is not None],
            [at for i, at in zip(data["ids"], data["at"], strict=True) if i is not None],
            data["refused_at"],
        )


def write_config(
    folder: Path,
    storage_url: str,
    *,
    lease_seconds: float = 2.0,
    concurrency: int = 50,
    batch_size: int = 200,
    poll_interval: float = 0.1,
    name: str = "tocsin.yaml",
    extra: dict[str, Any] | None = None,
) -> Path:
    """A worker configuration: the store, the lease and an unthrottled webhook channel."""
    config: dict[str, Any] = {
        "organisation": {"name": "Drill", "locale": "fr"},
        "storage": {"url": storage_url},
        "delivery": {
            "lease_seconds": lease_seconds,
            "concurrency": concurrency,
            "batch_size": batch_size,
            "poll_interval": poll_interval,
            "shutdown_timeout": 2,
        },
        "channels": {
            "webhook": {
                "timeout": 5,
                "limits": {"unlimited_destinations": True, "rate": 100000, "burst": 100000},
            }
        },
    }
    config.update(extra or {})
    path = folder / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class WorkerProcess:
    """One ``python -m bot worker --config <file>`` process; its log goes to a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "worker", "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """``kill -9``: no shutdown, no flush, leases left behind."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (a graceful stop) and the exit code."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return int(self._proc.returncode)

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the worker's log, for assertion messages."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def errors(self) -> list[str]:
        """Messages of the ``error`` log lines (JSON logs)."""
        found = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                found.append(line)  # not a log line: a traceback on stderr
                continue
            if entry.get("level") in ("error", "critical"):
                found.append(entry.get("message", ""))
        return found


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def heads_broadcast(
    url: str, n: int, incident_id: str = "INC-2023-0830-01", *, lanes: bool = True
) -> Changes:
    """A department-head broadcast of an incident already declared: ``n`` webhooks
    (``/head/<i>``) planned as the product plans them (an audience asking for an
    acknowledgement is urgent); ``lanes=False`` puts them in the normal lane (first in, first
    out), as before lanes existed."""
    stmt = factories.statement(incident_id, StatementKind.DEPARTMENT_HEADS, seq=2)
    audience = Audience(
        "department-heads",
        StatementKind.DEPARTMENT_HEADS,
        targets=tuple(Target(ChannelName.WEBHOOK, f"{url}/head/{i}") for i in range(n)),
        policy=DeliveryPolicy(require_ack=True, kind=StatementKind.DEPARTMENT_HEADS),
    )
    planned = plan_deliveries(
        incident_id=incident_id,
        seq=2,
        audiences=[audience],
        statements=StatementIndex([stmt], "fr"),
        default_locale="fr",
        now=datetime.now(UTC),
    )
    if not lanes:
        planned = [replace(d, lane=NORMAL_LANE) for d in planned]
    return Changes(statements=[stmt], deliveries=planned)
