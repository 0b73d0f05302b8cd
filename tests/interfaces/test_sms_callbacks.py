"""SMS gateway callbacks through our real app: Kannel delivery reports and replies, Twilio's
signed status callbacks and inbound SMS, and the sandbox gateway used by the demo.

Each test declares an outage for one department head (policy: SMS, then e-mail; acknowledgement
required) and lets the dispatcher send the SMS through a local gateway stand-in, so that the
delivery is ``sent``; then it plays the gateway calling us back.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from bot.app import RUNTIME, Runtime, build_app, build_dispatcher
from bot.channels.sms import from_settings as sms_channel
from bot.config import ConfigError, Settings, settings_from_dict
from bot.domain.ack_tokens import CALLBACK, AckKeys
from bot.domain.declarations import IncidentDraft
from bot.domain.models import Actor, ChannelName, Delivery, DeliveryState, Role, Severity
from bot.interfaces.sms_callbacks import is_ok_reply
from bot.store.memory import MemoryStore
from tests.fakes.http_standin import HttpStandin, Reply
from tests.fakes.twilio import TwilioStandin, sign
from tocsin_sandbox.sms_gateway import GatewaySms, SmsGateway, expand_dlr_url

PHONE = "+33612345678"
INBOUND = "inbound-secret-0123456789"  # what Kannel's get-url carries
SECRET = {"secret": INBOUND}
# Tokens as the app derives them: these tests run without TOCSIN_SECRET_KEY.
TOKENS = AckKeys(b"")
CRISIS_CELL = Actor("cellule-crise", Role.RESPONDER)


def settings_for(public_url: str, sms: dict[str, Any]) -> Settings:
    return settings_from_dict(
        {
            "organisation": {"name": "AP-HP", "locale": "fr"},
            "server": {"public_url": public_url},
            "channels": {
                "sms": sms,
                "email": {"host": "127.0.0.1", "port": 9, "from": "cellule-crise@example.org"},
            },
            "audiences": {
                "department-heads": {
                    "statement": "department_heads",
                    "policy": {"channels": ["sms", "email"], "require_ack": True},
                    "members": [
                        {
                            "name": "Dr A. Martin",
                            "phone": "06 12 34 56 78",
                            "email": "a.martin@example.org",
                        }
                    ],
                }
            },
            "default_audiences": ["department-heads"],
        }
    )


@dataclass
class Running:
    """Our app on a real port, its store, and the SMS delivery of the declaration."""

    runtime: Runtime
    url: str
    store: MemoryStore
    http: aiohttp.ClientSession
    incident_id: str = ""

    async def sms(self) -> Delivery:
        [delivery] = [
            d for d in await self.store.deliveries(self.incident_id) if d.channel == ChannelName.SMS
        ]
        return delivery

    async def outcomes(self, delivery: Delivery) -> list[str]:
        return [a.outcome for a in (await self.store.attempts([delivery.id]))[delivery.id]]

    async def get(self, path: str, params: dict[str, str], **kwargs: Any) -> tuple[int, str]:
        async with self.http.get(self.url + path, params=params, **kwargs) as response:
            return response.status, await response.text()

    async def post(self, path: str, **kwargs: Any) -> tuple[int, str]:
        async with self.http.post(self.url + path, **kwargs) as response:
            return response.status, await response.text()


@asynccontextmanager
async def running(
    sms: Callable[[], dict[str, Any]], *, send: bool = True
) -> AsyncIterator[Running]:
    """Serve the app, declare, and (``send``) let the dispatcher send the SMS once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    store = MemoryStore()
    app = build_app(settings_for(url, sms()), store=store, with_worker=False)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        async with aiohttp.ClientSession() as http:
            run = Running(app[RUNTIME], url, store, http)
            incident = await run.runtime.service.declare(
                CRISIS_CELL,
                IncidentDraft(
                    title="Orbis indisponible",
                    systems=("Orbis",),
                    severity=Severity.CRITICAL,
                ),
            )
            run.incident_id = incident.id
            if send:
                await build_dispatcher(run.runtime).drain()
            yield run
    finally:
        await runner.cleanup()
        sock.close()


