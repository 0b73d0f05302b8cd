"""A local SMTP server (aiosmtpd) that keeps what it receives, for ``tocsin demo`` and tests."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from functools import cached_property
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Authenticator = Any  # aiosmtpd's AuthenticatorType: (server, session, envelope, mechanism, data)


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the server took it: envelope, raw bytes, and the connection it came on.

    ``connection`` numbers the client connections in the order they first said EHLO/HELO.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    connection: int
    tls: bool
    authenticated: bool

    @cached_property
    def message(self) -> EmailMessage:
        """The message parsed as a mail client would (on first access: parsing costs more
        than the whole SMTP exchange, and a demo run rarely reads them all)."""
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _EphemeralController(Controller):
    """aiosmtpd's Controller bound to port 0: it learns the port the OS gave before its
    self-test connection (which would otherwise dial port 0). It also keeps its server
    protocols, so that stopping can drop open connections instead of leaking their sockets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory(self) -> SMTP:
        protocol: SMTP = super().factory()  # type: ignore[no-untyped-call]
        self.protocols.add(protocol)
        return protocol

    def _trigger_server(self) -> None:
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]

    async def drop_connections(self) -> None:
        """Abort every client connection (runs on the server's loop)."""
        for protocol in list(self.protocols):
            # After STARTTLS the TLS transport sits on top of the original TCP one.
            for transport in (protocol.transport, protocol._original_transport):
                if isinstance(transport, asyncio.Transport) and not transport.is_closing():
                    transport.abort()


class _Handler:
    """aiosmtpd hooks; they run on the server's own thread."""

    def __init__(self, sandbox: SandboxSmtp) -> None:
        self._sandbox = sandbox

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self._sandbox._saw_connection(session)
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        self._sandbox._saw_connection(session)
        return f"250 {server.hostname}"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._sandbox._refused.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._sandbox.message_delay:
            await asyncio.sleep(self._sandbox.message_delay)  # a slow relay, per message
        mail = ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=envelope.original_content or b"",
            connection=self._sandbox._saw_connection(session),
            tls=session.ssl is not None,
            authenticated=bool(session.authenticated),
        )
        self._sandbox._received(mail)
        return "250 Message accepted for delivery"


class SandboxSmtp:
    """An SMTP server on 127.0.0.1 and an ephemeral port, keeping every message it accepts.

    Options: ``tls_context`` (+ ``require_starttls``) for STARTTLS; ``credentials`` (user →
    password) or a raw aiosmtpd ``authenticator`` for AUTH; :meth:`refuse` makes it answer a
    recipient with a chosen reply (``550 …`` by default); ``message_delay`` (seconds) makes it
    take that long to accept each message. aiosmtpd runs its own event loop on
    a thread; :meth:`wait_for` lets a coroutine on the caller's loop wait without polling.
    """

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        credentials: Mapping[str, str] | None = None,
        authenticator: Authenticator | None = None,
        hostname: str = "127.0.0.1",
        port: int = 0,
        message_delay: float = 0.0,
    ) -> None:
        self._port = port  # 0: any free port, kept across a stop and a restart
        self.message_delay = message_delay
        if credentials is not None and authenticator is not None:
            raise ValueError("give credentials or an authenticator, not both")
        self._host = hostname
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._credentials = dict(credentials) if credentials is not None else None
        self._authenticator = authenticator
        self._lock = threading.Lock()
        self._messages: list[ReceivedMail] = []
        self._connections: dict[str, int] = {}
        self._refused: dict[str, str] = {}
        self._controller: _EphemeralController | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("the SMTP sandbox is not started")
        return int(self._controller.port)

    @property
    def messages(self) -> list[ReceivedMail]:
        """Messages accepted so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """How many client connections got as far as EHLO/HELO."""
        with self._lock:
            return len(self._connections)

    def refuse(self, address: str, reply: str = "550 5.1.1 Mailbox unavailable") -> None:
        """Answer ``RCPT TO:<address>`` with ``reply`` (the address is added, as servers do)."""
        code, _, text = reply.partition(" ")
        self._refused[address.lower()] = f"{code} {text} <{address}>".rstrip()

    async def start(self) -> None:
        """Start listening; the port is known when this returns."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        options: dict[str, Any] = {}
        if self._tls_context is not None:
            options.update(tls_context=self._tls_context, require_starttls=self._require_starttls)
        if self._credentials is not None or self._authenticator is not None:
            options.update(
                authenticator=self._authenticator or self._check_credentials,
                # A loopback sandbox may take AUTH in clear; real relays should not.
                auth_require_tls=self._tls_context is not None,
            )
        controller = _EphemeralController(
            _Handler(self),
            hostname=self._host,
            port=self._port,
            server_hostname="tocsin-sandbox",
            **options,
        )
        # Controller.start blocks until its thread serves; keep the caller's loop free.
        await asyncio.to_thread(controller.start)
        self._controller = controller
        self._port = int(controller.port)  # a restart (outage drills) comes back here

    async def stop(self) -> None:
        """Stop the server and its thread (open client connections are dropped)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            # aiosmtpd's stop() cancels the sessions but leaves their sockets open.
            await self._drop(controller)
            await asyncio.to_thread(controller.stop)

    async def drop_connections(self) -> None:
        """Close every client connection, as a relay does with idle ones; keep listening."""
        if self._controller is not None:
            await self._drop(self._controller)

    @staticmethod
    async def _drop(controller: _EphemeralController) -> None:
        done = asyncio.run_coroutine_threadsafe(controller.drop_connections(), controller.loop)
        await asyncio.wrap_future(done)

    async def __aenter__(self) -> SandboxSmtp:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMail]:
        """Wait until at least ``count`` messages have arrived; return them."""
        async with asyncio.timeout(timeout):
            while True:
                # Take the event before checking, so an arrival in between is not missed.
                changed = self._changed
                with self._lock:
                    if len(self._messages) >= count:
                        return list(self._messages)
                await changed.wait()

    def _check_credentials(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        if isinstance(data, LoginPassword):
            login = data.login.decode("utf-8", "replace")
            password = data.password.decode("utf-8", "replace")
            if self._credentials.get(login) == password:
                return AuthResult(success=True)
        # handled=False makes aiosmtpd answer 535 itself; True would leave the client waiting.
        return AuthResult(success=False, handled=False)

    def _saw_connection(self, session: Session) -> int:
        # The peer address outlives STARTTLS (which replaces the session), so it is the key.
        key = repr(session.peer)
        with self._lock:
            return self._connections.setdefault(key, len(self._connections) + 1)

    def _received(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._messages.append(mail)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
