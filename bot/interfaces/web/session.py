"""Dashboard sessions: log in with an API token; CSRF token on every form.

A logged-in session lives on the server (the ``dashboard_sessions`` table, keyed by the
SHA-256 of a random id): logout revokes it, and on every request it is checked against the
current configuration, so a token removed from the configuration (or its variable unset) ends
every session opened with it; the actor's name and role are read from the configuration then,
never from the cookie. The cookie holds the session's random id, its CSRF token and an expiry,
signed with HMAC-SHA256 (key from ``auth.secret_key_env``; without it each process makes a
random one, so a restart logs everybody out). Failed logins are throttled per client (429).
The token itself is never stored in the cookie nor logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from urllib.parse import quote, urlsplit, urlunsplit

from aiohttp import web

import bot.interfaces.web.pages as pages
from bot.domain.models import Actor, Role
from bot.interfaces import throttle
from bot.interfaces.deps import AUTH, CLOCK, RECORDS, SETTINGS
from bot.ports import StoredSession

log = logging.getLogger("tocsin.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE = "tocsin_session"
LIFETIME_S = 12 * 3600


@dataclass(frozen=True)
class Session:
    """A browser's session: anonymous (``actor`` None) until a token is accepted; ``sid`` is
    the random id of a logged-in session kept on the server."""

    actor: Actor | None
    csrf: str
    expires: float
    sid: str | None = None

    @classmethod
    def fresh(cls, actor: Actor | None = None, sid: str | None = None) -> Session:
        """A new session with a new CSRF token (a login never keeps the old one)."""
        return cls(actor, secrets.token_urlsafe(24), time.time() + LIFETIME_S, sid)


def digest(sid: str) -> str:
    """What the server keeps of a session id."""
    return hashlib.sha256(sid.encode()).hexdigest()


class SessionSigner:
    """Turns sessions into cookie values and back; a forged or expired cookie reads as None."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, b"tocsin-session:" + payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def dumps(self, session: Session) -> str:
        data: dict[str, object] = {"c": session.csrf, "e": int(session.expires)}
        if session.sid is not None:
            data["s"] = session.sid
        payload = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")
        return f"{payload.decode()}.{self._mac(payload)}"

    def loads(self, value: str) -> Session | None:
        payload, _, mac = value.partition(".")
        if not mac or not hmac.compare_digest(mac.encode(), self._mac(payload.encode()).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            expires, csrf = float(data["e"]), str(data["c"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        sid = data.get("s")
        # Who is logged in is read from the server's record (see ``resolve``), never here.
        return Session(None, csrf, expires, str(sid) if sid else None)


SESSION = web.RequestKey("tocsin_session", Session)


@dataclass
class SignerSlot:
    """This application's session signer, made on first use."""

    signer: SessionSigner | None = None


SIGNER = web.AppKey("session_signer", SignerSlot)


def signer(request: web.Request) -> SessionSigner:
    """This application's signer, keyed from the environment (or at random) on first use."""
    state = request.app[SIGNER]
    if state.signer is None:
        settings = request.app[SETTINGS]
        secret = settings.secret(settings.auth.secret_key_env, required=False)
        key = secret.get_secret_value().encode() if secret else b""
        state.signer = SessionSigner(key or secrets.token_bytes(32))
    return state.signer


def current(request: web.Request) -> Session:
    """The request's session (a fresh anonymous one when the cookie is missing or bad);
    a logged-in one was resolved by :func:`resolve` before the handler ran."""
    if SESSION in request:
        return request[SESSION]
    raw = request.cookies.get(COOKIE)
    session = (signer(request).loads(raw) if raw else None) or Session.fresh()
    if session.sid is not None:  # not resolved against the server: anonymous
        session = Session.fresh()
    request[SESSION] = session
    return session


async def resolve(request: web.Request) -> None:
    """Read a logged-in session from the server: unknown, revoked or expired, or opened with
    a token the configuration no longer holds → an anonymous session."""
    raw = request.cookies.get(COOKIE)
    session = signer(request).loads(raw) if raw else None
    if session is None or session.sid is None:
        return
    stored = await request.app[RECORDS].find_session(digest(session.sid))
    now = request.app[CLOCK].now()
    actor = request.app[AUTH].by_token_name(stored.token_name) if stored is not None else None
    if (
        stored is None
        or actor is None
        or stored.revoked_at is not None
        or stored.expires_at <= now
        or not hmac.compare_digest(stored.csrf.encode(), session.csrf.encode())
    ):
        log.info("dashboard session refused: unknown, revoked, expired or token withdrawn")
        request[SESSION] = Session.fresh()
        return
    request[SESSION] = replace(session, actor=actor)


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the dashboard session (one read) before a page that has the cookie."""
    if COOKIE in request.cookies and not request.path.startswith(("/api/", "/static/")):
        await resolve(request)
    return await handler(request)


def remember(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    """Set the session cookie (HttpOnly, SameSite=Strict; Secure behind HTTPS)."""
    https = request.app[SETTINGS].server.public_url.startswith("https://")
    response.set_cookie(
        COOKIE,
        signer(request).dumps(session),
        max_age=LIFETIME_S,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=https,
    )


def require_user(request: web.Request, role: Role = Role.VIEWER) -> Actor:
    """The logged-in actor; redirect to the login page when anonymous, 403 without the role."""
    actor = current(request).actor
    if actor is None:
        target = request.path_qs if request.method == "GET" else "/"
        raise web.HTTPSeeOther(f"/login?next={quote(target, safe='/')}")
    if not actor.can(role):
        raise forbidden(request, f"Your role ({actor.role.value}) cannot do this.")
    return actor


async def checked_form(request: web.Request) -> dict[str, str]:
    """The posted form, after the CSRF check (403 when the token is missing or wrong)."""
    form = await request.post()
    given = form.get("csrf")
    expected = current(request).csrf.encode()
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected):
        log.info("rejected %s %s: 403 (CSRF)", request.method, request.path)
        raise forbidden(request, "This form has expired. Go back, reload and try again.")
    return {k: v for k, v in form.items() if isinstance(v, str)}


def render(
    request: web.Request, template: str, *, status: int = 200, **context: object
) -> web.Response:
    """A page, with the session's user and CSRF token in its context."""
    session = current(request)
    return pages.html(
        template,
        status=status,
        user=session.actor,
        csrf=session.csrf,
        org=request.app[SETTINGS].organisation,
        **context,
    )


def forbidden(request: web.Request, message: str) -> web.HTTPForbidden:
    """A 403 page to raise."""
    page = render(request, "message.html.j2", status=403, title="Forbidden", message=message)
    return web.HTTPForbidden(text=page.text, content_type="text/html")


def _safe_next(value: str | None) -> str:
    """A path of this site, or ``/``.

    Only local paths: an open redirect would let a link send a fresh login elsewhere. Browsers
    and yarl drop tabs and newlines and read ``\\`` as ``/``, so ``/<TAB>/evil.example`` would
    become ``//evil.example``: any control character or backslash is refused, and the value
    is rebuilt from its parsed path and query so that what is checked is what is sent.
    """
    if not value or any(ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in value):
        return "/"
    parsed = urlsplit(value)
    if parsed.scheme or parsed.netloc or not parsed.path.startswith("/"):
        return "/"
    if parsed.path.startswith("//"):
        return "/"
    return urlunsplit(("", "", parsed.path, parsed.query, ""))


async def login_page(request: web.Request) -> web.StreamResponse:
    """``GET /login``: the token form."""
    session = current(request)
    response = render(
        request, "login.html.j2", next=_safe_next(request.query.get("next")), error=None
    )
    remember(request, response, session)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /login``: a valid token starts a session with that token's name and role."""
    form = await checked_form(request)
    target = _safe_next(form.get("next"))
    limiter = request.app[throttle.THROTTLE]
    client = throttle.client_of(request)
    try:
        limiter.check(client)
    except throttle.TooManyAttempts as exc:
        log.info("dashboard login throttled")
        response = render(
            request, "login.html.j2", next=target, error=str(exc).capitalize() + ".", status=429
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    found = request.app[AUTH].token_entry(f"Bearer {form.get('token', '').strip()}")
    if found is None:
        limiter.fail(client)
        log.info("dashboard login refused")
        response = render(request, "login.html.j2", next=target, error="Unknown token.", status=401)
        remember(request, response, current(request))
        return response
    token_name, actor = found
    log.info("dashboard login: %s (%s)", actor.name, actor.role.value)
    session = Session.fresh(actor, sid=secrets.token_urlsafe(32))
    now = request.app[CLOCK].now()
    await request.app[RECORDS].open_session(
        StoredSession(
            digest(session.sid or ""),
            token_name,
            session.csrf,
            now,
            now + timedelta(seconds=LIFETIME_S),
        )
    )
    request[SESSION] = session
    response = web.HTTPSeeOther(target)
    remember(request, response, session)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /logout``: end the session on the server (a copy of the cookie no longer works)."""
    await checked_form(request)
    session = current(request)
    if session.sid is not None:
        await request.app[RECORDS].revoke_session(digest(session.sid), request.app[CLOCK].now())
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


def add_routes(app: web.Application) -> None:
    """Mount ``/login`` and ``/logout``, and the middleware that resolves sessions."""
    throttle.install(app)
    app[SIGNER] = SignerSlot()
    app.middlewares.append(sessions)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
