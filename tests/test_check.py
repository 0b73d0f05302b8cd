"""``tocsin check``: each provider's credentials, good and bad, against the stand-ins, the real
Kannel and aiosmtpd; then the command itself, as a process, with one line per check."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp import web
from pydantic import SecretStr

from bot.channels.email import EmailChannel
from bot.channels.sms import KannelChannel, TwilioChannel
from bot.channels.telegram import TelegramChannel, build_bot
from bot.channels.webhook import WebhookChannel
from bot.config import WebhookChannelSettings
from tests.channels.conftest import session
from tests.channels.test_email import settings_for
from tests.channels.test_sms_kannel import (
    kannel,
    kannel_channel,
    new_number,
    outbound,
    phone,
)
from tests.fakes.kannel import FakePhone, Kannel
from tests.fakes.twilio import TwilioStandin
from tocsin_sandbox.slack_api import SlackSandbox
from tocsin_sandbox.smtp import SandboxSmtp
from tocsin_sandbox.telegram_api import TelegramSandbox

__all__ = ["kannel", "phone", "session"]  # fixtures reused from the Kannel channel tests

ROOT = Path(__file__).resolve().parents[1]
SLACK_TOKEN = "xoxb-check-good-0123456789"
TELEGRAM_TOKEN = "7000001:check-good-token"
SMTP_USER, SMTP_PASSWORD = "tocsin", "smtp-check-password"
HOOK_PATH = "/hooks/T0SECRET/B0SECRET/check-webhook-secret"
DEPLOYMENT_KEY = "a-deployment-key-for-the-check-test"


def slack_channel(sandbox: SlackSandbox, token: str, http: aiohttp.ClientSession) -> Any:
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.channels.slack import SlackChannel

    return SlackChannel(AsyncWebClient(token=token, base_url=sandbox.api_url, session=http))


async def test_slack_auth_test_accepts_the_token_and_refuses_another(
    session: aiohttp.ClientSession,
) -> None:
    async with SlackSandbox(token=SLACK_TOKEN) as slack:
        good = await slack_channel(slack, SLACK_TOKEN, session).check()
        bad = await slack_channel(slack, "xoxb-wrong", session).check()
        assert [c.method for c in slack.calls] == ["auth.test", "auth.test"]
    assert (good.ok, good.reason) == (True, "auth.test ok (workspace Sandbox)")
    assert (bad.ok, bad.reason) == (False, "auth.test refused: invalid_auth")


async def test_telegram_get_me_accepts_the_token_and_refuses_another(
    session: aiohttp.ClientSession,
) -> None:
    async with TelegramSandbox(token=TELEGRAM_TOKEN) as telegram:
        good = await TelegramChannel(build_bot(TELEGRAM_TOKEN, telegram.url, session)).check()
        bad = await TelegramChannel(build_bot("7000001:wrong", telegram.url, session)).check()
        assert [c.method for c in telegram.calls] == ["getMe", "getMe"]
    assert (good.ok, good.reason) == (True, "getMe ok (@tocsin_sandbox_bot)")
    assert not bad.ok
    assert bad.reason.startswith("getMe refused:")
    assert "wrong" not in bad.reason


async def test_twilio_account_fetch_accepts_the_token_and_refuses_another(
    session: aiohttp.ClientSession,
) -> None:
    async with TwilioStandin() as twilio:

        def channel(token: str) -> TwilioChannel:
            return TwilioChannel(
                session,
                api_url=twilio.url,
                account_sid=twilio.account_sid,
                auth_token=SecretStr(token),
                sender=None,
            )

        good = await channel(twilio.auth_token).check()
        bad = await channel("0" * 32).check()
        assert (twilio.account_requests, twilio.create_requests) == (2, 0)
    assert (good.ok, good.reason) == (True, "account fetched")
    assert (bad.ok, bad.reason) == (False, "account fetch refused: HTTP 401 (error 20003)")


@pytest.mark.kannel
async def test_kannel_probe_tells_good_credentials_from_bad_and_sends_nothing(
    session: aiohttp.ClientSession, kannel: Kannel, phone: FakePhone
) -> None:
    before = sms_counts(kannel)
    good = await kannel_channel(session, kannel).check()
    bad = await kannel_channel(session, kannel, password="not-the-password").check()
    assert (good.ok, good.reason) == (True, "credentials accepted (probe without receiver)")
    assert (bad.ok, bad.reason) == (False, "credentials refused (403 Authorization failed)")
    assert sms_counts(kannel) == before  # bearerbox queued and sent nothing
    # ...while a real send right after is counted: the counter does move.
    number = new_number()
    await kannel_channel(session, kannel).send(outbound(number, "after the check"))
    assert (await phone.receive(number)).text == "after the check"
    assert sms_counts(kannel) != before


def sms_counts(kannel: Kannel) -> str:
    """bearerbox's SMS line: received, sent and queued counts."""
    (line,) = [ln for ln in kannel.status().splitlines() if ln.startswith("SMS: received")]
    return line


