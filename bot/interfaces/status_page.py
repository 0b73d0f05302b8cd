"""The public status page and its Atom feed: only approved public statements ever appear.

Served at ``/status`` and ``/status/feed.atom``; ``tocsin status-page export DIR`` writes the
same as static files, to host outside the organisation's own network during an outage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from xml.etree import ElementTree as ET
from zoneinfo import ZoneInfo

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from bot.config import Settings
from bot.domain.models import Incident, IncidentStatus, Statement
from bot.domain.queries import IncidentQueries
from bot.interfaces.deps import QUERIES, SERVICE, SETTINGS

ATOM = "http://www.w3.org/2005/Atom"
LABELS = {
    "fr": {
        "title": "État des services",
        "current": "Incidents en cours",
        "recent": "Incidents récents",
        "none": "Aucun incident en cours.",
        "affected": "Affecté",
        "unaffected": "Fonctionne normalement",
        "updated": "Mis à jour",
        "feed": "Flux Atom",
        "resolved": "Résolu",
    },
    "en": {
        "title": "Service status",
        "current": "Current incidents",
        "recent": "Recent incidents",
        "none": "No current incident.",
        "affected": "Affected",
        "unaffected": "Working normally",
        "updated": "Updated",
        "feed": "Atom feed",
        "resolved": "Resolved",
    },
}


@dataclass(frozen=True)
class PublicIncident:
    """What the public may see of one incident."""

    incident: Incident
    statement: Statement
    history: tuple[Statement, ...]

    @property
    def current(self) -> bool:
        return self.incident.status != IncidentStatus.RESOLVED


async def public_incidents(
    queries: IncidentQueries, locale: str, limit: int = 50
) -> list[PublicIncident]:
    """Incidents with at least one published public statement, newest first."""
    shown: list[PublicIncident] = []
    for incident, published in await queries.published_statements(limit):
        mine = [s for s in published if s.locale == locale] or [
            s for s in published if s.locale == incident.locale
        ]
        if not mine:
            continue
        mine.sort(key=lambda s: (s.seq, s.version))
        shown.append(PublicIncident(incident, mine[-1], tuple(reversed(mine))))
    return shown


class StatusPage:
    """Renders the page and the feed for one organisation."""

    def __init__(self, settings: Settings, queries: IncidentQueries) -> None:
        self.settings = settings
        self.queries = queries
        folder = Path(__file__).with_name("status_templates")
        self.env = Environment(
            loader=FileSystemLoader(folder), autoescape=select_autoescape(["html", "j2"])
        )
        zone = ZoneInfo(settings.organisation.timezone)
        self.env.filters["local"] = lambda d: d.astimezone(zone).strftime("%d/%m/%Y %H:%M")

    def locale(self, wanted: str | None) -> str:
        locales = self.settings.organisation.locales
        return wanted if wanted in locales else self.settings.organisation.locale

    async def html(self, wanted: str | None, *, static: bool = False) -> str:
        locale = self.locale(wanted)
        items = await public_incidents(self.queries, locale)
        links = {
            lc: (f"index.{lc}.html" if static else f"?lang={lc}")
            for lc in self.settings.organisation.locales
        }
        return self.env.get_template("status.html.j2").render(
            org=self.settings.organisation.name,
            locale=locale,
            labels=LABELS.get(locale, LABELS["en"]),
            current=[i for i in items if i.current],
            recent=[i for i in items if not i.current][:20],
            links=links,
            feed="feed.atom" if static else "/status/feed.atom",
        )

    async def atom(self, wanted: str | None = None) -> bytes:
        locale = self.locale(wanted)
        base = self.settings.server.public_url.rstrip("/")
        items = await public_incidents(self.queries, locale)
        ET.register_namespace("", ATOM)
        feed = ET.Element(f"{{{ATOM}}}feed", {"xml:lang": locale})
        _text(
            feed,
            "title",
            f"{self.settings.organisation.name} — {LABELS.get(locale, LABELS['en'])['title']}",
        )
        _text(feed, "id", f"{base}/status/feed.atom")
        ET.SubElement(feed, f"{{{ATOM}}}link", {"rel": "self", "href": f"{base}/status/feed.atom"})
        ET.SubElement(feed, f"{{{ATOM}}}link", {"rel": "alternate", "href": f"{base}/status"})
        entries = sorted(
            (s for i in items for s in i.history), key=lambda s: s.created_at, reverse=True
        )
        newest = max((s.created_at for s in entries), default=datetime(2023, 1, 1).astimezone())
        _text(feed, "updated", newest.isoformat())
        author = ET.SubElement(feed, f"{{{ATOM}}}author")
        _text(author, "name", self.settings.organisation.name)
        for statement in entries:
            entry = ET.SubElement(feed, f"{{{ATOM}}}entry")
            _text(entry, "id", f"{base}/status#{statement.id}")
            _text(entry, "title", statement.bodies.get("subject") or statement.incident_id)
            _text(entry, "updated", statement.created_at.isoformat())
            ET.SubElement(
                entry, f"{{{ATOM}}}link", {"href": f"{base}/status#{statement.incident_id}"}
            )
            content = _text(entry, "content", statement.text)
            content.set("type", "text")
        return bytes(ET.tostring(feed, encoding="utf-8", xml_declaration=True))

    async def files(self) -> dict[str, bytes]:
        """The static site: index.html, index.<lang>.html and feed.atom."""
        site = {"index.html": (await self.html(None, static=True)).encode()}
        for locale in self.settings.organisation.locales:
            site[f"index.{locale}.html"] = (await self.html(locale, static=True)).encode()
        site["feed.atom"] = await self.atom()
        return site


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{ATOM}}}{tag}")
    element.text = text
    return element


class PublicCache:
    """The rendered page and feed, by locale: a public page is read far more often than it
    changes. Emptied when this process publishes a statement; ``ttl`` bounds how long a
    publication made by another process (the CLI, another server) takes to show."""

    ttl = 10.0

    def __init__(self) -> None:
        self.page: StatusPage | None = None
        self._entries: dict[tuple[str, str], tuple[float, bytes]] = {}

    def invalidate(self) -> None:
        self._entries.clear()

    def _page(self, app: web.Application) -> StatusPage:
        if self.page is None:
            self.page = StatusPage(app[SETTINGS], app[QUERIES])
            app[SERVICE].published.append(self.invalidate)
        return self.page

    async def get(self, app: web.Application, kind: str, wanted: str | None) -> bytes:
        page = self._page(app)
        key = (kind, page.locale(wanted))
        found = self._entries.get(key)
        now = time.monotonic()
        if found is not None and now - found[0] < self.ttl:
            return found[1]
        body = (await page.html(wanted)).encode() if kind == "html" else await page.atom(wanted)
        self._entries[key] = (now, body)
        return body


PUBLIC_CACHE = web.AppKey("public_cache", PublicCache)


async def status(request: web.Request) -> web.Response:
    body = await request.app[PUBLIC_CACHE].get(request.app, "html", request.query.get("lang"))
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "max-age=30"},
    )


async def feed(request: web.Request) -> web.Response:
    body = await request.app[PUBLIC_CACHE].get(request.app, "atom", request.query.get("lang"))
    return web.Response(body=body, content_type="application/atom+xml")


def add_routes(app: web.Application) -> None:
    app[PUBLIC_CACHE] = PublicCache()
    app.router.add_get("/status", status)
    app.router.add_get("/status/feed.atom", feed)
