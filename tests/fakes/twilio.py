"""A local stand-in for Twilio's Messages API, on 127.0.0.1 and an ephemeral port.

It creates messages (``POST /2010-04-01/Accounts/{sid}/Messages.json``, basic auth), lists them
(``GET`` on the same path, newest first, filtered by ``To``) and plays Twilio's side of the
webhooks: :meth:`TwilioStandin.status_callback` and :meth:`TwilioStandin.inbound` POST signed
forms the way Twilio does. The signature is computed here with ``hmac`` directly, not with
Tocsin's own code, so that the two implementations check each other.

Failures are scripted per creation request, first in first out: ``Failure(status, code)``
answers an error without creating anything; ``Failure.hang(created=True)`` creates the message
and then never answers (the client's timeout fires: an unknown outcome).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal

import aiohttp
from aiohttp import web


def sign(auth_token: str, url: str, form: dict[str, str]) -> str:
    """Twilio's ``X-Twilio-Signature`` for a form POST to ``url``."""
    data = url + "".join(key + form[key] for key in sorted(form))
    mac = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


@dataclass(frozen=True)
class Failure:
    """One scripted answer to a creation request."""

    status: int = 500
    code: int | None = None
    message: str = "Internal Server Error"
    headers: dict[str, str] = field(default_factory=dict)
    action: Literal["answer", "hang"] = "answer"
    created: bool = False

    @classmethod
    def hang(cls, *, created: bool) -> Failure:
        """Never answer; ``created`` says whether the message exists all the same."""
        return cls(action="hang", created=created)


@dataclass
class TwilioMessage:
    """One message the stand-in holds."""

    sid: str
    to: str
    from_: str | None
    body: str
    status: str
    date_created: datetime
    status_callback: str | None

    def resource(self, account_sid: str) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "account_sid": account_sid,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "status": self.status,
            "direction": "outbound-api",
            "date_created": format_datetime(self.date_created, usegmt=True),
            "date_sent": None,
            "error_code": 30003 if self.status == "undelivered" else None,
            "num_segments": "1",
        }


class TwilioStandin:
    """See the module docstring. ``async with TwilioStandin(sid, token) as twilio: ...``"""

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str | None = None) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token or secrets.token_hex(16)
        self.messages: list[TwilioMessage] = []
        self.create_requests = 0
        self.account_requests = 0
        self.list_requests: list[dict[str, str]] = []
        self._failures: deque[Failure] = deque()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port: int | None = None
        self._released = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        """The ``api_url`` to configure (the product adds ``/2010-04-01/...``)."""
        if self._port is None:
            raise RuntimeError("the Twilio stand-in is not started")
        return f"http://127.0.0.1:{self._port}"

    def fail_next(self, *failures: Failure) -> None:
        self._failures.extend(failures)

    async def start(self) -> None:
        self._released = asyncio.Event()
        app = web.Application()
        path = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        app.router.add_post(path, self._create)
        app.router.add_get(path, self._list)
        app.router.add_get(f"/2010-04-01/Accounts/{self.account_sid}.json", self._account)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        self._released.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> TwilioStandin:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[TwilioMessage]:
        """Wait until at least ``count`` messages exist."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                await self._changed.wait()
        return list(self.messages)

    def _authorised(self, request: web.Request) -> bool:
        expected = aiohttp.encode_basic_auth(self.account_sid, self.auth_token)
        return hmac.compare_digest(request.headers.get("Authorization", ""), expected)

    def _new(self, form: dict[str, str]) -> TwilioMessage:
        message = TwilioMessage(
            sid="SM" + secrets.token_hex(16),
            to=form["To"],
            from_=form.get("From"),
            body=form.get("Body", ""),
            status="queued",
            date_created=datetime.now(UTC),
            status_callback=form.get("StatusCallback"),
        )
        self.messages.append(message)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return message

    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.create_requests += 1
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            if failure.created:
                self._new(form)
            if failure.action == "hang":
                await self._released.wait()
                return web.Response(status=503)
            return _error(
                failure.status, failure.code or failure.status, failure.message, failure.headers
            )
        to = form.get("To", "")
        if not (to.startswith("+") and to[1:].isdigit()):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not form.get("From"):
            return _error(400, 21603, "A 'From' phone number is required.")
        message = self._new(form)
        return web.json_response(message.resource(self.account_sid), status=201)

    async def _account(self, request: web.Request) -> web.Response:
        """``GET /Accounts/{sid}.json``: the account resource (``tocsin check`` fetches it)."""
        self.account_requests += 1
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        return web.json_response(
            {"sid": self.account_sid, "status": "active", "type": "Full", "friendly_name": "Tocsin"}
        )

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        self.list_requests.append(dict(request.query))
        to = request.query.get("To")
        found = [m for m in reversed(self.messages) if to is None or m.to == to]
        size = int(request.query.get("PageSize", "50"))
        return web.json_response(
            {
                "messages": [m.resource(self.account_sid) for m in found[:size]],
                "page": 0,
                "page_size": size,
            }
        )

    async def status_callback(
        self,
        message: TwilioMessage,
        status: str,
        *,
        error_code: int | None = None,
        signature: str | None = "valid",
    ) -> tuple[int, str]:
        """POST the status callback Twilio would send; ``signature`` ``"valid"`` signs it,
        None leaves the header out, anything else is sent as it is. Returns (status, body)."""
        assert message.status_callback is not None, "the message has no StatusCallback"
        message.status = status
        form = {
            "MessageSid": message.sid,
            "SmsSid": message.sid,
            "AccountSid": self.account_sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "To": message.to,
            "From": message.from_ or "",
            "ApiVersion": "2010-04-01",
        }
        if error_code is not None:
            form["ErrorCode"] = str(error_code)
        return await self.post_signed(message.status_callback, form, signature)

    async def inbound(
        self, url: str, from_number: str, body: str, *, signature: str | None = "valid"
    ) -> tuple[int, str]:
        """POST an incoming SMS to our webhook ``url``, as Twilio does."""
        form = {
            "MessageSid": "SM" + secrets.token_hex(16),
            "AccountSid": self.account_sid,
            "From": from_number,
            "To": "+33700000000",
            "Body": body,
            "NumMedia": "0",
            "ApiVersion": "2010-04-01",
        }
        return await self.post_signed(url, form, signature)

    async def post_signed(
        self, url: str, form: dict[str, str], signature: str | None = "valid"
    ) -> tuple[int, str]:
        assert self._session is not None
        headers = {}
        if signature == "valid":
            headers["X-Twilio-Signature"] = sign(self.auth_token, url, form)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        async with self._session.post(url, data=form, headers=headers) as response:
            return response.status, await response.text()


def _error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
        headers=headers,
    )
