"""The ``tocsin`` command line (Typer + rich). Exit codes: 0 ok, 1 runtime failure, 2 bad input.

Shared pieces live in :mod:`bot.interfaces.cli_support`; the reporting commands in
:mod:`bot.interfaces.cli_views` (imported here so that they register).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from bot.config import ConfigError, Settings
from bot.domain.declarations import IncidentDraft
from bot.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, TocsinError
from bot.domain.models import StatementKind
from bot.interfaces import check as check  # registers `tocsin check` on the app
from bot.interfaces import cli_views  # registers status, report, claims… on the app
from bot.interfaces.cli_support import (
    DEFAULT_CONFIG,
    READER,
    AsOpt,
    BadInput,
    ConfigOpt,
    actor,
    app,
    console,
    db_app,
    err,
    run,
    settings_from,
    templates_app,
)

__all__ = ["app", "cli_views", "main"]


def main() -> None:
    """Entry point: maps failures to exit codes with a one-line reason on stderr."""
    try:
        # Without standalone mode click returns a command's ``typer.Exit`` code: keep it.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (ConfigError, InvalidInput, NotFound, Forbidden, Conflict, BadInput) as exc:
        detail = getattr(exc, "detail", None)
        reason = str(exc).replace("\n", "; ")
        if detail:
            reason += ": " + "; ".join(f"{k}: {v}" for k, v in dict(detail).items())
        err.print(f"error: {reason}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # click's usage errors carry their own exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if isinstance(exc, TocsinError):
            err.print(f"error: {exc}", highlight=False)
            sys.exit(1)
        err.print(f"error: {type(exc).__name__}: {exc}", highlight=False)
        sys.exit(1)


def warn_without_key(settings: Settings) -> None:
    """A process that sends or serves says once, in its log, that it runs without the
    deployment key (``tocsin check`` fails on it too)."""
    from bot.interfaces.check import key_check

    found = key_check(settings)
    if not found.ok:
        logging.getLogger("tocsin.app").warning("%s", found.reason)


# --- server and worker ---------------------------------------------------------------------
@app.command()
def serve(
    config: ConfigOpt = DEFAULT_CONFIG,
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
    telegram_polling: Annotated[
        bool,
        typer.Option(
            "--telegram-polling", help="Poll Telegram instead of the webhook (development)."
        ),
    ] = False,
) -> None:
    """HTTP server (API, webhooks, dashboard, status page), the dispatcher, and the periodic
    work (reminders, site quorum, Slack progress: one leading ``serve`` per deployment)."""
    from aiohttp import web

    from bot.app import build_app
    from bot.collector import tune
    from bot.event_loop import new_loop
    from bot.logs import configure_logging

    settings = settings_from(config)
    configure_logging()
    warn_without_key(settings)
    application = build_app(settings, with_scheduler=True, telegram_polling=telegram_polling)
    tune(settings.server.gc)
    web.run_app(
        application,
        host=host or settings.server.host,
        port=port or settings.server.port,
        print=None,
        loop=new_loop(settings.server.event_loop),
    )


@app.command()
def worker(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Dispatcher only; run any number of them against PostgreSQL."""
    from bot.app import open_runtime
    from bot.collector import tune
    from bot.event_loop import log_loop
    from bot.logs import configure_logging

    settings = settings_from(config)
    configure_logging()
    warn_without_key(settings)
    tune(settings.server.gc)

    async def go() -> None:
        import signal

        log_loop()
        async with open_runtime(settings, with_worker=True) as rt:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, rt.stop.set)
            assert rt.worker_task is not None
            await rt.worker_task

    run(go(), settings.server.event_loop)


# --- incidents -----------------------------------------------------------------------------
def _read_declaration(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{file}: no such file") from None
    except yaml.YAMLError as exc:
        raise BadInput(f"{file}: not valid YAML/JSON ({exc})") from None


@app.command()
def declare(
    config: ConfigOpt = DEFAULT_CONFIG,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Declaration YAML/JSON.")
    ] = None,
    title: Annotated[str | None, typer.Option()] = None,
    system: Annotated[list[str] | None, typer.Option(help="Affected system (repeat).")] = None,
    unaffected: Annotated[list[str] | None, typer.Option(help="Unaffected system.")] = None,
    impact: Annotated[list[str] | None, typer.Option()] = None,
    site: Annotated[list[str] | None, typer.Option()] = None,
    severity: Annotated[str | None, typer.Option(help="minor, major or critical.")] = None,
    cause: Annotated[str | None, typer.Option()] = None,
    claim: Annotated[list[str] | None, typer.Option(help="e.g. no_patient_impact.")] = None,
    audience: Annotated[list[str] | None, typer.Option(help="Audience (repeat).")] = None,
    locale: Annotated[str | None, typer.Option()] = None,
    wait: Annotated[bool, typer.Option(help="Follow the fan-out until done.")] = True,
    as_: AsOpt = None,
) -> None:
    """Declare an outage (flags or --file), then follow its fan-out."""
    data: dict[str, Any] = {}
    if file is not None:
        loaded = _read_declaration(file)
        if not isinstance(loaded, dict):
            raise BadInput(f"{file}: the declaration must be a mapping")
        data.update(loaded)
    flags = {
        "title": title,
        "systems": system,
        "unaffected": unaffected,
        "impact": impact,
        "sites": site,
        "severity": severity,
        "cause": cause,
        "claims": claim,
        "audiences": audience,
        "locale": locale,
    }
    data.update({k: v for k, v in flags.items() if v})
    draft = IncidentDraft.from_mapping(data)
    settings = settings_from(config)

    async def go() -> None:
        from bot.app import open_runtime
        from bot.interfaces.progress import follow_fan_out

        async with open_runtime(settings, with_channels=False) as rt:
            incident = await rt.service.declare(actor(as_, rt.settings), draft)
            console.print(f"Declared [bold]{incident.id}[/]: {incident.title}")
            if wait:
                await follow_fan_out(rt.queries, READER, incident.id, console)

    run(go())