@pytest.fixture
def kannel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KANNEL_USER", "tocsin")
    monkeypatch.setenv("TEST_KANNEL_PASSWORD", "kannel-pw")
    monkeypatch.setenv("TEST_SMS_INBOUND_SECRET", INBOUND)
    monkeypatch.delenv("TOCSIN_SECRET_KEY", raising=False)


@pytest.fixture
async def smsbox() -> AsyncIterator[HttpStandin]:
    """A smsbox that accepts everything and never reports: deliveries stay ``sent``."""
    async with HttpStandin(default=Reply(202, text="0: Accepted for delivery")) as standin:
        yield standin


@pytest.fixture
async def kannel_app(kannel_env: None, smsbox: HttpStandin) -> AsyncIterator[Running]:
    sms = {
        "provider": "kannel",
        "url": smsbox.url + "/cgi-bin/sendsms",
        "username_env": "TEST_KANNEL_USER",
        "password_env": "TEST_KANNEL_PASSWORD",
        "sender": "APHP",
        "inbound_secret_env": "TEST_SMS_INBOUND_SECRET",
    }
    async with running(lambda: sms) as run:
        assert (await run.sms()).state == DeliveryState.SENT
        yield run


# --- Kannel: delivery reports -----------------------------------------------------------------


def dlr(delivery: Delivery, report: int, answer: str = "") -> dict[str, str]:
    return {
        "t": TOKENS.token(delivery, CALLBACK),
        "s": str(report),
        "a": answer,
        "ts": "1693390000",
        "id": "3ca3aa49",
    }


async def test_kannel_report_1_marks_the_delivery_delivered(kannel_app: Running) -> None:
    delivery = await kannel_app.sms()

    answer = await kannel_app.get("/sms/kannel/status", dlr(delivery, 1))

    assert answer == (200, "OK")
    assert (await kannel_app.sms()).state == DeliveryState.DELIVERED
    assert (await kannel_app.outcomes(delivery))[-1] == "delivered"


async def test_kannel_reports_out_of_order_never_move_a_delivery_back(
    kannel_app: Running,
) -> None:
    delivery = await kannel_app.sms()

    await kannel_app.get("/sms/kannel/status", dlr(delivery, 1))
    late = await kannel_app.get("/sms/kannel/status", dlr(delivery, 8, "ACK/"))
    buffered = await kannel_app.post("/sms/kannel/status", data=dlr(delivery, 4))

    assert late == buffered == (200, "OK")
    assert (await kannel_app.sms()).state == DeliveryState.DELIVERED
    assert (await kannel_app.outcomes(delivery))[-3:] == ["delivered", "smsc accepted", "buffered"]


@pytest.mark.parametrize(("report", "outcome"), [(2, "failed"), (16, "smsc rejected")])
async def test_a_kannel_failure_report_fails_over_to_the_next_channel(
    kannel_app: Running, report: int, outcome: str
) -> None:
    delivery = await kannel_app.sms()

    answer = await kannel_app.get(
        "/sms/kannel/status", dlr(delivery, report, "NACK/0x0000000b/Invalid Destination")
    )

    failed = await kannel_app.sms()
    [email] = [
        d
        for d in await kannel_app.store.deliveries(kannel_app.incident_id)
        if d.channel == ChannelName.EMAIL
    ]
    assert answer == (200, "OK")
    assert failed.state == DeliveryState.FAILED
    assert failed.last_error == "NACK/0x0000000b/Invalid Destination"
    assert (await kannel_app.outcomes(delivery))[-1] == outcome
    assert (email.failover_of, email.address, email.state) == (
        delivery.id,
        "a.martin@example.org",
        DeliveryState.QUEUED,
    )
    # A report after the failure changes nothing; an e-mail delivery's token is not an SMS one.
    await kannel_app.get("/sms/kannel/status", dlr(delivery, 1))
    assert (await kannel_app.sms()).state == DeliveryState.FAILED
    assert (await kannel_app.get("/sms/kannel/status", dlr(email, 1)))[0] == 403


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"s": "1"}, id="no-token"),
        pytest.param({"t": "not-a-token", "s": "1"}, id="unknown-token"),
    ],
)
async def test_a_kannel_report_without_a_known_token_is_refused(
    kannel_app: Running, params: dict[str, str]
) -> None:
    status, body = await kannel_app.get("/sms/kannel/status", params)

    assert status == 403
    assert "token" in body
    assert (await kannel_app.sms()).state == DeliveryState.SENT


