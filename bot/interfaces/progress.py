"""Terminal views: live fan-out progress and the delivery report (rich)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.domain.models import Actor, DeliveryState
from bot.domain.queries import IncidentQueries

PENDING = {DeliveryState.QUEUED.value, DeliveryState.SENDING.value, DeliveryState.RETRYING.value}
STATE_ORDER = [s.value for s in DeliveryState]


async def follow_fan_out(
    queries: IncidentQueries,
    reader: Actor,
    incident_id: str,
    console: Console,
    *,
    timeout: float = 600.0,
    on_tick: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, int]:
    """Show a progress bar until no delivery of the incident is queued, sending or retrying."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[states]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"Fan-out {incident_id}", total=None, states="")
        while True:
            counts = await queries.delivery_counts(reader, incident_id)
            total = sum(counts.values())
            pending = sum(n for state, n in counts.items() if state in PENDING)
            progress.update(
                task,
                total=total,
                completed=total - pending,
                states=" ".join(f"{s}={counts[s]}" for s in STATE_ORDER if counts.get(s)),
            )
            if pending == 0 or loop.time() > deadline:
                return counts
            if on_tick is not None:
                await on_tick()
            await queries.wait_for_change(0.2)


async def report_table(queries: IncidentQueries, reader: Actor, incident_id: str) -> Table:
    """Counts by audience × channel × state."""
    matrix = await queries.delivery_matrix(reader, incident_id)
    states = [s for s in STATE_ORDER if any(row[2] == s for row in matrix)]
    table = Table(title=f"Deliveries of {incident_id}")
    table.add_column("audience")
    table.add_column("channel")
    for state in states:
        table.add_column(state, justify="right")
    table.add_column("total", justify="right")
    grouped: dict[tuple[str, str], dict[str, int]] = {}
    for audience, channel, state, n in matrix:
        grouped.setdefault((audience, channel), {})[state] = n
    for (audience, channel), counts in sorted(grouped.items()):
        table.add_row(
            audience, channel, *(str(counts.get(s, "")) for s in states), str(sum(counts.values()))
        )
    return table