async def test_kannel_probe_of_a_gateway_that_is_down(session: aiohttp.ClientSession) -> None:
    from tests.fakes.kannel import free_port

    channel = KannelChannel(
        session,
        url=f"http://127.0.0.1:{free_port()}/cgi-bin/sendsms",
        username=SecretStr("tocsin"),
        password=SecretStr("secret"),
        sender="APHP",
    )
    result = await channel.check()
    assert (result.ok, result.reason) == (False, "cannot reach the provider (ClientConnectorError)")


async def test_smtp_ehlo_starttls_auth_without_sending(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with SandboxSmtp(
        tls_context=server_tls, require_starttls=True, credentials={SMTP_USER: SMTP_PASSWORD}
    ) as smtp:
        settings = settings_for(smtp, starttls=True)

        def channel(password: str) -> EmailChannel:
            return EmailChannel(
                settings,
                username=SecretStr(SMTP_USER),
                password=SecretStr(password),
                ca_file=str(ca_file),
            )

        good = await channel(SMTP_PASSWORD).check()
        bad = await channel("wrong").check()
        untrusted = await EmailChannel(
            settings, username=SecretStr(SMTP_USER), password=SecretStr(SMTP_PASSWORD)
        ).check()
        assert smtp.messages == []
    assert (good.ok, good.reason) == (True, "EHLO + STARTTLS + AUTH ok")
    assert (bad.ok, bad.reason) == (False, "AUTH refused (535)")
    assert not untrusted.ok
    assert "wrong" not in bad.reason


async def test_webhook_head_per_host_names_the_host_only(
    session: aiohttp.ClientSession, aiohttp_hook: str
) -> None:
    from tests.fakes.kannel import free_port

    closed = f"http://127.0.0.1:{free_port()}{HOOK_PATH}"
    channel = WebhookChannel(session, WebhookChannelSettings())
    results = await channel.check([aiohttp_hook, aiohttp_hook + "2", closed])
    port = aiohttp_hook.split(":")[2].split("/")[0]
    by_name = {r.name: r for r in results}
    assert by_name[f"webhook 127.0.0.1:{port}"].ok
    assert by_name[f"webhook 127.0.0.1:{port}"].reason == "answers HTTP 405"
    assert len(results) == 2
    assert [r.ok for r in results].count(False) == 1
    assert all("hooks" not in r.name + r.reason for r in results)


@pytest.fixture
async def aiohttp_hook() -> AsyncIterator[str]:
    """A receiver that allows POST only (as Slack-style incoming webhooks do)."""

    async def post(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", post)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}{HOOK_PATH}"
    await runner.cleanup()


# --- the command ----------------------------------------------------------------------------


async def tocsin(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.kannel
async def test_the_command_checks_every_provider_of_a_configuration(
    tmp_path: Path, kannel: Kannel, aiohttp_hook: str
) -> None:
    phone_number = "06 12 34 56 78"
    async with (
        SlackSandbox(token=SLACK_TOKEN) as slack,
        TelegramSandbox(token=TELEGRAM_TOKEN) as telegram,
        SandboxSmtp(credentials={SMTP_USER: SMTP_PASSWORD}) as smtp,
    ):
        config = {
            "organisation": {"name": "AP-HP", "locale": "fr", "timezone": "Europe/Paris"},
            "storage": {"url": "sqlite:///tocsin.db"},
            "channels": {
                "slack": {"api_url": slack.api_url},
                "telegram": {"api_url": telegram.url},
                "sms": {
                    "provider": "kannel",
                    "url": kannel.sendsms_url,
                    "username_env": "TEST_KANNEL_USER",
                    "password_env": "TEST_KANNEL_PASSWORD",
                    "sender": "APHP",
                },
                "email": {
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "username_env": "TEST_SMTP_USER",
                    "password_env": "TEST_SMTP_PASSWORD",
                    "from": "cellule-crise@example.org",
                },
            },
            "audiences": {
                "heads": {
                    "statement": "department_heads",
                    "policy": {"channels": ["sms"]},
                    "members": [{"name": "Dr A. Martin", "phone": phone_number}],
                },
                "teams": {"statement": "internal", "destinations": [{"webhook": aiohttp_hook}]},
            },
        }
        path = tmp_path / "tocsin.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        env = {
            **os.environ,
            "SLACK_BOT_TOKEN": SLACK_TOKEN,
            "SLACK_SIGNING_SECRET": "signing-secret-for-check",
            "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": "webhook-secret-for-check",
            "TEST_KANNEL_USER": kannel.username,
            "TEST_KANNEL_PASSWORD": kannel.password,
            "TEST_SMTP_USER": SMTP_USER,
            "TEST_SMTP_PASSWORD": SMTP_PASSWORD,
        }
        env.pop("TOCSIN_SECRET_KEY", None)
        elsewhere = tmp_path / "cwd"
        elsewhere.mkdir()

        code, out = await tocsin("check", "--config", str(path), env=env, cwd=elsewhere)
        assert code == 1, out
        assert out.splitlines()[:3] == [
            "✓ config: tocsin.yaml is valid",
            "✗ database (sqlite): the database file does not exist: run tocsin db upgrade",
            "✗ keys: TOCSIN_SECRET_KEY is not set: acknowledgement links, gateway callbacks "
            "and dashboard sessions could be computed from a copy of the database",
        ]
        env["TOCSIN_SECRET_KEY"] = DEPLOYMENT_KEY

        code, out = await tocsin("db", "upgrade", "--config", str(path), env=env, cwd=elsewhere)
        assert code == 0, out
        code, out = await tocsin("check", "--config", str(path), env=env, cwd=elsewhere)
        lines = out.splitlines()
        assert code == 0, out
        port = aiohttp_hook.split(":")[2].split("/")[0]
        assert [line.split(":")[0] for line in lines] == [
            "✓ config",
            "✓ database (sqlite)",
            "✓ keys",
            "✓ slack",
            "✓ telegram",
            "✓ sms (kannel)",
            "✓ email",
            "✓ webhook 127.0.0.1",
        ]
        assert lines[-1] == f"✓ webhook 127.0.0.1:{port}: answers HTTP 405"

        env["TEST_KANNEL_PASSWORD"] = "a-typo-in-the-password"
        env["SLACK_BOT_TOKEN"] = "xoxb-revoked-token"
        code, out = await tocsin("check", "--json", "--config", str(path), env=env, cwd=elsewhere)
        assert code == 1, out
        document = json.loads(out)
        failed = {c["name"]: c["reason"] for c in document["checks"] if not c["ok"]}
        assert document["ok"] is False
        assert failed == {
            "slack": "auth.test refused: invalid_auth",
            "sms (kannel)": "credentials refused (403 Authorization failed)",
        }
        assert smtp.messages == []
        sent = [c.method for c in slack.calls] + [c.method for c in telegram.calls]
        assert set(sent) == {"auth.test", "getMe"}

    secrets = [
        DEPLOYMENT_KEY,
        SLACK_TOKEN,
        "xoxb-revoked-token",
        TELEGRAM_TOKEN,
        kannel.password,
        "a-typo-in-the-password",
        SMTP_PASSWORD,
        HOOK_PATH,
        "T0SECRET",
        phone_number,
        "0612345678",
    ]
    for text in (out, *lines):
        for secret in secrets:
            assert secret not in text


async def test_pending_migrations_are_named(tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / "tocsin.db").touch()
    with sqlite3.connect(tmp_path / "tocsin.db") as db:
        db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        db.execute("INSERT INTO schema_migrations VALUES ('0001_init.sql', 0)")
    path = tmp_path / "tocsin.yaml"
    path.write_text(
        yaml.safe_dump({"organisation": {"name": "X"}, "storage": {"url": "sqlite:///tocsin.db"}}),
        encoding="utf-8",
    )
    code, out = await tocsin("check", "--config", str(path), env=dict(os.environ), cwd=tmp_path)
    assert code == 1, out
    (database,) = [ln for ln in out.splitlines() if ln.split(":")[0].endswith("database (sqlite)")]
    assert database.startswith("✗ database (sqlite): migrations pending: 0002_")
    assert "0001_init.sql" not in database
    assert database.endswith("(run tocsin db upgrade)")


async def test_a_bad_configuration_is_one_failed_line(tmp_path: Path) -> None:
    path = tmp_path / "tocsin.yaml"
    path.write_text("organisation: {name: X}\nchannels: {pager: {}}\n", encoding="utf-8")
    code, out = await tocsin("check", "--config", str(path), env=dict(os.environ), cwd=tmp_path)
    assert code == 1, out
    assert out.startswith("✗ config: ")
    assert "channels" in out
    assert len(out.strip().splitlines()) == 1


def test_serve_and_worker_warn_once_without_a_deployment_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from bot.config import load_settings
    from bot.interfaces.cli import warn_without_key

    path = tmp_path / "tocsin.yaml"
    path.write_text(yaml.safe_dump({"organisation": {"name": "X"}}), encoding="utf-8")
    monkeypatch.delenv("TOCSIN_SECRET_KEY", raising=False)
    warn_without_key(load_settings(path))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "TOCSIN_SECRET_KEY is not set" in caplog.records[0].getMessage()
    caplog.clear()
    monkeypatch.setenv("TOCSIN_SECRET_KEY", DEPLOYMENT_KEY)
    warn_without_key(load_settings(path))
    assert caplog.records == []