@pytest.mark.parametrize("report", ["", "3", "32", "delivered"])
async def test_a_kannel_report_of_no_known_type_is_bad_input(
    kannel_app: Running, report: str
) -> None:
    delivery = await kannel_app.sms()

    status, _ = await kannel_app.get("/sms/kannel/status", {**dlr(delivery, 1), "s": report})

    assert status == 400
    assert (await kannel_app.sms()).state == DeliveryState.SENT


# --- Kannel: "OK" replies ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["OK", "ok", "Ok !", " ÖK. ", "Ｏｋ", "o.k."])
def test_ok_replies_whatever_case_accents_and_punctuation(text: str) -> None:
    assert is_ok_reply(text)


@pytest.mark.parametrize("text", ["", "KO", "OK merci", "okay", "0K", "non"])
def test_anything_else_is_not_an_ok_reply(text: str) -> None:
    assert not is_ok_reply(text)


@pytest.mark.parametrize("sender", [PHONE, "0612345678", "0033612345678"])
async def test_an_ok_reply_acknowledges_the_senders_pending_delivery(
    kannel_app: Running, sender: str
) -> None:
    answer = await kannel_app.get(
        "/sms/kannel/inbound", {**SECRET, "from": sender, "to": "36180", "text": "Ok !"}
    )

    delivery = await kannel_app.sms()
    assert answer == (200, "")
    assert delivery.state == DeliveryState.ACKNOWLEDGED
    assert delivery.acknowledged_by == "SMS reply"


async def test_kannel_post_url_form_is_understood(kannel_app: Running) -> None:
    answer = await kannel_app.post(
        f"/sms/kannel/inbound?secret={INBOUND}",
        data="ok".encode("utf-16-be"),
        headers={"Content-Type": "text/plain; charset=UTF-16BE", "X-Kannel-From": PHONE},
    )

    assert answer == (200, "")
    assert (await kannel_app.sms()).state == DeliveryState.ACKNOWLEDGED


@pytest.mark.parametrize(
    ("sender", "text"), [(PHONE, "OK merci"), ("+33698765432", "OK")], ids=["not-ok", "stranger"]
)
async def test_other_replies_change_nothing(kannel_app: Running, sender: str, text: str) -> None:
    answer = await kannel_app.get("/sms/kannel/inbound", {**SECRET, "from": sender, "text": text})

    assert answer == (200, "")
    assert (await kannel_app.sms()).state == DeliveryState.SENT


@pytest.mark.parametrize("sender", ["", "not a number", "123"])
async def test_a_reply_without_a_valid_sender_is_bad_input(
    kannel_app: Running, sender: str
) -> None:
    status, _ = await kannel_app.get(
        "/sms/kannel/inbound", {**SECRET, "from": sender, "text": "OK"}
    )

    assert status == 400
    assert (await kannel_app.sms()).state == DeliveryState.SENT


