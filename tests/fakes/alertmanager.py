"""Debian's real ``prometheus-alertmanager`` on loopback, routing every alert to one webhook.

    async with Alertmanager(tmp_path, webhook_url, token) as am:
        await am.post_alerts([firing("OrbisDown", service="orbis")])

Each start writes its configuration in the test's folder, takes a fresh storage path (a reused
one remembers what was sent and stays silent), listens on a free loopback port with clustering
off, and waits for ``/-/ready`` with a bounded poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

BINARY = "prometheus-alertmanager"


def available() -> bool:
    """True when Debian's Alertmanager is installed."""
    return shutil.which(BINARY) is not None


def free_port() -> int:
    """A port free on 127.0.0.1 right now (Alertmanager cannot be told to take port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alert(
    alertname: str,
    *,
    ends_at: datetime | None = None,
    summary: str | None = None,
    description: str | None = None,
    **labels: str,
) -> dict[str, Any]:
    """An alert as Prometheus posts it to ``/api/v2/alerts`` (resolved when ``ends_at`` ≤ now)."""
    body: dict[str, Any] = {"labels": {"alertname": alertname, **labels}, "annotations": {}}
    if summary:
        body["annotations"]["summary"] = summary
    if description:
        body["annotations"]["description"] = description
    if ends_at is not None:
        body["endsAt"] = ends_at.astimezone(UTC).isoformat()
    return body


class Alertmanager:
    """One Alertmanager process whose only receiver is ``webhook_url`` (bearer ``token``)."""

    def __init__(
        self,
        folder: Path,
        webhook_url: str,
        token: str,
        *,
        group_by: tuple[str, ...] = ("alertname", "service"),
        group_wait: str = "100ms",
        group_interval: str = "500ms",
        repeat_interval: str = "1h",
    ) -> None:
        self.folder = folder
        self.config = {
            "route": {
                "receiver": "tocsin",
                "group_by": list(group_by),
                "group_wait": group_wait,
                "group_interval": group_interval,
                "repeat_interval": repeat_interval,
            },
            "receivers": [
                {
                    "name": "tocsin",
                    "webhook_configs": [
                        {
                            "url": webhook_url,
                            "send_resolved": True,
                            "http_config": {"authorization": {"credentials": token}},
                        }
                    ],
                }
            ],
        }
        self.port = 0
        self.log_file = folder / "alertmanager.log"
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 15.0) -> None:
        """Start the process and wait until it says it is ready."""
        config_file = self.folder / "alertmanager.yml"
        config_file.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        for _ in range(3):  # the free port may be taken between choosing and binding it
            self.port = free_port()
            storage = self.folder / f"data-{secrets.token_hex(4)}"
            with self.log_file.open("ab") as log:
                self._process = await asyncio.create_subprocess_exec(
                    BINARY,
                    f"--config.file={config_file}",
                    f"--storage.path={storage}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                    "--log.level=info",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if await self._ready(timeout):
                return
            await self._end_process()
        await self.stop()
        raise RuntimeError(f"Alertmanager did not start; see {self.log_file}")

    async def _ready(self, timeout: float) -> bool:
        assert self._session is not None
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self._process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.get(f"{self.url}/-/ready") as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(0.05)  # bounded readiness poll of an external process
        return False

    async def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Post alerts as Prometheus would."""
        assert self._session is not None, "start Alertmanager first"
        async with self._session.post(f"{self.url}/api/v2/alerts", json=alerts) as response:
            if response.status != 200:
                raise AssertionError(f"Alertmanager refused the alerts: {await response.text()}")

    async def _end_process(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            if process is not None:
                await process.wait()
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def stop(self) -> None:
        """Stop the process and close the client session."""
        await self._end_process()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Alertmanager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
