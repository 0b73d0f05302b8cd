"""``tocsin check``: a deployment checked before an incident needs it.

One line per check (the configuration, the database and its migrations, then each configured
provider's cheapest authenticated request, which the channel adapters' ``check()`` make without
sending anything), ✓ or ✗ with the reason; exit 1 when one fails; ``--json`` for monitoring.
No line carries a secret, a URL's path, a phone number or an address.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Annotated

import aiohttp
import typer
from rich.text import Text

from bot.channels.checks import CheckResult, failure_reason
from bot.channels.registry import specs
from bot.channels.spec import Check
from bot.config import ConfigError, Settings
from bot.interfaces.cli_support import DEFAULT_CONFIG, ConfigOpt, app, console, run, settings_from


@app.command("check")
def check_command(
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document instead of lines.")
    ] = False,
) -> None:
    """Check the configuration, the database and every configured provider's credentials."""
    results = run(deployment_checks(config))
    if as_json:
        document = {"ok": all(r.ok for r in results), "checks": [asdict(r) for r in results]}
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    else:
        for result in results:
            mark = ("✓", "green") if result.ok else ("✗", "red")
            line = Text.assemble(mark, f" {result.name}: {result.reason}")
            console.print(line, highlight=False, soft_wrap=True)
    # sys.exit, not typer.Exit: main() runs the app with standalone_mode=False, where click
    # returns an Exit's code instead of raising it.
    sys.exit(0 if all(r.ok for r in results) else 1)


async def deployment_checks(config: Path) -> list[CheckResult]:
    """Every check, in order; a bad configuration stops there (nothing else can be known)."""
    try:
        settings = settings_from(config)
    except ConfigError as exc:
        return [CheckResult("config", False, str(exc).replace("\n", "; "))]
    results = [CheckResult("config", True, f"{config.name} is valid")]
    results.append(await database_check(settings))
    results.append(key_check(settings))
    async with aiohttp.ClientSession() as session:
        results.extend(await channel_checks(settings, session))
    return results


def key_check(settings: Settings) -> CheckResult:
    """The deployment key that signs acknowledgement links, gateway callbacks and dashboard
    sessions: without it they can be computed from a copy of the database."""
    name = settings.auth.secret_key_env
    secret = settings.secret(name, required=False)
    if secret is None or not secret.get_secret_value():
        return CheckResult(
            "keys",
            False,
            f"{name} is not set: acknowledgement links, gateway callbacks and dashboard "
            "sessions could be computed from a copy of the database",
        )
    return CheckResult("keys", True, f"{name} is set")


async def database_check(settings: Settings) -> CheckResult:
    """Open the store and compare its applied migrations with the packaged ones."""
    from bot.store import open_store
    from bot.store.sqlbase import SqlBase

    url = settings.database_url
    kind = url.split(":", 1)[0]
    name = f"database ({kind})"
    if kind == "sqlite" and not await asyncio.to_thread(
        os.path.isfile, url.removeprefix("sqlite:///")
    ):
        return CheckResult(name, False, "the database file does not exist: run tocsin db upgrade")
    try:
        store = open_store(url)
    except ValueError as exc:
        return CheckResult(name, False, str(exc))
    if not isinstance(store, SqlBase):
        return CheckResult(name, True, "in memory: nothing to migrate")
    try:
        await store.open()
    except Exception as exc:
        return CheckResult(name, False, f"cannot open it ({type(exc).__name__})")
    try:
        folder = resources.files("bot.store").joinpath("sql", store.dialect)
        packaged = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
        try:
            async with store.reading() as conn:
                rows = await conn.fetch("SELECT name FROM schema_migrations")
        except Exception:
            rows = []  # no migrations table yet: every migration is pending
        pending = [n for n in packaged if n not in {r["name"] for r in rows}]
    except Exception as exc:
        return CheckResult(name, False, f"cannot read it ({type(exc).__name__})")
    finally:
        await store.close()
    if pending:
        return CheckResult(
            name, False, f"migrations pending: {', '.join(pending)} (run tocsin db upgrade)"
        )
    return CheckResult(name, True, f"open, {len(packaged)} migrations applied")


async def channel_checks(settings: Settings, session: aiohttp.ClientSession) -> list[CheckResult]:
    """Each configured provider's credentials, then one ``HEAD`` per webhook host."""
    from bot.channels.webhook import WebhookChannel

    cfg = settings.channels
    builders: list[tuple[str, Check]] = []
    for spec in specs():
        section = cfg.section(spec.name)
        if section is not None and spec.check is not None:
            builders.append((spec.label(section), spec.check))
    results: list[CheckResult] = []
    for name, check in builders:
        try:
            results.append(await check(settings, session))
        except ConfigError as exc:  # a credential's variable is missing from the environment
            results.append(CheckResult(name, False, str(exc).replace("\n", "; ")))
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            results.append(CheckResult(name, False, failure_reason(exc)))
    urls = [
        d.webhook
        for audience in settings.audiences.values()
        for d in audience.destinations
        if d.webhook is not None
    ]
    if urls:
        results.extend(await WebhookChannel(session, cfg.webhook).check(urls))
    return results
