"""The ``tocsin`` command line (Typer + rich). Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table

from bot.config import ConfigError, Settings, load_settings
from bot.domain.declarations import IncidentDraft
from bot.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, TocsinError
from bot.domain.models import Actor, Role, StatementKind

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Tocsin: incident communication that tracks every delivery.",
)
templates_app = typer.Typer(no_args_is_help=True, help="Check or preview statement templates.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(templates_app, name="templates")
app.add_typer(db_app, name="db")
status_page_app = typer.Typer(no_args_is_help=True, help="The public status page.")
claim_app = typer.Typer(no_args_is_help=True, help="Claims made by statements.")
app.add_typer(status_page_app, name="status-page")
app.add_typer(claim_app, name="claim")

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", envvar="TOCSIN_CONFIG", help="Configuration file.")
]
AsOpt = Annotated[str | None, typer.Option("--as", help="Your name, for the timeline.")]
DEFAULT_CONFIG = Path("tocsin.yaml")


class BadInput(Exception):
    """Exit 2 with this one-line reason."""


def settings_from(path: Path) -> Settings:
    return load_settings(path)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def actor(name: str | None) -> Actor:
    # The CLI runs on a machine with the database: it holds every role.
    return Actor(name or os.environ.get("TOCSIN_USER") or getpass.getuser(), Role.ADMIN)


def main() -> None:
    """Entry point: maps failures to exit codes with a one-line reason on stderr."""
    try:
        app(standalone_mode=False)
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
    """HTTP server (API, webhooks, dashboard, status page) plus the dispatcher."""
    from aiohttp import web

    from bot.app import build_app
    from bot.logs import configure_logging

    settings = settings_from(config)
    configure_logging()
    if telegram_polling:
        os.environ["TOCSIN_TELEGRAM_POLLING"] = "1"
    web.run_app(
        build_app(settings),
        host=host or settings.server.host,
        port=port or settings.server.port,
        print=None,
    )


@app.command()
def worker(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Dispatcher only; run any number of them against PostgreSQL."""
    from bot.app import open_runtime
    from bot.logs import configure_logging

    settings = settings_from(config)
    configure_logging()

    async def go() -> None:
        import signal

        async with open_runtime(settings, with_worker=True) as rt:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, rt.stop.set)
            assert rt.worker_task is not None
            await rt.worker_task

    run(go())


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
            incident = await rt.service.declare(actor(as_), draft)
            console.print(f"Declared [bold]{incident.id}[/]: {incident.title}")
            if wait:
                await follow_fan_out(rt.store, incident.id, console)

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
            incident = await rt.service.update(actor(as_), incident_id, status, message)
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
            incident = await rt.service.resolve(actor(as_), incident_id, message)
            console.print(f"{incident.id} resolved")

    run(go())


@app.command()
def status(
    incident_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    by_site: Annotated[bool, typer.Option("--by-site", help="Confirmations per site.")] = False,
) -> None:
    """Incidents with delivery counts by state (or one incident in detail), channel health."""
    settings = settings_from(config)

    async def go() -> None:
        from bot.app import open_runtime
        from bot.interfaces import serialize
        from bot.interfaces.progress import STATE_ORDER, report_table

        async with open_runtime(settings, with_channels=False) as rt:
            if incident_id is not None:
                incident = await rt.service.get(incident_id)
                counts = await rt.store.delivery_counts(incident.id)
                if as_json:
                    data = serialize.incident_json(incident, await rt.store.timeline(incident.id))
                    data["counts"] = serialize.counts_json(counts)
                    console.print_json(json.dumps(data))
                    return
                console.print(
                    f"[bold]{incident.id}[/] {incident.title} — "
                    f"{incident.severity.value}, {incident.status.value}"
                )
                console.print(await report_table(rt.store, incident.id))
                if by_site:
                    console.print(await sites_table(rt, incident.id))
                return
            table = Table(title="Incidents")
            for column in ("id", "status", "severity", "title", *STATE_ORDER):
                table.add_column(column)
            for incident in await rt.store.list_incidents():
                counts = await rt.store.delivery_counts(incident.id)
                table.add_row(
                    incident.id,
                    incident.status.value,
                    incident.severity.value,
                    incident.title,
                    *(str(counts.get(s, 0)) for s in STATE_ORDER),
                )
            console.print(table)
            health = await rt.store.channel_health()
            if health:
                providers = Table(title="Channel health")
                for column in ("provider", "state", "since", "last error"):
                    providers.add_column(column)
                for name, state, since, detail in health:
                    providers.add_row(
                        name, state, since.isoformat(timespec="seconds"), detail or ""
                    )
                console.print(providers)

    run(go())


