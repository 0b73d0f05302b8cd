"""``tocsin`` commands that show and report: status, deliveries, claims, report, status page."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bot.domain.masking import scrub_provider_error
from bot.interfaces.cli_support import (
    DEFAULT_CONFIG,
    READER,
    AsOpt,
    BadInput,
    ConfigOpt,
    actor,
    app,
    claim_app,
    console,
    run,
    settings_from,
    status_page_app,
)


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
                incident = await rt.queries.incident(READER, incident_id)
                counts = await rt.queries.delivery_counts(READER, incident.id)
                if as_json:
                    timeline = await rt.queries.timeline(READER, incident.id)
                    data = serialize.incident_json(incident, timeline)
                    data["counts"] = serialize.counts_json(counts)
                    console.print_json(json.dumps(data))
                    return
                console.print(
                    f"[bold]{incident.id}[/] {incident.title} — "
                    f"{incident.severity.value}, {incident.status.value}"
                )
                console.print(await report_table(rt.queries, READER, incident.id))
                if by_site:
                    console.print(await sites_table(rt, incident.id))
                return
            table = Table(title="Incidents")
            for column in ("id", "status", "severity", "title", *STATE_ORDER):
                table.add_column(column)
            for incident in await rt.queries.incidents(READER):
                counts = await rt.queries.delivery_counts(READER, incident.id)
                table.add_row(
                    incident.id,
                    incident.status.value,
                    incident.severity.value,
                    incident.title,
                    *(str(counts.get(s, 0)) for s in STATE_ORDER),
                )
            console.print(table)
            health = await rt.queries.channel_health(READER)
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
            incident = await rt.queries.incident(READER, incident_id)
            rows = await rt.queries.deliveries(READER, incident.id)
            attempts = await rt.queries.attempts(READER, [d.id for d in rows])
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
                    scrub_provider_error(d.last_error or ""),
                )
            console.print(table)

    run(go())


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
            return await StatusPage(rt.settings, rt.queries).files()

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
            drafts = await rt.service.retract_claim(
                actor(as_, rt.settings), incident_id, claim, reason
            )
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
