"""HTTP API (aiohttp): parse, authorise, call the domain, answer JSON.

Errors always answer ``{"error": ..., "detail": ...}``; rejected requests are logged without
their payload.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.domain.declarations import IncidentDraft
from bot.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, TocsinError
from bot.domain.models import Actor, ChannelName, Delivery, DeliveryState, Role
from bot.domain.quorum import site_views
from bot.domain.rendering import TemplateError
from bot.domain.report import build_report
from bot.interfaces import api_models as m
from bot.interfaces import openapi, report_format, serialize, throttle
from bot.interfaces.deps import (
    AUTH,
    CHANNEL_NAMES,
    QUERIES,
    SERVICE,
    STARTED_AT,
    WORKER_ALIVE,
)
from bot.interfaces.idempotency import idempotent
from bot.interfaces.openapi import PAGED, operation
from bot.ports import IdempotencyKey, Page

log = logging.getLogger("tocsin.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unauthenticated(Exception):
    """No or unknown credentials (401)."""


class MalformedRequest(Exception):
    """A body that cannot be parsed (400)."""


def error(status: int, message: str, detail: Any = None) -> web.Response:
    return web.json_response({"error": message, "detail": detail}, status=status)


def middlewares() -> list[Any]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Unauthenticated as exc:
            return _rejected(request, 401, str(exc))
        except throttle.TooManyAttempts as exc:
            log.info("rejected %s %s: 429", request.method, request.path)
            return throttle.too_many(exc)
        except MalformedRequest as exc:
            return _rejected(request, 400, str(exc))
        except InvalidInput as exc:
            return _rejected(request, 422, str(exc), exc.detail)
        except NotFound as exc:
            return _rejected(request, 404, str(exc))
        except Forbidden as exc:
            return _rejected(request, 403, str(exc))
        except Conflict as exc:
            return _rejected(request, 409, str(exc))
        except TemplateError as exc:
            log.error("template error: %s", exc)
            return error(500, "a statement template failed to render", str(exc))
        except TocsinError as exc:
            return _rejected(request, 400, str(exc))
        except web.HTTPException as exc:
            if exc.status >= 400 and request.path.startswith("/api/"):
                return _rejected(request, exc.status, exc.reason)
            raise

    return [errors]


def _rejected(request: web.Request, status: int, message: str, detail: Any = None) -> web.Response:
    # Method, path and status only: the payload may hold personal data.
    log.info("rejected %s %s: %s", request.method, request.path, status)
    return error(status, message, detail)


def authorise(request: web.Request, role: Role) -> Actor:
    """The caller's actor, or 401 (no/unknown token) / 403 (missing role); a client whose
    unknown tokens keep coming gets 429 for a while (see :mod:`throttle`)."""
    header = request.headers.get("Authorization")
    limiter = request.app.get(throttle.THROTTLE)
    client = throttle.client_of(request)
    if header and limiter is not None:
        limiter.check(client)
    actor = request.app[AUTH].from_bearer(header)
    if actor is None:
        if header and limiter is not None:
            limiter.fail(client)
        raise Unauthenticated("missing or unknown token")
    if not actor.can(role):
        raise Forbidden(f"the {role.value} role is required")
    return actor


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MalformedRequest("malformed JSON") from None


MAX_OFFSET = 1_000_000_000


def page(request: web.Request) -> Page:
    try:
        limit = int(request.query.get("limit", "1000"))
        offset = int(request.query.get("offset", "0"))
    except ValueError:
        raise InvalidInput("limit and offset must be integers") from None
    # An offset past any real table still fits the databases' 64-bit integers.
    if not (1 <= limit <= 1000) or not (0 <= offset <= MAX_OFFSET):
        raise InvalidInput(f"limit must be 1–1000 and offset 0–{MAX_OFFSET}")
    return Page(limit, offset)


# --- incidents ---------------------------------------------------------------------------
@operation(
    "Declare an incident",
    m.Incident,
    status=201,
    role=Role.RESPONDER,
    body=m.Declaration,
    idempotent=True,
)
async def declare(request: web.Request) -> web.Response:
    actor = authorise(request, Role.RESPONDER)
    body = await json_body(request)
    service, queries = request.app[SERVICE], request.app[QUERIES]

    async def act(key: IdempotencyKey | None) -> tuple[int, Any]:
        draft = IncidentDraft.from_mapping(body)
        incident = await service.declare(actor, draft, idempotency=key)
        timeline = await queries.timeline(actor, incident.id)
        return 201, serialize.incident_json(incident, timeline)

    return await idempotent(request, actor, body, act)


@operation("List incidents", m.IncidentList, role=Role.VIEWER, query=PAGED)
async def list_incidents(request: web.Request) -> web.Response:
    actor = authorise(request, Role.VIEWER)
    incidents = await request.app[QUERIES].incidents(actor, page(request))
    return web.json_response({"incidents": [serialize.incident_json(i) for i in incidents]})


@operation("One incident with its timeline", m.Incident, role=Role.VIEWER)
async def get_incident(request: web.Request) -> web.Response:
    actor = authorise(request, Role.VIEWER)
    queries = request.app[QUERIES]
    incident = await queries.incident(actor, request.match_info["id"])
    timeline = await queries.timeline(actor, incident.id)
    return web.json_response(serialize.incident_json(incident, timeline))


@operation(
    "Status change and/or message",
    m.Incident,
    status=201,
    role=Role.RESPONDER,
    body=m.IncidentUpdate,
    idempotent=True,
)
async def update_incident(request: web.Request) -> web.Response:
    actor = authorise(request, Role.RESPONDER)
    body = await json_body(request)
    change = m.parse(m.IncidentUpdate, body)
    service = request.app[SERVICE]

    async def act(key: IdempotencyKey | None) -> tuple[int, Any]:
        incident = await service.update(
            actor,
            request.match_info["id"],
            change.status,
            change.message,
            idempotency=key,
        )
        return 201, serialize.incident_json(incident)

    return await idempotent(request, actor, body, act)


@operation(
    "Resolve an incident",
    m.Incident,
    status=201,
    role=Role.RESPONDER,
    body=m.Resolution,
    body_required=False,
)
async def resolve_incident(request: web.Request) -> web.Response:
    actor = authorise(request, Role.RESPONDER)
    body = await json_body(request) if request.can_read_body else {}
    resolution = m.parse(m.Resolution, body)
    incident = await request.app[SERVICE].resolve(
        actor, request.match_info["id"], resolution.message
    )
    return web.json_response(serialize.incident_json(incident), status=201)


@operation("Confirm a draft incident", m.Incident, status=201, role=Role.RESPONDER)
async def confirm_incident(request: web.Request) -> web.Response:
    actor = authorise(request, Role.RESPONDER)
    incident = await request.app[SERVICE].confirm(actor, request.match_info["id"])
    return web.json_response(serialize.incident_json(incident), status=201)


# --- statements --------------------------------------------------------------------------
@operation("Rendered statements", m.StatementList, role=Role.VIEWER)
async def list_statements(request: web.Request) -> web.Response:
    actor = authorise(request, Role.VIEWER)
    queries = request.app[QUERIES]
    incident = await queries.incident(actor, request.match_info["id"])
    statements = await queries.statements(actor, incident.id)
    return web.json_response({"statements": [serialize.statement_json(s) for s in statements]})


@operation("Edit a draft (new version)", m.Statement, role=Role.PRESS, body=m.StatementEdit)
async def edit_statement(request: web.Request) -> web.Response:
    actor = authorise(request, Role.PRESS)
    edit = m.parse(m.StatementEdit, await json_body(request))
    statement = await request.app[SERVICE].edit_statement(
        actor, request.match_info["id"], edit.text
    )
    return web.json_response(serialize.statement_json(statement))


@operation("Approve a draft (four-eyes: not its author)", m.Statement, role=Role.PRESS)
async def approve_statement(request: web.Request) -> web.Response:
    actor = authorise(request, Role.PRESS)
    statement = await request.app[SERVICE].approve_statement(actor, request.match_info["id"])
    return web.json_response(serialize.statement_json(statement))


@operation(
    "Every version of a statement, and a diff",
    m.StatementVersions,
    role=Role.VIEWER,
    query=(("against", {"type": "string"}),),
)
async def statement_versions(request: web.Request) -> web.Response:
    authorise(request, Role.VIEWER)
    desk = request.app[SERVICE].press_desk
    versions = await desk.versions(request.match_info["id"])
    diff = await desk.diff(request.match_info["id"], request.query.get("against"))
    return web.json_response(
        {"versions": [serialize.statement_json(s) for s in versions], "diff": diff}
    )


# --- claims ------------------------------------------------------------------------------
@operation("Claims made, and who received them", m.ClaimList, role=Role.VIEWER)
async def list_claims(request: web.Request) -> web.Response:
    authorise(request, Role.VIEWER)
    views = await request.app[SERVICE].claims(request.match_info["id"])
    return web.json_response(
        {
            "claims": [
                {
                    "key": v.key,
                    "text": v.text,
                    "status": v.status,
                    "audiences": list(v.audiences),
                    "recipients": v.recipients,
                    "reason": v.reason,
                }
                for v in views
            ]
        }
    )


@operation(
    "Retract a claim: a correction draft for the audiences that received it",
    m.Correction,
    status=201,
    role=Role.RESPONDER,
    body=m.Retraction,
)
async def retract_claim(request: web.Request) -> web.Response:
    actor = authorise(request, Role.RESPONDER)
    retraction = m.parse(m.Retraction, await json_body(request))
    service = request.app[SERVICE]
    incident = await service.get(request.match_info["id"])
    drafts = await service.retract_claim(
        actor, incident.id, request.match_info["key"], retraction.reason
    )
    main = next((d for d in drafts if d.locale == incident.locale), drafts[0])
    data = serialize.statement_json(main)
    data["audiences"] = list(main.audiences)
    data["translations"] = [serialize.statement_json(d) for d in drafts if d is not main]
    return web.json_response(data, status=201)


# --- deliveries --------------------------------------------------------------------------
@operation("Deliveries and counts by state", m.Deliveries, role=Role.VIEWER, query=PAGED)
async def list_deliveries(request: web.Request) -> web.Response:
    actor = authorise(request, Role.VIEWER)
    queries = request.app[QUERIES]
    incident = await queries.incident(actor, request.match_info["id"])
    deliveries = await queries.deliveries(actor, incident.id, page(request))
    attempts = await queries.attempts(actor, [d.id for d in deliveries])
    counts = await queries.delivery_counts(actor, incident.id)
    return web.json_response(
        {
            "counts": serialize.counts_json(counts),
            "deliveries": [serialize.delivery_json(d, attempts[d.id]) for d in deliveries],
        }
    )


ACK_PAGE = {
    "fr": {
        "ask": "Confirmer la lecture",
        "intro": "Confirmez que vous avez lu le message « {title} ».",
        "button": "Je confirme avoir lu ce message",
        "done": "Lecture confirmée",
        "thanks": "Merci, votre lecture du message est enregistrée.",
        "already": "Votre lecture était déjà enregistrée : rien n'a changé.",
    },
    "en": {
        "ask": "Confirm you have read it",
        "intro": "Please confirm that you have read the message “{title}”.",
        "button": "I confirm I have read this message",
        "done": "Read receipt recorded",
        "thanks": "Thank you, your acknowledgement has been recorded.",
        "already": "Your acknowledgement was already recorded: nothing changed.",
    },
}
# Link channels: a button (Slack, Telegram) is acknowledged where it was pressed.
_LINK_CHANNELS = frozenset({ChannelName.EMAIL, ChannelName.SMS, ChannelName.WEBHOOK})
_UNKNOWN_LINK = "Lien inconnu ou expiré / Unknown or expired link"


def _ack_html(locale: str, title: str, body: str) -> web.Response:
    response = web.Response(
        text=(
            f"<!doctype html><html lang='{html.escape(locale)}'><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width'>"
            "<meta name='referrer' content='no-referrer'>"
            f"<title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>{body}</html>"
        ),
        content_type="text/html",
    )
    # The URL is a credential: no caching, no referrer, no framing.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


async def _link_delivery(request: web.Request) -> Delivery | None:
    delivery = await request.app[SERVICE].acknowledgements.find(request.match_info["token"])
    if delivery is None or delivery.channel not in _LINK_CHANNELS:
        return None
    return delivery


async def acknowledgement_page(request: web.Request) -> web.Response:
    """``GET /ack/{token}``: a page with one button. Mail scanners and link previews fetch
    every link they see, so fetching the link (or ``HEAD``) changes nothing."""
    delivery = await _link_delivery(request)
    if delivery is None:
        return web.Response(status=404, text=_UNKNOWN_LINK)
    texts = ACK_PAGE.get(delivery.locale, ACK_PAGE["en"])
    if delivery.state == DeliveryState.ACKNOWLEDGED:
        return _ack_html(delivery.locale, texts["done"], f"<p>{html.escape(texts['already'])}</p>")
    # The link is the capability: it may show its own incident's title, nothing more.
    try:
        title = (await request.app[SERVICE].get(delivery.incident_id)).title
    except NotFound:
        title = delivery.incident_id
    intro = texts["intro"].format(title=title)
    body = (
        f"<p>{html.escape(intro)}</p><form method='post'>"
        f"<button type='submit'>{html.escape(texts['button'])}</button></form>"
    )
    return _ack_html(delivery.locale, texts["ask"], body)


async def acknowledge_link(request: web.Request) -> web.Response:
    """``POST /ack/{token}``: acknowledge once. The token is the capability (no cookie, so no
    CSRF to forge); a second POST answers that it was already done and changes nothing."""
    delivery = await _link_delivery(request)
    if delivery is None:
        return web.Response(status=404, text=_UNKNOWN_LINK)
    texts = ACK_PAGE.get(delivery.locale, ACK_PAGE["en"])
    if delivery.state == DeliveryState.ACKNOWLEDGED:
        return _ack_html(delivery.locale, texts["done"], f"<p>{html.escape(texts['already'])}</p>")
    await request.app[SERVICE].acknowledge(request.match_info["token"], by="e-mail link")
    return _ack_html(delivery.locale, texts["done"], f"<p>{html.escape(texts['thanks'])}</p>")


# --- continuity -------------------------------------------------------------------------
@operation("Per-site confirmations", m.Sites, role=Role.VIEWER)
async def list_sites(request: web.Request) -> web.Response:
    authorise(request, Role.VIEWER)
    views = await site_views(request.app[SERVICE], request.match_info["id"])
    return web.json_response(
        [
            {
                "site": v.site,
                "confirmed": v.confirmed,
                "needed": v.needed,
                "by": [name for name, _ in v.by],
                "at": [serialize.iso(at) for _, at in v.by],
                "escalated": v.escalated,
            }
            for v in views
        ]
    )


@operation(
    "Post-incident report",
    m.Report,
    role=Role.VIEWER,
    query=(("format", {"type": "string", "enum": ["json", "md", "html"], "default": "json"}),),
    also=(("text/markdown", {"type": "string"}), ("text/html", {"type": "string"})),
)
async def report(request: web.Request) -> web.Response:
    authorise(request, Role.VIEWER)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "md", "html"):
        raise InvalidInput("format must be json, md or html", detail={"format": fmt})
    data = await build_report(request.app[SERVICE], request.match_info["id"])
    if fmt == "md":
        return web.Response(text=report_format.to_markdown(data), content_type="text/markdown")
    if fmt == "html":
        return web.Response(text=report_format.to_html(data), content_type="text/html")
    return web.json_response(data)


@operation("Provider health", m.Channels, role=Role.VIEWER)
async def list_channels(request: web.Request) -> web.Response:
    actor = authorise(request, Role.VIEWER)
    queries = request.app[QUERIES]
    recorded = {h.name: (h.state, h.since) for h in await queries.channel_health(actor)}
    started = request.app[STARTED_AT]
    channel_names: frozenset[str] = request.app[CHANNEL_NAMES]
    names = set(channel_names) | set(recorded)
    # Addresses the provider moved (a Telegram group become a supergroup), under that channel:
    # the configuration still names the old one.
    moves: dict[str, list[dict[str, str | None]]] = {}
    for move in await queries.address_moves(actor):
        moves.setdefault(move.channel, []).append(
            {"from": move.old, "to": move.new, "since": serialize.iso(move.at)}
        )
    return web.json_response(
        [
            {
                "name": name,
                "state": recorded.get(name, ("up", started))[0],
                "since": serialize.iso(recorded.get(name, ("up", started))[1]),
                **({"moved": moves[name]} if name in moves else {}),
            }
            for name in sorted(names | set(moves))
        ]
    )


# --- operations --------------------------------------------------------------------------
@operation("Liveness", m.Health)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@operation("Readiness (store reachable, worker alive)", m.Readiness)
async def readyz(request: web.Request) -> web.Response:
    store_ok = await request.app[QUERIES].ready()
    worker_ok = request.app[WORKER_ALIVE]()
    status = 200 if store_ok and worker_ok else 503
    return web.json_response({"store": store_ok, "worker": worker_ok}, status=status)


@operation("This document", m.Document)
async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(request.app))


def add_routes(app: web.Application) -> None:
    throttle.install(app)
    app.router.add_post("/api/v1/incidents", declare)
    app.router.add_get("/api/v1/incidents", list_incidents)
    app.router.add_get("/api/v1/incidents/{id}", get_incident)
    app.router.add_post("/api/v1/incidents/{id}/updates", update_incident)
    app.router.add_post("/api/v1/incidents/{id}/resolve", resolve_incident)
    app.router.add_post("/api/v1/incidents/{id}/confirm", confirm_incident)
    app.router.add_get("/api/v1/incidents/{id}/statements", list_statements)
    app.router.add_get("/api/v1/incidents/{id}/deliveries", list_deliveries)
    app.router.add_put("/api/v1/statements/{id}", edit_statement)
    app.router.add_post("/api/v1/statements/{id}/approve", approve_statement)
    app.router.add_get("/api/v1/statements/{id}/versions", statement_versions)
    app.router.add_get("/api/v1/incidents/{id}/claims", list_claims)
    app.router.add_post("/api/v1/incidents/{id}/claims/{key}/retract", retract_claim)
    app.router.add_get("/api/v1/incidents/{id}/sites", list_sites)
    app.router.add_get("/api/v1/incidents/{id}/report", report)
    app.router.add_get("/api/v1/channels", list_channels)
    app.router.add_get("/ack/{token}", acknowledgement_page)
    app.router.add_post("/ack/{token}", acknowledge_link)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/openapi.json", openapi_document)
