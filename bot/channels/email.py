"""E-mail channel: multipart text + HTML messages through one SMTP relay (aiosmtplib)."""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import re
import ssl
import time
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid, parseaddr
from typing import TYPE_CHECKING, Any

import aiosmtplib
from pydantic import ConfigDict, Field, SecretStr

from bot.channels.checks import CheckResult, failure_reason
from bot.channels.spec import ChannelSpec, RateLimits, built_check
from bot.config_base import Duration, Strict
from bot.domain.errors import ChannelError, PermanentError, TransientError
from bot.domain.masking import mask_email, scrub
from bot.domain.models import ChannelName, DeliveryState
from bot.ports import MessageKey, OutboundMessage, Receipt

if TYPE_CHECKING:
    import aiohttp

    from bot.channels.spec import Settings


class EmailChannelSettings(Strict):
    """``channels.email``: the SMTP relay."""

    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    use_tls: bool = False
    username_env: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    from_: str = Field(default="tocsin@example.org", alias="from")
    timeout: Duration = 10.0
    limits: RateLimits = RateLimits()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


log = logging.getLogger(__name__)

ACK_PROMPTS = {
    "fr": "Merci de confirmer la lecture :",
    "en": "Please confirm you have read this:",
}

# A server's reply goes into the attempts table; this is plenty to say why.
_REPLY_EXCERPT = 200


def ack_prompt(locale: str) -> str:
    """The request to acknowledge, in ``locale`` (English for a language without one)."""
    language = locale.replace("_", "-").split("-")[0].lower()
    return ACK_PROMPTS.get(language, ACK_PROMPTS["en"])