async def test_without_an_inbound_secret_every_reply_is_refused(
    kannel_env: None, smsbox: HttpStandin
) -> None:
    sms = {
        "provider": "kannel",
        "url": smsbox.url + "/cgi-bin/sendsms",
        "username_env": "TEST_KANNEL_USER",
        "password_env": "TEST_KANNEL_PASSWORD",
        "sender": "APHP",
    }
    async with running(lambda: sms) as run:
        # Even from this machine, with no proxy header: fail closed.
        status, body = await run.get("/sms/kannel/inbound", {"from": PHONE, "text": "OK"})
        assert status == 403
        assert "inbound_secret_env" in body
        assert (await run.sms()).state == DeliveryState.SENT


@pytest.mark.parametrize("value", ["", "short-secret"], ids=["empty", "too-short"])
def test_an_empty_or_short_inbound_secret_is_a_config_error(
    kannel_env: None, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TEST_SMS_INBOUND_SECRET", value)
    settings = settings_for(
        "http://127.0.0.1:9",
        {
            "provider": "kannel",
            "sender": "APHP",
            "username_env": "TEST_KANNEL_USER",
            "password_env": "TEST_KANNEL_PASSWORD",
            "inbound_secret_env": "TEST_SMS_INBOUND_SECRET",
        },
    )
    with pytest.raises(ConfigError, match=r"channels\.sms\.inbound_secret_env"):
        sms_channel(settings, None)  # type: ignore[arg-type]


async def test_with_a_secret_a_reply_must_carry_it(kannel_app: Running) -> None:
    reply = {"from": PHONE, "text": "OK"}
    proxied = {"X-Forwarded-For": "203.0.113.9"}

    missing = await kannel_app.get("/sms/kannel/inbound", reply)
    wrong = await kannel_app.get("/sms/kannel/inbound", {**reply, "secret": INBOUND + "x"})
    empty = await kannel_app.get("/sms/kannel/inbound", {**reply, "secret": ""})
    state_after_refusals = (await kannel_app.sms()).state
    right = await kannel_app.get("/sms/kannel/inbound", {**reply, **SECRET}, headers=proxied)

    assert (missing[0], wrong[0], empty[0], right[0]) == (403, 403, 403, 200)
    assert state_after_refusals == DeliveryState.SENT
    assert (await kannel_app.sms()).state == DeliveryState.ACKNOWLEDGED


async def test_a_replayed_ok_acknowledges_nothing_more(kannel_app: Running) -> None:
    reply = {**SECRET, "from": PHONE, "text": "OK", "id": "kannel-msg-1"}
    assert await kannel_app.get("/sms/kannel/inbound", reply) == (200, "")
    first = await kannel_app.sms()
    assert first.state == DeliveryState.ACKNOWLEDGED
    # A second delivery to the same number, awaiting its "OK".
    await kannel_app.runtime.service.update(
        CRISIS_CELL, kannel_app.incident_id, None, "Toujours indisponible."
    )
    await build_dispatcher(kannel_app.runtime).drain()
    [pending] = [
        d
        for d in await kannel_app.store.deliveries(kannel_app.incident_id)
        if d.channel == ChannelName.SMS and d.id != first.id
    ]
    assert pending.state == DeliveryState.SENT

    assert await kannel_app.get("/sms/kannel/inbound", reply) == (200, "")  # the same reply

    assert (await kannel_app.store.get_delivery(pending.id)).state == DeliveryState.SENT  # type: ignore[union-attr]


async def test_an_ok_written_before_the_delivery_was_sent_acknowledges_nothing(
    kannel_app: Running,
) -> None:
    delivery = await kannel_app.sms()
    [sent] = [a.at for a in (await kannel_app.store.attempts([delivery.id]))[delivery.id]]
    before = str(int(sent.timestamp()) - 600)  # ten minutes before: meant for another message
    after = str(int(sent.timestamp()) + 60)
    reply = {**SECRET, "from": PHONE, "text": "OK"}

    early = await kannel_app.get("/sms/kannel/inbound", {**reply, "id": "m1", "ts": before})
    assert early == (200, "")
    assert (await kannel_app.sms()).state == DeliveryState.SENT

    late = await kannel_app.get("/sms/kannel/inbound", {**reply, "id": "m2", "ts": after})
    assert late == (200, "")
    assert (await kannel_app.sms()).state == DeliveryState.ACKNOWLEDGED


async def test_a_kannel_report_with_the_ack_token_is_refused(kannel_app: Running) -> None:
    delivery = await kannel_app.sms()
    forged = {**dlr(delivery, 2), "t": TOKENS.token(delivery)}  # the ack token, not the callback's

    status, _ = await kannel_app.get("/sms/kannel/status", forged)

    assert status == 403
    assert (await kannel_app.sms()).state == DeliveryState.SENT


async def test_twilio_routes_are_not_served_for_kannel(kannel_app: Running) -> None:
    status, _ = await kannel_app.post("/sms/twilio/status", data={"MessageStatus": "delivered"})

    assert status == 404


# --- Twilio: signed status callbacks and inbound SMS ------------------------------------------


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStandin]:
    async with TwilioStandin() as standin:
        yield standin


