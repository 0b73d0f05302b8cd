"""The web dashboard (server-rendered HTML, a little JavaScript for live progress).

Mount with :func:`add_routes` at build time and :func:`setup` once the worker is built.
"""

from __future__ import annotations

from aiohttp import web

from bot.delivery.worker import Dispatcher
from bot.interfaces.web import dashboard, pages, session


def add_routes(app: web.Application) -> None:
    """Mount the login pages and the dashboard."""
    app[pages.WEB] = pages.WebState()
    session.add_routes(app)
    dashboard.add_routes(app)


def setup(app: web.Application, dispatcher: Dispatcher | None) -> None:
    """Push live progress as soon as the worker records outcomes (else pages poll each second)."""
    if dispatcher is None or pages.WEB not in app:
        return
    beat = app[pages.WEB].pulse.beat
    if beat not in dispatcher.observers:
        dispatcher.observers.append(beat)