def smtp_error(exc: BaseException) -> ChannelError | None:
    """The channel error an aiosmtplib/socket failure stands for, or None if it is not one.

    Server replies decide by their code (5xx permanent, 4xx transient); the reply text is
    kept, with addresses masked, because it is what the operator needs to read.
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        if not exc.recipients:
            return PermanentError("recipient refused")
        first = exc.recipients[0]
        # A 4xx on RCPT (greylisting, full mailbox) concerns that mailbox, not the relay.
        return _reply_error("recipient refused", first.code, first.message, scope="destination")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return _reply_error("authentication refused", exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return _reply_error("sender refused", exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return _reply_error("message refused", exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_error("server refused", exc.code, exc.message)
    if _caused_by(exc, ssl.SSLCertVerificationError):
        # An untrusted relay certificate will not become trusted by retrying.
        return PermanentError("TLS certificate of the SMTP server not trusted")
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts are TimeoutErrors too
        return TransientError("SMTP server timed out")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientError("SMTP server disconnected")
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
        return TransientError(f"cannot reach the SMTP server: {exc.__class__.__name__}")
    if isinstance(exc, aiosmtplib.SMTPException):
        # STARTTLS or AUTH not offered, SMTPUTF8 needed but missing: configuration, not luck.
        return PermanentError(scrub(str(exc)))
    if isinstance(exc, ValueError):  # aiosmtplib refuses unparseable addresses before sending
        return PermanentError("invalid e-mail address")
    return None


def _reply_error(what: str, code: int, message: str, *, scope: str = "provider") -> ChannelError:
    text = scrub(" ".join(str(message).split()))[:_REPLY_EXCERPT]
    reason = f"{what}: {code} {text}".rstrip()
    if 500 <= code < 600:
        return PermanentError(reason, str(code))
    # 4xx, and the -1 aiosmtplib gives for a garbled reply: worth another try.
    return TransientError(reason, str(code), scope=scope)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _keeps_connection(exc: BaseException) -> bool:
    # After a refusal aiosmtplib has sent RSET, so the session is clean; after anything else
    # (timeout, half-read reply) the connection's state is unknown and must not be reused.
    return isinstance(
        exc,
        aiosmtplib.SMTPResponseException
        | aiosmtplib.SMTPRecipientsRefused
        | aiosmtplib.SMTPNotSupported
        | ValueError,
    )


class EmailChannel:
    """Sends a delivery as one e-mail through the configured SMTP relay.

    Connections are opened lazily and reused across sends: SMTP is sequential, so each
    connection carries one message at a time, and ``connections`` (default 1) bounds how many
    run side by side. The TLS context is built once (building one per message is ~5x slower).
    ``username``/``password`` come from the caller (the environment, never the file).
    """

    name = ChannelName.EMAIL
    # The Message-ID of every attempt of a delivery derives from its idempotency key.
    keys: frozenset[MessageKey] = frozenset({"idempotency_key"})
    # A relay, not a mailbox provider: bounded by the relay's own throttling, which is
    # usually generous for an organisation's own mail server.
    rate: float = 100.0
    burst: int = 100
    # Mailboxes and lists take a burst of incident mail; no per-address limit is needed.
    destination_rate: float | None = None
    destination_burst: int = 1
    # A connection parked longer than this is reopened rather than trusted (seconds).
    max_idle: float = 60.0

    def __init__(
        self,
        settings: EmailChannelSettings,
        *,
        username: SecretStr | None = None,
        password: SecretStr | None = None,
        ca_file: str | None = None,
        connections: int = 1,
    ) -> None:
        if settings.starttls and settings.use_tls:
            raise ValueError("channels.email: starttls and use_tls are mutually exclusive")
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self._settings = settings
        self._username = username.get_secret_value() if username is not None else None
        self._password = password.get_secret_value() if password is not None else None
        self._tls_context: ssl.SSLContext | None = None
        if settings.starttls or settings.use_tls:
            self._tls_context = ssl.create_default_context(cafile=ca_file or settings.ca_file)
        self._sender = parseaddr(settings.from_)[1] or settings.from_
        self._domain = self._sender.rpartition("@")[2] or "localhost"
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # with when it was parked
        self._clients: list[aiosmtplib.SMTP] = []

    def __repr__(self) -> str:
        return f"EmailChannel({self.provider_key('')!r}, user={self._username is not None})"

    def provider_key(self, address: str) -> str:
        """Every address goes through the same relay."""
        return f"smtp:{self._settings.host}:{self._settings.port}"

    async def send(self, message: OutboundMessage) -> Receipt:
        """Send one e-mail; the receipt's ``provider_id`` is its ``Message-ID``."""
        mail = self.compose(message)
        async with self._slots:
            client = self._checkout()
            try:
                await self._transmit(client, mail, message.address)
            finally:
                if client in self._clients:  # not when close() ran meanwhile
                    self._idle.append((client, time.monotonic()))
        return Receipt(provider_id=str(mail["Message-ID"]), state=DeliveryState.SENT, code="250")

    async def close(self) -> None:
        """Say QUIT on idle connections and drop any still busy."""
        idle = {id(client) for client, _ in self._idle}
        clients, self._clients, self._idle = self._clients, [], []
        for client in clients:
            if not client.is_connected:
                continue
            if id(client) not in idle:
                client.close()  # a QUIT now would interleave with the command in flight
                continue
            try:
                await client.quit(timeout=min(self._settings.timeout, 5.0))
            except (aiosmtplib.SMTPException, OSError):
                pass  # the relay may have gone first; nothing left to tidy
            finally:
                client.close()

    def compose(self, message: OutboundMessage) -> EmailMessage:
        """The e-mail for ``message``: text and HTML alternatives, headers, acknowledgement."""
        bodies = message.bodies
        text = bodies.get("text")
        if text is None:
            raise PermanentError("the statement has no text rendering for e-mail")
        # Header folding would otherwise turn a template's newline into a broken header.
        subject = " ".join((bodies.get("subject") or text.strip().partition("\n")[0]).split())
        html_body = bodies.get("html")
        if message.ack_url:
            prompt = ack_prompt(message.locale)
            text = f"{text.rstrip()}\n\n{prompt} {message.ack_url}\n"
            if html_body is not None:
                html_body = _with_ack_link(html_body, prompt, message.ack_url)
        mail = EmailMessage(policy=SMTP_POLICY)
        try:
            mail["From"] = self._settings.from_
            mail["To"] = message.address
            mail["Subject"] = subject
            mail["Date"] = formatdate(usegmt=True)
            mail["Message-ID"] = self._message_id(message)
            mail["Content-Language"] = message.locale
            mail["X-Tocsin-Delivery"] = str(message.delivery_id)
            # RFC 3834, and Exchange's own flag: no out-of-office replies to a crisis cell.
            mail["Auto-Submitted"] = "auto-generated"
            mail["X-Auto-Response-Suppress"] = "All"
        except (ValueError, TypeError) as exc:  # e.g. a line break smuggled into an address
            raise PermanentError("cannot build the e-mail: invalid address or header") from exc
        # Quoted-printable keeps long HTML lines and accents safe on 7-bit-only relays.
        mail.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
        if html_body is not None:
            document = _as_document(html_body, subject, message.locale)
            mail.add_alternative(document, subtype="html", charset="utf-8", cte="quoted-printable")
        return mail

    def _message_id(self, message: OutboundMessage) -> str:
        if message.idempotency_key:
            # Stable across retries of a delivery: if a resend follows an unseen acceptance,
            # mail clients see the same Message-ID and show one message.
            digest = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:24]
            return f"<tocsin.{message.delivery_id}.{digest}@{self._domain}>"
        return make_msgid(idstring=f"tocsin.{message.delivery_id}", domain=self._domain)

    def _checkout(self) -> aiosmtplib.SMTP:
        if not self._idle:
            return self._new_client()
        # Last parked first: the warmest connection, so that spare ones age out.
        client, parked_at = self._idle.pop()
        if client.is_connected and time.monotonic() - parked_at >= self.max_idle:
            # Relays close idle sessions (Postfix after 300 s) and NATs drop them silently;
            # a stale connection would cost a timed-out attempt, a new one a handshake.
            client.close()
        return client

    def _new_client(self) -> aiosmtplib.SMTP:
        client = self._client()
        self._clients.append(client)
        return client

    def _client(self) -> aiosmtplib.SMTP:
        """An unconnected client with this channel's server, credentials and TLS."""
        settings = self._settings
        return aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            username=self._username,
            password=self._password,
            timeout=settings.timeout,
            use_tls=settings.use_tls,
            # Explicit: never a silent opportunistic upgrade that a private CA would fail.
            start_tls=settings.starttls,
            tls_context=self._tls_context,
        )

    async def _transmit(self, client: aiosmtplib.SMTP, mail: EmailMessage, to: str) -> None:
        try:
            if not client.is_connected:
                await client.connect()
                log.debug("SMTP connection open to %s", self.provider_key(""))
            await client.send_message(mail, sender=self._sender, recipients=[to])
        except Exception as exc:
            error = smtp_error(exc)
            if error is None or not _keeps_connection(exc):
                client.close()
            if error is None:
                raise
            log.info("SMTP send failed: %s", error.reason)
            raise error from exc
        except asyncio.CancelledError:
            client.close()  # a command may be half-sent: the session is unusable
            raise

    async def check(self) -> CheckResult:
        """Connect, EHLO, STARTTLS and AUTH as configured, then QUIT: no message is sent."""
        settings = self._settings
        client = self._client()
        steps = ["EHLO"]
        if settings.starttls or settings.use_tls:
            steps.append("STARTTLS" if settings.starttls else "TLS")
        if self._username is not None:
            steps.append("AUTH")
        try:
            await client.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            return CheckResult("email", False, f"AUTH refused ({exc.code})")
        except aiosmtplib.SMTPResponseException as exc:
            return CheckResult("email", False, f"refused ({exc.code})")
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError) as exc:
            return CheckResult("email", False, failure_reason(exc))
        finally:
            if not client.is_connected:
                client.close()
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
        return CheckResult("email", True, " + ".join(steps) + " ok")


