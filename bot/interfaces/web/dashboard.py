"""The crisis cell's dashboard: incidents, one incident's statements, timeline and deliveries
(with live progress over server-sent events), and the press office's edit/approve forms."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

import bot.interfaces.web.pages as pages
import bot.interfaces.web.session as session
from bot.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from bot.domain.masking import scrub
from bot.domain.models import Actor, Incident, Role, Statement, StatementKind, StatementStatus
from bot.domain.queries import IncidentQueries
from bot.interfaces import serialize
from bot.interfaces.deps import QUERIES, SERVICE, SETTINGS
from bot.ports import Page

log = logging.getLogger("tocsin.web")

COLUMNS = (
    "queued",
    "sending",
    "retrying",
    "sent",
    "delivered",
    "acknowledged",
    "failed",
    "cancelled",
)
PENDING = ("queued", "sending", "retrying")
POLL_S = 1.0  # callbacks and other processes' workers change counts without a local pulse
MIN_GAP_S = 0.2  # at most five pushes a second, however busy the worker
KEEPALIVE_S = 15.0
DRILL_LIMIT = 500
NOTICES = {
    "confirmed": "Draft confirmed: the statements are on their way.",
    "edited": "New version saved. A second person with the press role must approve it.",
    "approved": "Statement approved: it is being sent to its audiences.",
}


async def progress(queries: IncidentQueries, actor: Actor, incident_id: str) -> dict[str, Any]:
    """Delivery counts of an incident, by state and by audience × channel × state."""
    rows: dict[tuple[str, str], dict[str, int]] = {}
    counts = dict.fromkeys(COLUMNS, 0)
    for audience, channel, state, n in await queries.delivery_matrix(actor, incident_id):
        rows.setdefault((audience, channel), dict.fromkeys(COLUMNS, 0))[state] = n
        counts[state] = counts.get(state, 0) + n
    total = sum(counts.values())
    pending = sum(counts[s] for s in PENDING)
    return {
        "total": total,
        "pending": pending,
        "done": total - pending,
        "counts": counts,
        "rows": [
            {"audience": a, "channel": c, "states": states, "total": sum(states.values())}
            for (a, c), states in sorted(rows.items())
        ],
    }


def statement_groups(
    statements: Sequence[Statement], audiences: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """Current statements per event (latest first), per kind and locale."""
    events: dict[int, dict[str, Any]] = {}
    order = list(StatementKind)
    for st in statements:
        if st.status == StatementStatus.SUPERSEDED:
            continue
        event = events.setdefault(st.seq, {"seq": st.seq, "event": st.event, "kinds": {}})
        kind = event["kinds"].setdefault(
            st.kind.value,
            {"kind": st.kind.value, "audiences": audiences.get(st.kind.value, []), "items": []},
        )
        kind["items"].append(st)
    for event in events.values():
        event["kinds"] = sorted(
            event["kinds"].values(), key=lambda k: order.index(StatementKind(k["kind"]))
        )
    return [events[seq] for seq in sorted(events, reverse=True)]


async def _incident(request: web.Request, actor: Actor) -> Incident:
    incident = await request.app[QUERIES].find_incident(actor, request.match_info["id"])
    if incident is None:
        page = session.render(
            request,
            "message.html.j2",
            status=404,
            title="Not found",
            message=f"No incident {request.match_info['id']}.",
        )
        raise web.HTTPNotFound(text=page.text, content_type="text/html")
    return incident


async def index(request: web.Request) -> web.StreamResponse:
    """``GET /``: the incidents, latest first, with their pending deliveries."""
    actor = session.require_user(request)
    queries = request.app[QUERIES]
    incidents = await queries.incidents(actor, Page(limit=200))
    pending = {i.id: await queries.pending_count(actor, i.id) for i in incidents[:50]}
    health = await queries.channel_health(actor)
    return session.render(
        request, "index.html.j2", incidents=incidents, pending=pending, health=health
    )


async def incident_page(request: web.Request) -> web.StreamResponse:
    """``GET /incidents/{id}``: everything about one incident."""
    actor = session.require_user(request)
    queries = request.app[QUERIES]
    incident = await _incident(request, actor)
    audiences: dict[str, list[str]] = {}
    for name, cfg in request.app[SETTINGS].audiences.items():
        audiences.setdefault(cfg.statement.value, []).append(name)
    claims = []
    for key in incident.claims:
        try:
            claims.append((key, request.app[SERVICE].renderer.claim_text(key, incident.locale)))
        except InvalidInput:
            claims.append((key, key))
    return session.render(
        request,
        "incident.html.j2",
        incident=incident,
        timeline=await queries.timeline(actor, incident.id),
        events=statement_groups(await queries.statements(actor, incident.id), audiences),
        progress=await progress(queries, actor, incident.id),
        columns=COLUMNS,
        claims=claims,
        can_press=actor.can(Role.PRESS),
        can_respond=actor.can(Role.RESPONDER),
        notice=NOTICES.get(request.query.get("notice", "")),
    )


async def drill_down(request: web.Request) -> web.StreamResponse:
    """``GET /incidents/{id}/deliveries``: each recipient's deliveries and attempts (masked)."""
    actor = session.require_user(request)
    queries = request.app[QUERIES]
    incident = await _incident(request, actor)
    wanted = {k: request.query[k] for k in ("audience", "channel", "state") if request.query.get(k)}
    rows = [
        d
        for d in await queries.all_deliveries(actor, incident.id)
        if all(str(getattr(d, k)) == v for k, v in wanted.items())
    ]
    shown = rows[:DRILL_LIMIT]
    attempts = await queries.attempts(actor, [d.id for d in shown])
    deliveries = []
    timezone = request.app[SETTINGS].organisation.timezone
    for d in shown:
        data = serialize.delivery_json(d, attempts[d.id])
        for attempt, raw in zip(data["attempts"], attempts[d.id], strict=True):
            attempt["at"] = pages.local_time(raw.at, timezone)
            attempt["error"] = scrub(attempt["error"]) if attempt["error"] else None
        deliveries.append(data)
    return session.render(
        request,
        "deliveries.html.j2",
        incident=incident,
        filters=wanted,
        deliveries=deliveries,
        total=len(rows),
    )


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /incidents/{id}/events``: server-sent ``progress`` events whenever counts change."""
    actor = session.current(request).actor
    if actor is None:
        raise web.HTTPUnauthorized(text="log in first")
    queries = request.app[QUERIES]
    incident = await _incident(request, actor)
    state = request.app[pages.WEB]
    # aiohttp-sse keeps the stream alive (a comment every KEEPALIVE_S) and drops a client that
    # stops reading; "\n" as separator is what every EventSource reads.
    response = EventSourceResponse(sep="\n", ping_interval=KEEPALIVE_S)
    response.headers["Cache-Control"] = "no-store"
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    last: dict[str, Any] | None = None
    async with response:
        try:
            await response.write(b"retry: 2000\n\n")
            while not state.closing.is_set() and response.is_connected():
                if request.transport is None or request.transport.is_closing():
                    break  # the browser went away
                data = await progress(queries, actor, incident.id)
                if data != last:
                    await response.send(json.dumps(data, separators=(",", ":")), event="progress")
                    last = data
                started = loop.time()
                await state.pulse.wait(POLL_S, state.closing)
                gap = MIN_GAP_S - (loop.time() - started)
                if gap > 0 and not state.closing.is_set():
                    await asyncio.sleep(gap)  # throttling pushes, not synchronising
        except ConnectionResetError:
            pass  # the browser went away
    return response


def _back(incident_id: str, notice: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/incidents/{incident_id}?notice={notice}#statements")


def _refused(request: web.Request, status: int, message: str) -> web.Response:
    log.info("rejected %s %s: %s", request.method, request.path, status)
    return session.render(
        request, "message.html.j2", status=status, title="Not done", message=message
    )


async def confirm(request: web.Request) -> web.StreamResponse:
    """``POST /incidents/{id}/confirm``: a responder confirms a draft; it is sent."""
    actor = session.require_user(request, Role.RESPONDER)
    await session.checked_form(request)
    try:
        incident = await request.app[SERVICE].confirm(actor, request.match_info["id"])
    except NotFound as exc:
        return _refused(request, 404, str(exc))
    except Conflict as exc:
        return _refused(request, 409, str(exc))
    raise _back(incident.id, "confirmed")


async def edit_statement(request: web.Request) -> web.StreamResponse:
    """``POST /statements/{id}/edit``: a press-role person saves a new version of a draft."""
    actor = session.require_user(request, Role.PRESS)
    form = await session.checked_form(request)
    try:
        edited = await request.app[SERVICE].edit_statement(
            actor, request.match_info["id"], form.get("text", "")
        )
    except NotFound as exc:
        return _refused(request, 404, str(exc))
    except InvalidInput as exc:
        return _refused(request, 422, f"{exc}: {exc.detail}")
    except Conflict as exc:
        return _refused(request, 409, str(exc))
    raise _back(edited.incident_id, "edited")


async def approve_statement(request: web.Request) -> web.StreamResponse:
    """``POST /statements/{id}/approve``: a second press-role person approves (four eyes)."""
    actor = session.require_user(request, Role.PRESS)
    await session.checked_form(request)
    try:
        approved = await request.app[SERVICE].approve_statement(actor, request.match_info["id"])
    except NotFound as exc:
        return _refused(request, 404, str(exc))
    except Forbidden as exc:
        return _refused(request, 403, str(exc))
    except Conflict as exc:
        return _refused(request, 409, str(exc))
    raise _back(approved.incident_id, "approved")


async def _closing(app: web.Application) -> None:
    # Open event streams end at shutdown instead of holding it for the grace period.
    app[pages.WEB].closing.set()


def add_routes(app: web.Application) -> None:
    """Mount the dashboard's pages, forms and event stream."""
    app.router.add_get("/", index)
    app.router.add_get("/incidents/{id}", incident_page)
    app.router.add_get("/incidents/{id}/deliveries", drill_down)
    app.router.add_get("/incidents/{id}/events", events)
    app.router.add_post("/incidents/{id}/confirm", confirm)
    app.router.add_post("/statements/{id}/edit", edit_statement)
    app.router.add_post("/statements/{id}/approve", approve_statement)
    app.on_shutdown.append(_closing)