@pytest.fixture
async def twilio_app(
    twilio: TwilioStandin, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Running]:
    monkeypatch.setenv("TEST_TWILIO_SID", twilio.account_sid)
    monkeypatch.setenv("TEST_TWILIO_TOKEN", twilio.auth_token)
    sms = {
        "provider": "twilio",
        "api_url": twilio.url,
        "account_sid_env": "TEST_TWILIO_SID",
        "auth_token_env": "TEST_TWILIO_TOKEN",
        "sender": "+33700000000",
    }
    async with running(lambda: sms) as run:
        assert (await run.sms()).state == DeliveryState.SENT
        yield run


async def test_a_signed_delivered_callback_marks_the_delivery_delivered(
    twilio: TwilioStandin, twilio_app: Running
) -> None:
    [message] = twilio.messages
    delivery = await twilio_app.sms()

    answer = await twilio.status_callback(message, "delivered")

    assert answer[0] == 200
    assert (await twilio_app.sms()).state == DeliveryState.DELIVERED
    assert delivery.provider_id is None or delivery.provider_id == message.sid
    assert (await twilio_app.outcomes(delivery))[-1] == "delivered"


@pytest.mark.parametrize("signature", [None, "", "bm90IGEgc2lnbmF0dXJl", "wrong-token"], ids=str)
async def test_a_callback_without_a_valid_signature_is_refused_and_changes_nothing(
    twilio: TwilioStandin, twilio_app: Running, signature: str | None
) -> None:
    [message] = twilio.messages
    delivery = await twilio_app.sms()
    before = await twilio_app.outcomes(delivery)
    if signature == "wrong-token":
        assert message.status_callback is not None
        form = {"MessageSid": message.sid, "MessageStatus": "delivered"}
        signature = sign("not-the-auth-token", message.status_callback, form)

    status, _ = await twilio.status_callback(message, "delivered", signature=signature)

    assert status == 403
    assert (await twilio_app.sms()).state == DeliveryState.SENT
    assert await twilio_app.outcomes(delivery) == before


async def test_a_signature_does_not_carry_over_to_another_deliverys_token(
    twilio: TwilioStandin, twilio_app: Running
) -> None:
    [message] = twilio.messages
    assert message.status_callback is not None
    form = {"MessageSid": message.sid, "MessageStatus": "failed", "ErrorCode": "30003"}
    signature = sign(twilio.auth_token, message.status_callback, form)
    other_url = message.status_callback.split("?")[0] + "?t=another-token"

    async with twilio_app.http.post(
        other_url, data=form, headers={"X-Twilio-Signature": signature}
    ) as response:
        status = response.status

    assert status == 403
    assert (await twilio_app.sms()).state == DeliveryState.SENT


