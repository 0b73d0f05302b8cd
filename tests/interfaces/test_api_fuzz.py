"""The HTTP API fuzzed from its own OpenAPI document (schemathesis) on a running
``tocsin serve``: no answer is a server error, every 4xx carries the JSON error body, and
every answer matches the schema the document generates for it.

Bounded: a fixed number of generated cases per operation, so that it stays well under a
minute; the figures are printed (see them with ``-s``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase
from schemathesis.checks import response_schema_conformance

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "fuzz-admin-token-0123456789"
CASES_PER_OPERATION = 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Any:
    port = free_port()
    config = {
        "organisation": {"name": "AP-HP", "locale": "fr"},
        "storage": {"url": f"sqlite:///{tmp_path / 'fuzz.db'}"},
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "auth": {"tokens": [{"name": "fuzz", "token_env": "FUZZ_ADMIN_TOKEN", "role": "admin"}]},
        "channels": {"email": {"host": "127.0.0.1", "port": 9, "from": "tocsin@example.org"}},
        "audiences": {
            "all-staff": {
                "statement": "internal",
                "destinations": [{"email_list": "s@example.org"}],
            }
        },
        "default_audiences": ["all-staff"],
    }
    path = tmp_path / "tocsin.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--config", str(path)],
        cwd=ROOT,
        env={**os.environ, "FUZZ_ADMIN_TOKEN": ADMIN, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "tocsin serve did not start"
            time.sleep(0.1)  # polling the server's own readiness, not synchronising a test
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_the_api_never_answers_a_server_error_and_every_4xx_is_a_json_error(
    server: str,
) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/api/openapi.json")
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    operations = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def one(case: Any) -> None:
            label = case.operation.label
            response = case.call(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                problems.append(f"{label}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                if not (isinstance(body, dict) and isinstance(body.get("error"), str)):
                    problems.append(f"{label}: {response.status_code} without a JSON error body")
            try:  # the answer matches the schema the document gives for its status
                case.validate_response(response, checks=[response_schema_conformance])
            except AssertionError as exc:  # schemathesis reports every failed check at once
                problems.append(f"{label}: {response.status_code} off its schema: {exc}"[:400])

        one()
    elapsed = time.monotonic() - started
    cases = sum(statuses.values())
    print(
        f"schemathesis: {operations} operations, {cases} cases in {elapsed:.1f} s, "
        f"{sum(n for s, n in statuses.items() if s >= 500)} server errors; "
        f"statuses {dict(sorted(statuses.items()))}"
    )
    assert operations >= 10
    assert cases >= 300
    assert problems == []