async def sites_table(rt: Any, incident_id: str) -> Table:
    """Confirmations per site, for ``status --by-site``."""
    from bot.domain.quorum import site_views

    table = Table(title="Confirmations by site")
    for column in ("site", "confirmed", "needed", "by", "escalated"):
        table.add_column(column)
    for view in await site_views(rt.service, incident_id):
        table.add_row(
            view.site,
            str(view.confirmed),
            str(view.needed),
            ", ".join(f"{name} {at:%H:%M}" for name, at in view.by) or "none yet",
            "yes" if view.escalated else "",
        )
    return table


@app.command()
def report(
    incident_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOpt = DEFAULT_CONFIG,
    fmt: Annotated[str, typer.Option("--format", help="md, html or json")] = "md",
) -> None:
    """The post-incident report."""
    if fmt not in ("md", "html", "json"):
        raise BadInput("--format must be md, html or json")
    settings = settings_from(config)

    async def go() -> str:
        from bot.app import open_runtime
        from bot.domain.report import build_report
        from bot.interfaces.report_format import to_html, to_markdown

        async with open_runtime(settings, with_channels=False) as rt:
            data = await build_report(rt.service, incident_id)
        if fmt == "json":
            return json.dumps(data, ensure_ascii=False, indent=2)
        return to_markdown(data) if fmt == "md" else to_html(data)

    sys.stdout.write(run(go()))


@app.command()
def deliveries(
    incident_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Every delivery of an incident, recipients masked."""
    settings = settings_from(config)

    async def go() -> None:
        from bot.app import open_runtime
        from bot.interfaces import serialize

        async with open_runtime(settings, with_channels=False) as rt:
            incident = await rt.service.get(incident_id)
            rows = await rt.store.deliveries(incident.id)
            attempts = await rt.store.attempts([d.id for d in rows])
            table = Table(title=f"Deliveries of {incident.id}")
            for column in (
                "id",
                "audience",
                "channel",
                "recipient",
                "state",
                "attempts",
                "last error",
            ):
                table.add_column(column)
            for d in rows:
                shown = serialize.delivery_json(d, attempts[d.id])
                table.add_row(
                    str(d.id),
                    d.audience,
                    d.channel.value,
                    shown["recipient"],
                    d.state.value,
                    str(len(attempts[d.id])),
                    d.last_error or "",
                )
            console.print(table)

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
            incident = await rt.service.get(incident_id)
            chosen = [
                s
                for s in await rt.store.statements(incident.id)
                if s.kind == wanted and s.locale == (locale or incident.locale)
            ]
            if not chosen:
                raise NotFound(f"no {kind} statement for {incident_id}")
            latest = max(chosen, key=lambda s: (s.seq, s.version))
            if approve:
                latest = await rt.service.approve_statement(actor(as_), latest.id)
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


@status_page_app.command("export")
def status_page_export(
    folder: Annotated[Path, typer.Argument(metavar="DIR")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Write the public status page and feed as static files (to host elsewhere)."""
    settings = settings_from(config)

    async def go() -> dict[str, bytes]:
        from bot.app import open_runtime
        from bot.interfaces.status_page import StatusPage

        async with open_runtime(settings, with_channels=False) as rt:
            return await StatusPage(rt).files()

    site = run(go())
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in site.items():
        (folder / name).write_bytes(content)
    console.print(f"wrote {', '.join(sorted(site))} to {folder}")


@claim_app.command("retract")
def claim_retract(
    incident_id: Annotated[str, typer.Argument(metavar="ID")],
    claim: Annotated[str, typer.Argument(metavar="CLAIM")],
    reason: Annotated[str, typer.Option(help="Why the claim no longer holds.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    as_: AsOpt = None,
) -> None:
    """Draft a correction of a claim for exactly the audiences that received it."""
    settings = settings_from(config)

    async def go() -> None:
        from bot.app import open_runtime

        async with open_runtime(settings, with_channels=False) as rt:
            drafts = await rt.service.retract_claim(actor(as_), incident_id, claim, reason)
            for draft in drafts:
                console.print(
                    f"[bold]{draft.id}[/] correction ({draft.locale}) for "
                    f"{', '.join(draft.audiences) or 'nobody'} — awaiting approval"
                )

    run(go())


@app.command()
def claims(
    incident_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """The claims an incident's statements made, their status and reach."""
    settings = settings_from(config)

    async def go() -> None:
        from bot.app import open_runtime

        async with open_runtime(settings, with_channels=False) as rt:
            table = Table(title=f"Claims of {incident_id}")
            for column in ("claim", "status", "audiences", "recipients", "wording"):
                table.add_column(column)
            for view in await rt.service.claims(incident_id):
                table.add_row(
                    view.key,
                    view.status,
                    ", ".join(view.audiences),
                    str(view.recipients),
                    view.text,
                )
            console.print(table)

    run(go())


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
    from bot.sandbox.demo import run_demo

    code = run(run_demo(console, exit_when_done=exit_when_done, port=port))
    raise typer.Exit(code)


if __name__ == "__main__":
    main()