@pytest.mark.parametrize("status", ["undelivered", "failed"])
async def test_a_twilio_failure_fails_over_with_the_error_code(
    twilio: TwilioStandin, twilio_app: Running, status: str
) -> None:
    [message] = twilio.messages
    delivery = await twilio_app.sms()

    answer = await twilio.status_callback(message, status, error_code=30003)

    failed = await twilio_app.sms()
    emails = [
        d
        for d in await twilio_app.store.deliveries(twilio_app.incident_id)
        if d.channel == ChannelName.EMAIL
    ]
    attempts = (await twilio_app.store.attempts([delivery.id]))[delivery.id]
    assert answer[0] == 200
    assert failed.state == DeliveryState.FAILED
    assert (attempts[-1].outcome, attempts[-1].code) == (status, "30003")
    assert failed.last_error == f"Twilio {status} (error 30003)"
    assert [(e.failover_of, e.state) for e in emails] == [(delivery.id, DeliveryState.QUEUED)]


async def test_progress_callbacks_record_nothing_and_never_move_back(
    twilio: TwilioStandin, twilio_app: Running
) -> None:
    [message] = twilio.messages
    delivery = await twilio_app.sms()
    before = await twilio_app.outcomes(delivery)

    queued = await twilio.status_callback(message, "queued")
    sending = await twilio.status_callback(message, "sending")
    unchanged = await twilio_app.outcomes(delivery)
    await twilio.status_callback(message, "delivered")
    late = await twilio.status_callback(message, "sent")

    assert (queued[0], sending[0], late[0]) == (200, 200, 200)
    assert unchanged == before
    assert (await twilio_app.sms()).state == DeliveryState.DELIVERED


async def test_an_unknown_twilio_status_is_bad_input(
    twilio: TwilioStandin, twilio_app: Running
) -> None:
    [message] = twilio.messages

    status, _ = await twilio.status_callback(message, "teleported")

    assert status == 400
    assert (await twilio_app.sms()).state == DeliveryState.SENT


async def test_a_signed_ok_sms_acknowledges_and_gets_empty_twiml(
    twilio: TwilioStandin, twilio_app: Running
) -> None:
    status, body = await twilio.inbound(twilio_app.url + "/sms/twilio/inbound", PHONE, "ok.")

    assert status == 200
    assert body == '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
    assert (await twilio_app.sms()).state == DeliveryState.ACKNOWLEDGED


async def test_a_replayed_signed_ok_acknowledges_nothing_more(
    twilio: TwilioStandin, twilio_app: Running
) -> None:
    url = twilio_app.url + "/sms/twilio/inbound"
    form = {
        "MessageSid": "SM" + "0" * 32,
        "AccountSid": twilio.account_sid,
        "From": PHONE,
        "To": "+33700000000",
        "Body": "OK",
    }
    assert (await twilio.post_signed(url, form))[0] == 200
    first = await twilio_app.sms()
    assert first.state == DeliveryState.ACKNOWLEDGED
    await twilio_app.runtime.service.update(
        CRISIS_CELL, twilio_app.incident_id, None, "Toujours indisponible."
    )
    await build_dispatcher(twilio_app.runtime).drain()
    [pending] = [
        d
        for d in await twilio_app.store.deliveries(twilio_app.incident_id)
        if d.channel == ChannelName.SMS and d.id != first.id
    ]

    # The same signed request, captured and played again.
    assert (await twilio.post_signed(url, form))[0] == 200

    again = await twilio_app.store.get_delivery(pending.id)
    assert again is not None and again.state == DeliveryState.SENT


@pytest.mark.parametrize("signature", [None, "bm90IGEgc2lnbmF0dXJl"], ids=["missing", "wrong"])
async def test_an_unsigned_inbound_sms_is_refused(
    twilio: TwilioStandin, twilio_app: Running, signature: str | None
) -> None:
    status, _ = await twilio.inbound(
        twilio_app.url + "/sms/twilio/inbound", PHONE, "OK", signature=signature
    )

    assert status == 403
    assert (await twilio_app.sms()).state == DeliveryState.SENT


