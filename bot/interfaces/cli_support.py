"""What every ``tocsin`` command shares: the Typer apps, consoles, options, helpers."""

from __future__ import annotations

import asyncio
import getpass
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from bot.config import Settings, load_settings
from bot.domain.models import ROLE_RANK, Actor, Role
from bot.event_loop import EventLoopName, loop_factory

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


# Who reads from this terminal (status, deliveries): whoever holds the configuration and the
# database may read everything; acting still needs ``--as`` (see :func:`actor`).
READER = Actor("cli", Role.VIEWER)


class BadInput(Exception):
    """Exit 2 with this one-line reason."""


def settings_from(path: Path) -> Settings:
    """The validated configuration (ConfigError names the file, key and reason)."""
    return load_settings(path)


def run(coro: Coroutine[Any, Any, T], event_loop: EventLoopName = "asyncio") -> T:
    """Run one command's coroutine (on uvloop when ``event_loop`` says so)."""
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        return runner.run(coro)


def actor(name: str | None, settings: Settings) -> Actor:
    """Who acts from this terminal: ``--as``, ``TOCSIN_USER`` or the login name, which must
    be a person named in ``auth`` (a ``person:`` key), with that person's roles and no more.
    Four-eyes compares people: the CLI cannot stand in for another token or chat user."""
    who = name or os.environ.get("TOCSIN_USER") or getpass.getuser()
    roles = settings.auth.persons().get(who)
    if not roles:
        raise BadInput(f"--as must name a person configured in auth (person: ...), not {who!r}")
    ordered = sorted(roles, key=lambda r: (-ROLE_RANK[r], r.value))
    return Actor(who, ordered[0], tuple(ordered[1:]))
