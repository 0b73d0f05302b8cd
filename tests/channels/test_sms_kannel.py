"""Kannel adapter: against the real Kannel (bearerbox + smsbox + fake SMSC), the test being the
phone; plus the refusals that need no gateway, against a local stand-in."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from bot.app import RUNTIME, Runtime, build_app
from bot.channels.sms import from_settings
from bot.channels.sms.kannel import KannelChannel, dlr_url
from bot.config import Settings, settings_from_dict
from bot.domain.declarations import IncidentDraft
from bot.domain.errors import PermanentError, TransientError
from bot.domain.models import Actor, ChannelName, DeliveryState, Role, Severity
from bot.domain.sms_text import sms_encoding
from bot.ports import OutboundMessage, Receipt
from bot.store.memory import MemoryStore
from tests.conftest import require
from tests.fakes.http_standin import HttpStandin
from tests.fakes.kannel import FakePhone, Kannel, kannel_installed, running_kannel

CRISIS_CELL = Actor("cellule-crise", Role.RESPONDER)


def new_number() -> str:
    """A French mobile number of this test's own: Kannel is shared by the whole session and
    the phone ignores messages to other numbers."""
    return f"+3361{secrets.randbelow(10**7):07d}"


def outbound(number: str, text: str, **changes: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": 1,
        "channel": ChannelName.SMS,
        "address": number,
        "recipient": "Dr A. Martin",
        "locale": "fr",
        "bodies": {"sms": text},
        "require_ack": True,
        "ack_token": secrets.token_urlsafe(16),
    }
    fields.update(changes)
    return OutboundMessage(**fields)


@pytest.fixture(scope="session")
def kannel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kannel]:
    """One real Kannel for the whole session (it starts in a fraction of a second, but stops
    in two)."""
    require(kannel_installed(), "Kannel (Debian's bearerbox and smsbox)")
    with running_kannel(tmp_path_factory.mktemp("kannel")) as gateway:
        yield gateway


@pytest.fixture
async def phone(kannel: Kannel) -> AsyncIterator[FakePhone]:
    async with FakePhone(kannel.smsc_port) as handset:
        yield handset


def kannel_channel(
    session: aiohttp.ClientSession,
    kannel: Kannel,
    *,
    password: str | None = None,
    sender: str | None = "APHP",
    max_segments: int = 3,
) -> KannelChannel:
    return KannelChannel(
        session,
        url=kannel.sendsms_url,
        username=SecretStr(kannel.username),
        password=SecretStr(password or kannel.password),
        sender=sender,
        max_segments=max_segments,
    )


# --- the real Kannel ------------------------------------------------------------------------

FRENCH = "Orbis en panne : fenêtre sûre, l'œuvre continue. Procédures papier."


@pytest.mark.kannel
async def test_french_text_outside_gsm7_arrives_exactly_as_ucs2(
    kannel: Kannel, phone: FakePhone, session: aiohttp.ClientSession
) -> None:
    number = new_number()
    assert sms_encoding(FRENCH).encoding == "ucs2"

    receipt = await kannel_channel(session, kannel).send(outbound(number, FRENCH))

    received = await phone.receive(number)
    assert receipt == Receipt(provider_id=None, state=DeliveryState.SENT, code="0")
    assert received.text == FRENCH
    assert [part.kind for part in received.parts] == ["ucs-2"]
    assert received.parts[0].sender == "APHP"


@pytest.mark.kannel
async def test_text_in_the_gsm7_alphabet_goes_as_gsm7_unaltered(
    kannel: Kannel, phone: FakePhone, session: aiohttp.ClientSession
) -> None:
    number = new_number()
    text = "Procédure dégradée à appliquer où indiqué : 10 € [papier] {SAMU} ~ ^ | \\ Ç"
    assert sms_encoding(text).encoding == "gsm7"

    await kannel_channel(session, kannel).send(outbound(number, text))

    received = await phone.receive(number)
    assert received.text == text
    assert [part.kind for part in received.parts] == ["text"]


@pytest.mark.kannel
@pytest.mark.parametrize(
    ("text", "ucs2"),
    [
        pytest.param("Orbis indisponible, passez aux procédures papier. " * 8, False, id="gsm7"),
        pytest.param("Fenêtre sûre pour l'œuvre. " * 6, True, id="ucs2"),
    ],
)
async def test_a_three_segment_message_is_reassembled_by_the_phone(
    kannel: Kannel, phone: FakePhone, session: aiohttp.ClientSession, text: str, ucs2: bool
) -> None:
    number = new_number()
    assert sms_encoding(text).segments == 3

    await kannel_channel(session, kannel, max_segments=3).send(outbound(number, text))

    received = await phone.receive(number, ucs2=ucs2)
    assert received.text == text
    concatenation = [part.concatenation for part in received.parts]
    assert [info[1:] if info else None for info in concatenation] == [(3, 1), (3, 2), (3, 3)]
    assert len({info[0] for info in concatenation if info}) == 1


@pytest.mark.kannel
async def test_wrong_credentials_are_a_permanent_failure(
    kannel: Kannel, session: aiohttp.ClientSession
) -> None:
    channel = kannel_channel(session, kannel, password="not-the-password")

    with pytest.raises(PermanentError) as caught:
        await channel.send(outbound(new_number(), "Orbis indisponible."))

    assert caught.value.code == "403"
    assert "not-the-password" not in str(caught.value)


@pytest.mark.kannel
async def test_no_sender_is_a_permanent_failure(
    kannel: Kannel, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(PermanentError) as caught:
        await kannel_channel(session, kannel, sender=None).send(
            outbound(new_number(), "Orbis indisponible.")
        )

    assert caught.value.code == "400"
    assert "Sender missing" in caught.value.reason


SIREN = "\U0001f6a8"


@pytest.mark.kannel
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a" * 160, id="gsm7-160"),
        pytest.param("a" * 161, id="gsm7-161"),
        pytest.param("a" * 306, id="gsm7-306"),
        pytest.param("a" * 307, id="gsm7-307"),
        pytest.param("é" * 161, id="gsm7-basic-accents-161"),
        pytest.param("€" * 80, id="extension-160-septets"),
        pytest.param("€" * 81, id="extension-162-septets"),
        pytest.param("a" * 152 + "€" + "a" * 10, id="escape-pair-not-split"),
        pytest.param("[" * 153, id="extension-only-306-septets"),
        pytest.param("ê" * 70, id="ucs2-70"),
        pytest.param("ê" * 71, id="ucs2-71"),
        pytest.param("ê" * 134, id="ucs2-134"),
        pytest.param("ê" * 135, id="ucs2-135"),
        pytest.param(SIREN * 35, id="emoji-70-units"),
        pytest.param(SIREN * 36, id="emoji-72-units"),
    ],
)
async def test_kannel_splits_a_text_into_the_segments_we_count(
    kannel: Kannel, phone: FakePhone, session: aiohttp.ClientSession, text: str
) -> None:
    """Our segment count (the budget the templates are held to) is what the gateway sends."""
    number = new_number()
    counted = sms_encoding(text)

    await kannel_channel(session, kannel, max_segments=10).send(outbound(number, text))

    received = await phone.receive(number, ucs2=counted.encoding == "ucs2")
    assert received.text == text
    assert len(received.parts) == counted.segments


# --- end to end: our app, its worker and its callback routes, with the real Kannel ------------


class WatchedStore(MemoryStore):
    """The in-memory store, telling waiters whenever a delivery changed."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def record(self, outcomes: Sequence[Any]) -> int:
        queued = await super().record(outcomes)
        self._notify()
        return queued

    async def advance(self, *args: Any, **kwargs: Any) -> bool:
        moved = await super().advance(*args, **kwargs)
        self._notify()
        return moved

    async def acknowledge(self, delivery_id: int, by: str, at: datetime) -> bool:
        done = await super().acknowledge(delivery_id, by, at)
        self._notify()
        return done

    async def until(self, condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
        """Wait until ``condition()`` holds, re-checking after every change."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                if await condition():
                    return
                await changed.wait()


def sms_settings(public_url: str, kannel: Kannel, number: str) -> Settings:
    return settings_from_dict(
        {
            "organisation": {"name": "AP-HP", "locale": "fr"},
            "server": {"public_url": public_url},
            "channels": {
                "sms": {
                    "provider": "kannel",
                    "url": kannel.sendsms_url,
                    "username_env": "TEST_KANNEL_USER",
                    "password_env": "TEST_KANNEL_PASSWORD",
                    "sender": "APHP",
                    "inbound_secret_env": "TEST_SMS_INBOUND_SECRET",
                }
            },
            "audiences": {
                "department-heads": {
                    "statement": "department_heads",
                    "policy": {"channels": ["sms"], "require_ack": True},
                    "members": [{"name": "Dr A. Martin", "phone": number, "locale": "fr"}],
                }
            },
            "default_audiences": ["department-heads"],
        }
    )


@asynccontextmanager
async def serving(
    settings_for: Callable[[str], Settings], store: MemoryStore
) -> AsyncIterator[tuple[Runtime, str]]:
    """Our real app (worker included) on a real socket; its public URL is known before the
    settings are built, because the socket is bound first."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = build_app(settings_for(url), store=store)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield app[RUNTIME], url
    finally:
        await runner.cleanup()
        sock.close()


@pytest.fixture
def kannel_env(monkeypatch: pytest.MonkeyPatch, kannel: Kannel) -> None:
    monkeypatch.setenv("TEST_KANNEL_USER", kannel.username)
    monkeypatch.setenv("TEST_KANNEL_PASSWORD", kannel.password)
    monkeypatch.setenv("TEST_SMS_INBOUND_SECRET", kannel.inbound_secret)


@pytest.mark.kannel
@pytest.mark.usefixtures("kannel_env")
async def test_declaration_is_delivered_by_kannel_and_acknowledged_by_an_ok_reply(
    kannel: Kannel, phone: FakePhone
) -> None:
    number = new_number()
    store = WatchedStore()
    async with serving(lambda url: sms_settings(url, kannel, number), store) as (runtime, url):
        kannel.relay.target = url
        try:
            incident = await runtime.service.declare(
                CRISIS_CELL,
                IncidentDraft(
                    title="Orbis indisponible",
                    systems=("Orbis",),
                    severity=Severity.CRITICAL,
                ),
            )
            received = await phone.receive(number, ucs2=None)
            [delivery] = await store.deliveries(incident.id)

            async def delivered() -> bool:
                current = await store.get_delivery(delivery.id)
                return current is not None and current.state == DeliveryState.DELIVERED

            await store.until(delivered)
            await phone.reply(number.replace("+33", "0"), "36180", "Ok !")

            async def acknowledged() -> bool:
                current = await store.get_delivery(delivery.id)
                return current is not None and current.state == DeliveryState.ACKNOWLEDGED

            await store.until(acknowledged)
        finally:
            kannel.relay.target = None
    final = await store.get_delivery(delivery.id)
    assert final is not None
    attempts = [a.outcome for a in (await store.attempts([delivery.id]))[delivery.id]]
    statement = await store.get_statement(delivery.statement_id)
    assert statement is not None
    assert received.text == statement.bodies["sms_ack"]
    assert "Répondez OK" in received.text
    assert final.acknowledged_by == "SMS reply"
    assert final.state == DeliveryState.ACKNOWLEDGED
    # Kannel's reports can come before the worker has recorded its own "sent": no order here.
    assert {"sent", "smsc accepted", "delivered", "acknowledged"} <= set(attempts)


# --- refusals before anything is sent, and transport failures (no Kannel needed) --------------


async def test_a_text_over_the_budget_is_refused_and_nothing_is_sent(
    session: aiohttp.ClientSession,
) -> None:
    text = "Orbis indisponible, passez aux procédures papier. " * 8  # 3 segments
    async with HttpStandin() as standin:
        channel = KannelChannel(
            session,
            url=standin.url + "/cgi-bin/sendsms",
            username=SecretStr("u"),
            password=SecretStr("p"),
            sender="APHP",
            max_segments=2,
        )
        with pytest.raises(PermanentError) as caught:
            await channel.send(outbound(new_number(), text))
        assert standin.requests == []
    assert "3 segments" in caught.value.reason


async def test_the_post_carries_credentials_in_headers_never_in_the_url(
    session: aiohttp.ClientSession,
) -> None:
    async with HttpStandin() as standin:
        from tests.fakes.http_standin import Reply

        standin.script("/cgi-bin/sendsms", Reply(202, text="3: Queued for later delivery"))
        channel = KannelChannel(
            session,
            url=standin.url + "/cgi-bin/sendsms",
            username=SecretStr("tocsin"),
            password=SecretStr("s3cret-pw"),
            sender="APHP",
        )
        message = outbound(
            "+33612345678",
            "Fenêtre",
            ack_token="tok-1",
            callback_token="cb-1",
            status_url="https://tocsin.example.org",
        )
        receipt = await channel.send(message)
        [request] = standin.requests
    assert receipt == Receipt(provider_id=None, state=DeliveryState.SENT, code="3")
    assert request.query == {}
    assert "s3cret-pw" not in repr(channel)
    assert request.body.decode("utf-8") == "Fenêtre"
    assert request.headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert {
        k: request.headers[k]
        for k in (
            "X-Kannel-Username",
            "X-Kannel-Password",
            "X-Kannel-From",
            "X-Kannel-To",
            "X-Kannel-Coding",
            "X-Kannel-DLR-Mask",
            "X-Kannel-DLR-Url",
        )
    } == {
        "X-Kannel-Username": "tocsin",
        "X-Kannel-Password": "s3cret-pw",
        "X-Kannel-From": "APHP",
        "X-Kannel-To": "+33612345678",
        "X-Kannel-Coding": "2",
        "X-Kannel-DLR-Mask": "31",
        "X-Kannel-DLR-Url": "https://tocsin.example.org/sms/kannel/status"
        "?t=cb-1&s=%d&a=%A&ts=%T&id=%F",  # the callback credential, not the ack token
    }


def test_a_percent_in_our_own_url_is_escaped_for_kannel() -> None:
    assert dlr_url("https://h/t%C3%A9/", "a-b_c") == (
        "https://h/t%%C3%%A9/sms/kannel/status?t=a-b_c&s=%d&a=%A&ts=%T&id=%F"
    )


async def test_an_unreachable_smsbox_is_transient(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    channel = KannelChannel(
        session,
        url=f"http://127.0.0.1:{port}/cgi-bin/sendsms",
        username=SecretStr("u"),
        password=SecretStr("p"),
        sender="APHP",
    )

    with pytest.raises(TransientError):
        await channel.send(outbound(new_number(), "Orbis indisponible."))


def test_from_settings_builds_the_kannel_adapter_with_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TEST_KANNEL_USER", "tocsin")
    monkeypatch.delenv("TEST_KANNEL_PASSWORD", raising=False)
    settings = settings_from_dict(
        {
            "channels": {
                "sms": {
                    "provider": "kannel",
                    "username_env": "TEST_KANNEL_USER",
                    "password_env": "TEST_KANNEL_PASSWORD",
                    "sender": "APHP",
                }
            }
        }
    )
    from bot.config import ConfigError

    with pytest.raises(ConfigError, match="TEST_KANNEL_PASSWORD"):
        from_settings(settings, None)  # type: ignore[arg-type]
    monkeypatch.setenv("TEST_KANNEL_PASSWORD", "pw")
    channel = from_settings(settings, None)  # type: ignore[arg-type]
    assert isinstance(channel, KannelChannel)
    assert channel.max_segments == 2


# --- measured figures (printed with -s; asserted loosely so that a slow CI still passes) ----


@pytest.mark.kannel
async def test_throughput_and_time_to_delivery_report(
    kannel: Kannel, phone: FakePhone, session: aiohttp.ClientSession
) -> None:
    number = new_number()
    channel = kannel_channel(session, kannel)
    count = 200
    reported: dict[str, float] = {}
    done = asyncio.Event()

    async def dlr(request: web.Request) -> web.Response:
        if request.query["s"] == "1":
            reported.setdefault(request.query["t"], time.perf_counter())
            if len(reported) == count:
                done.set()
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/sms/kannel/status", dlr)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    status_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    sent_at: dict[str, float] = {}
    try:

        async def one(i: int) -> None:
            message = outbound(
                number, f"Message {i}", callback_token=f"cb{i}", status_url=status_url
            )
            sent_at[message.callback_token] = time.perf_counter()
            await channel.send(message)

        start = time.perf_counter()
        semaphore = asyncio.Semaphore(20)

        async def bounded(i: int) -> None:
            async with semaphore:
                await one(i)

        await asyncio.gather(*(bounded(i) for i in range(count)))
        accepted = time.perf_counter() - start
        texts = {(await phone.receive(number)).text for _ in range(count)}
        async with asyncio.timeout(30):
            await done.wait()
    finally:
        await runner.cleanup()
    latencies = sorted(reported[t] - sent_at[t] for t in sent_at)
    median, p95 = latencies[count // 2] * 1000, latencies[int(count * 0.95)] * 1000
    # The measured figures are the point of this test: see them with -s.
    print(
        f"\nKannel: {count / accepted:.0f} sends/s accepted by sendsms (20 in flight); "
        f"send → DLR delivered: median {median:.0f} ms, p95 {p95:.0f} ms"
    )
    assert texts == {f"Message {i}" for i in range(count)}