async def test_kannel_routes_are_not_served_for_twilio(twilio_app: Running) -> None:
    delivery = await twilio_app.sms()

    status, _ = await twilio_app.get("/sms/kannel/status", dlr(delivery, 1))

    assert status == 404
    assert (await twilio_app.sms()).state == DeliveryState.SENT


# --- the sandbox gateway (what `tocsin demo` uses without Kannel) -----------------------------


async def test_the_sandbox_gateway_reports_delivery_and_plays_an_ok_reply(
    kannel_env: None,
) -> None:
    async with SmsGateway(username="tocsin", password="kannel-pw") as gateway:
        sms = {
            "provider": "kannel",
            "url": gateway.url,
            "username_env": "TEST_KANNEL_USER",
            "password_env": "TEST_KANNEL_PASSWORD",
            "sender": "APHP",
            "inbound_secret_env": "TEST_SMS_INBOUND_SECRET",
        }
        async with running(lambda: sms) as run:
            gateway.inbound_url = f"{run.url}/sms/kannel/inbound?secret={INBOUND}"
            [sent] = await gateway.wait_for(1)
            await gateway.reports_sent()
            delivered = await run.sms()
            replied = await gateway.reply(PHONE, "OK")
            acknowledged = await run.sms()
            outcomes = await run.outcomes(acknowledged)
    statement = await run.store.get_statement(delivered.statement_id)
    assert statement is not None
    # A member who must acknowledge gets the version that asks for an "OK" reply.
    assert (sent.sender, sent.receiver, sent.text) == ("APHP", PHONE, statement.bodies["sms_ack"])
    assert "Répondez OK" in sent.text
    assert sent.coding == 0
    assert delivered.state == DeliveryState.DELIVERED
    assert replied == 200
    assert acknowledged.state == DeliveryState.ACKNOWLEDGED
    # The gateway's reports may come before the worker records its own "sent".
    assert sorted(outcomes) == ["acknowledged", "delivered", "sent", "smsc accepted"]


async def test_the_sandbox_gateway_refuses_wrong_credentials_and_no_sender() -> None:
    async with (
        SmsGateway(username="tocsin", password="pw") as gateway,
        aiohttp.ClientSession() as http,
    ):

        async def post(headers: dict[str, str]) -> tuple[int, str]:
            base = {"Content-Type": "text/plain; charset=UTF-8", "X-Kannel-To": PHONE}
            async with http.post(gateway.url, data=b"OK", headers={**base, **headers}) as r:
                return r.status, await r.text()

        wrong = await post(
            {"X-Kannel-Username": "tocsin", "X-Kannel-Password": "no", "X-Kannel-From": "APHP"}
        )
        no_sender = await post({"X-Kannel-Username": "tocsin", "X-Kannel-Password": "pw"})
        query = urlencode(
            {
                "username": "tocsin",
                "password": "pw",
                "from": "APHP",
                "to": PHONE,
                "text": "Fenêtre",
                "coding": "2",
            }
        )
        async with http.get(f"{gateway.url}?{query}") as response:
            accepted = (response.status, await response.text())

    assert wrong == (403, "Authorization failed for sendsms")
    assert no_sender[0] == 400
    assert accepted == (202, "0: Accepted for delivery")
    assert [(m.text, m.coding) for m in gateway.messages] == [("Fenêtre", 2)]


def test_dlr_url_escapes_are_filled_in_like_kannel() -> None:
    sms = GatewaySms("id-1", "APHP", PHONE, "x", 0, 31, None)

    url = expand_dlr_url("http://h/s?t=a%%b&s=%d&a=%A&id=%F&p=%p&x=%Z", sms, 8, "ACK/")

    assert url == "http://h/s?t=a%b&s=8&a=ACK%2F&id=id-1&p=%2B33612345678&x=%Z"
