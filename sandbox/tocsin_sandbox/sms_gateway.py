"""A local stand-in for Kannel's smsbox ``sendsms``, for ``tocsin demo`` on machines without
Kannel: it takes the same requests, keeps the messages, calls the ``dlr-url`` back as Kannel's
fake SMSC does (8 "SMSC accepted", then 1 "delivered") and can play a phone replying "OK"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from tocsin_sandbox.server import LocalServer

log = logging.getLogger(__name__)

# What Kannel's fake SMSC reports, in its order: accepted by the SMSC (with its "ACK/"
# answer), then delivered to the handset.
_REPORTS = ((8, "ACK/"), (1, ""))
# The POST form of sendsms: the text is the body, everything else in these headers.
_HEADERS = {
    "username": "X-Kannel-Username",
    "password": "X-Kannel-Password",
    "from": "X-Kannel-From",
    "to": "X-Kannel-To",
    "coding": "X-Kannel-Coding",
    "dlr-mask": "X-Kannel-DLR-Mask",
    "dlr-url": "X-Kannel-DLR-Url",
}


@dataclass(frozen=True)
class GatewaySms:
    """One message the gateway accepted, as the phone would show it."""

    id: str
    sender: str
    receiver: str
    text: str
    coding: int
    dlr_mask: int
    dlr_url: str | None = field(default=None, repr=False)  # holds the delivery's token


def expand_dlr_url(pattern: str, sms: GatewaySms, report: int, answer: str) -> str:
    """Fill in Kannel's escapes: ``%d`` report type, ``%A`` SMSC answer, ``%T`` time, ``%F``
    message id, ``%p``/``%P`` receiver/sender, ``%%`` a percent sign; others stay as they are."""
    values = {
        "d": str(report),
        "A": quote(answer, safe=""),
        "T": str(int(time.time())),
        "F": sms.id,
        "p": quote(sms.receiver, safe=""),
        "P": quote(sms.sender, safe=""),
        "%": "%",
    }
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "%" and index + 1 < len(pattern) and pattern[index + 1] in values:
            out.append(values[pattern[index + 1]])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


class SmsGateway(LocalServer):
    """A Kannel-compatible ``sendsms`` on 127.0.0.1 and an ephemeral port.

    Send to :attr:`url` exactly as to a smsbox (POST ``text/plain`` with ``X-Kannel-*``
    headers, or the ``username``/``password``/``from``/``to``/``text``/``coding``/
    ``dlr-mask``/``dlr-url`` parameters): wrong credentials get ``403``, a missing sender or
    receiver ``400``, anything else ``202 0: Accepted for delivery``. Accepted messages are in
    :attr:`messages`; their delivery reports are called back in the background.
    :meth:`reply` plays a phone answering, through ``inbound_url`` (the ``sms-service``
    ``get-url`` of a real Kannel: ``from``, ``to`` and ``text`` are added to its query).
    """

    def __init__(
        self,
        username: str = "tocsin",
        password: str = "sandbox",  # noqa: S107 (the sandbox's own, for local demos)
        *,
        inbound_url: str | None = None,
        number: str = "36180",
        host: str = "127.0.0.1",
    ) -> None:
        self._username = username
        self._password = password
        self.inbound_url = inbound_url
        self.number = number
        super().__init__(host)
        self._session: aiohttp.ClientSession | None = None
        self._messages: list[GatewaySms] = []
        self._reports: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        """The ``sendsms`` URL to configure as ``channels.sms.url``."""
        return f"{self.base_url}/cgi-bin/sendsms"

    @property
    def messages(self) -> list[GatewaySms]:
        """Messages accepted so far, in arrival order (a copy)."""
        return list(self._messages)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/cgi-bin/sendsms", self._sendsms)

    async def start(self) -> None:
        await super().start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def stop(self) -> None:
        """Stop taking messages, let pending delivery reports finish briefly, close."""
        await super().stop()
        if self._reports:
            _, pending = await asyncio.wait(self._reports, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[GatewaySms]:
        """Wait until at least ``count`` messages were accepted; return them."""
        async with asyncio.timeout(timeout):
            while len(self._messages) < count:
                await self._changed.wait()
        return list(self._messages)

    async def reports_sent(self, timeout: float = 10.0) -> None:
        """Wait until every delivery report due so far has been called back."""
        async with asyncio.timeout(timeout):
            while self._reports:
                await asyncio.wait(set(self._reports))

    async def reply(self, from_number: str, text: str) -> int:
        """A phone sends ``text`` to the gateway's number: call ``inbound_url`` as Kannel's
        ``get-url`` would; returns the HTTP status it answered."""
        if self.inbound_url is None or self._session is None:
            raise RuntimeError("the SMS gateway has no inbound_url or is not started")
        url = URL(self.inbound_url).update_query(
            {"from": from_number, "to": self.number, "text": text}
        )
        async with self._session.get(url) as response:
            await response.read()
            return response.status

    async def _sendsms(self, request: web.Request) -> web.Response:
        params: dict[str, str] = dict(request.query)
        if request.method == "POST" and request.content_type == "text/plain":
            params["text"] = await request.text()
            for name, header in _HEADERS.items():
                if header in request.headers:
                    params[name] = request.headers[header]
        elif request.method == "POST":
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        if (params.get("username"), params.get("password")) != (self._username, self._password):
            return web.Response(status=403, text="Authorization failed for sendsms")
        if not params.get("to"):
            return web.Response(status=400, text="Receiver number not valid, rejected")
        if not params.get("from"):
            return web.Response(status=400, text="Sender missing and no global set, rejected")
        try:
            coding, mask = int(params.get("coding") or 0), int(params.get("dlr-mask") or 0)
        except ValueError:
            return web.Response(status=400, text="Invalid coding or dlr-mask, rejected")
        sms = GatewaySms(
            str(uuid.uuid4()),
            params["from"],
            params["to"],
            params.get("text", ""),
            coding,
            mask,
            params.get("dlr-url"),
        )
        self._messages.append(sms)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if sms.dlr_url and mask:
            task = asyncio.create_task(self._report(sms))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)
        return web.Response(status=202, text="0: Accepted for delivery")

    async def _report(self, sms: GatewaySms) -> None:
        assert sms.dlr_url is not None
        for report, answer in _REPORTS:
            if not sms.dlr_mask & report or self._session is None:
                continue
            url = expand_dlr_url(sms.dlr_url, sms, report, answer)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.get(URL(url, encoded=True)) as response:
                    await response.read()
                    if response.status >= 300:
                        log.info("sandbox SMS gateway: dlr-url answered %s", response.status)