def _with_ack_link(body: str, prompt: str, url: str) -> str:
    link = (
        f'<p class="ack">{html.escape(prompt)} '
        f'<a href="{html.escape(url, quote=True)}">{html.escape(url)}</a></p>'
    )
    end = body.lower().rfind("</body>")
    return f"{body[:end]}{link}\n{body[end:]}" if end >= 0 else f"{body.rstrip()}\n{link}\n"


def _as_document(body: str, title: str, locale: str) -> str:
    # Templates may render a fragment; mail clients want a whole document with a title.
    if "<html" in body[:500].lower():
        return body
    return (
        f'<!DOCTYPE html>\n<html lang="{html.escape(locale, quote=True)}">\n'
        f'<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
        f"<body>\n{body.rstrip()}\n</body>\n</html>\n"
    )


def from_settings(settings: Settings, session: aiohttp.ClientSession) -> EmailChannel:
    """The SMTP adapter of ``channels.email``; credentials from the variables it names."""
    cfg = settings.channels.get(SPEC)
    if cfg is None:
        raise ValueError("channels.email is not configured")
    return EmailChannel(
        cfg,
        username=settings.secret(cfg.username_env, required=False),
        password=settings.secret(cfg.password_env, required=False),
        ca_file=str(settings.resolve_path(cfg.ca_file)) if cfg.ca_file else None,
    )


_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def member_address(value: Any) -> Any:
    """A member's e-mail address, refused when it is not one."""
    if isinstance(value, str) and not _ADDRESS.fullmatch(value):
        raise ValueError("not an e-mail address")
    return value


SPEC = ChannelSpec(
    name=ChannelName.EMAIL,
    settings_model=EmailChannelSettings,
    from_settings=from_settings,
    formats=("subject", "text", "html"),
    destination_key="email_list",
    member_key="email",
    mask=mask_email,
    destination_address=lambda value: value,
    member_address=member_address,
    check=built_check(from_settings),
)