@app.command()
def update(
    incident_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOpt = DEFAULT_CONFIG,
    status: Annotated[str | None, typer.Option()] = None,
    message: Annotated[str | None, typer.Option("--message", "-m")] = None,
    as_: AsOpt = None,
) -> None:
    """A status change and/or a message to the incident's audiences."""
    settings = settings_from(config)

    async def go() -> None:
        from bot.app import open_runtime

        async with open_runtime(settings, with_channels=False) as rt:
            incident = await rt.service.update(
                actor(as_, rt.settings), incident_id, status, message
            )
            console.print(f"{incident.id} is now [bold]{incident.status.value}[/]")

    run(go())


@app.command()
def resolve(
    incident_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOpt = DEFAULT_CONFIG,
    message: Annotated[str | None, typer.Option("--message", "-m")] = None,
    as_: AsOpt = None,
) -> None:
    """Resolve an incident and send the resolution statements."""
    settings = settings_from(config)

    async def go() -> None:
        from bot.app import open_runtime

        async with open_runtime(settings, with_channels=False) as rt:
            incident = await rt.service.resolve(actor(as_, rt.settings), incident_id, message)
            console.print(f"{incident.id} resolved")

    run(go())


@app.command()
def statement(
    incident_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOpt = DEFAULT_CONFIG,
    kind: Annotated[
        str, typer.Option(help="internal, department_heads, press, public, sms")
    ] = "press",
    locale: Annotated[str | None, typer.Option()] = None,
    approve: Annotated[bool, typer.Option("--approve", help="Approve the latest draft.")] = False,
    as_: AsOpt = None,
) -> None:
    """Show the latest statement of a kind; --approve publishes a draft (four-eyes)."""
    try:
        wanted = StatementKind(kind)
    except ValueError:
        raise BadInput(f"unknown kind {kind!r}") from None
    settings = settings_from(config)

    async def go() -> None:
        from bot.app import open_runtime

        async with open_runtime(settings, with_channels=False) as rt:
            incident = await rt.queries.incident(READER, incident_id)
            chosen = [
                s
                for s in await rt.queries.statements(READER, incident.id)
                if s.kind == wanted and s.locale == (locale or incident.locale)
            ]
            if not chosen:
                raise NotFound(f"no {kind} statement for {incident_id}")
            latest = max(chosen, key=lambda s: (s.seq, s.version))
            if approve:
                latest = await rt.service.approve_statement(actor(as_, rt.settings), latest.id)
            console.print(
                f"[bold]{latest.id}[/] {latest.kind.value} {latest.locale} "
                f"v{latest.version} [{latest.status.value}] by {latest.author}"
                + (f", approved by {latest.approved_by}" if latest.approved_by else "")
            )
            console.print(latest.text, highlight=False, markup=False)

    run(go())


# --- templates and schema ------------------------------------------------------------------
@templates_app.command("check")
def templates_check(
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="TOCSIN_CONFIG")] = None,
) -> None:
    """Render every template against the example incident; fail with file:line on errors."""
    from bot.app import build_renderer
    from bot.domain.rendering import sample_context

    settings = settings_from(config) if config else Settings()
    problems = build_renderer(settings).check(sample_context(), settings.organisation.locales)
    for problem in problems:
        err.print(str(problem), highlight=False, markup=False)
    if problems:
        raise typer.Exit(2)
    console.print("templates: ok")


@templates_app.command("preview")
def templates_preview(
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="TOCSIN_CONFIG")] = None,
) -> None:
    """Print every template rendered against the example incident."""
    from bot.app import build_renderer
    from bot.domain.rendering import sample_context

    settings = settings_from(config) if config else Settings()
    for path, output in build_renderer(settings).preview(
        sample_context(), settings.organisation.locales
    ):
        console.rule(path)
        console.print(output, highlight=False, markup=False)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Apply pending schema migrations."""
    settings = settings_from(config)

    async def go() -> list[str]:
        from bot.store import open_store

        store = open_store(settings.database_url)
        await store.open()
        try:
            return await store.migrate()
        finally:
            await store.close()

    applied = run(go())
    console.print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


@app.command()
def demo(
    exit_when_done: Annotated[
        bool, typer.Option("--exit", help="Return once nothing is queued, sending or retrying.")
    ] = False,
    port: Annotated[int, typer.Option(help="Dashboard port (0: any free port).")] = 8080,
) -> None:
    """The Orbis outage of 30 August 2023, end to end, on local sandbox gateways."""
    try:  # the stand-ins are a distribution of their own (sandbox/), absent from servers
        from tocsin_sandbox.demo import run_demo
    except ModuleNotFoundError as exc:
        if exc.name not in {"tocsin_sandbox", "tocsin_sandbox.demo", "aiosmtpd"}:
            raise
        err.print(
            "error: the demo's stand-ins are not installed: pip install 'tocsin[demo]'"
            " (in a checkout: make demo, or pip install -e ./sandbox)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        sys.exit(1)

    code = run(run_demo(console, exit_when_done=exit_when_done, port=port))
    raise typer.Exit(code)


if __name__ == "__main__":
    main()
