"""Twilio adapter against a local Twilio-API stand-in: sends, errors, and reconciliation after an
unknown outcome (no double send); plus the webhook signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from bot.channels.sms import from_settings
from bot.channels.sms.signature import twilio_signature, valid_twilio_signature
from bot.channels.sms.twilio import TwilioChannel, reference
from bot.config import settings_from_dict
from bot.domain.errors import PermanentError, TransientError, UnknownOutcome
from bot.domain.models import ChannelName, DeliveryState
from bot.domain.sms_text import sms_encoding
from bot.ports import OutboundMessage, Receipt
from tests.fakes.twilio import Failure, TwilioStandin

NUMBER = "+33612345678"
TEXT = "AP-HP - Incident critique : Orbis indisponible. Passez en procédures dégradées."


def outbound(text: str = TEXT, **changes: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": 42,
        "channel": ChannelName.SMS,
        "address": NUMBER,
        "recipient": "Dr A. Martin",
        "locale": "fr",
        "bodies": {"sms": text},
        "require_ack": True,
        "ack_token": "tok-42",
        "callback_token": "cb-42",
        "status_url": "https://tocsin.example.org",
        "idempotency_key": "tocsin-42-tok42",
    }
    fields.update(changes)
    return OutboundMessage(**fields)


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStandin]:
    async with TwilioStandin() as standin:
        yield standin


def channel_for(
    session: aiohttp.ClientSession,
    twilio: TwilioStandin,
    *,
    token: str | None = None,
    timeout: float = 5.0,
    sender: str | None = "+33700000000",
) -> TwilioChannel:
    return TwilioChannel(
        session,
        api_url=twilio.url,
        account_sid=twilio.account_sid,
        auth_token=SecretStr(token or twilio.auth_token),
        sender=sender,
        max_segments=2,
        timeout=timeout,
    )


# --- sending ---------------------------------------------------------------------------------


async def test_creates_the_message_with_a_status_callback_and_a_reference(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    message = outbound()

    receipt = await channel_for(session, twilio).send(message)

    [created] = twilio.messages
    assert receipt == Receipt(provider_id=created.sid, state=DeliveryState.SENT, code="queued")
    assert created.to == NUMBER
    assert created.from_ == "+33700000000"
    assert created.body == f"{TEXT}\nRéf. {reference(message)}"
    assert created.status_callback == "https://tocsin.example.org/sms/twilio/status?t=cb-42"
    assert sms_encoding(created.body).encoding == "gsm7"


async def test_the_reference_is_left_out_when_it_would_cost_a_segment(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    text = "Orbis indisponible. " * 15 + "Fin."  # 304 septets: two full segments
    assert sms_encoding(text).segments == 2

    await channel_for(session, twilio).send(outbound(text))

    assert [m.body for m in twilio.messages] == [text]


async def test_a_text_over_the_budget_is_refused_and_nothing_is_sent(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    with pytest.raises(PermanentError, match="3 segments"):
        await channel_for(session, twilio).send(outbound("Orbis indisponible. " * 20))

    assert twilio.create_requests == 0


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (Failure(400, 21211, "The 'To' number is not a valid phone number."), "21211"),
        (Failure(401, 20003, "Authenticate"), "20003"),
        (Failure(404, 20404, "The requested resource was not found"), "20404"),
    ],
)
async def test_a_refusal_is_permanent_with_twilios_error_code(
    session: aiohttp.ClientSession, twilio: TwilioStandin, failure: Failure, code: str
) -> None:
    twilio.fail_next(failure)

    with pytest.raises(PermanentError) as caught:
        await channel_for(session, twilio).send(outbound())

    assert caught.value.code == code
    assert failure.message in caught.value.reason
    assert twilio.messages == []


async def test_wrong_credentials_are_permanent_and_not_shown(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    channel = channel_for(session, twilio, token="wrong-token-value")

    with pytest.raises(PermanentError) as caught:
        await channel.send(outbound())

    assert caught.value.code == "20003"
    assert "wrong-token-value" not in str(caught.value) + repr(channel)


async def test_429_is_transient_with_twilios_wait(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    twilio.fail_next(Failure(429, 20429, "Too Many Requests", {"Retry-After": "3"}))
    channel = channel_for(session, twilio)

    with pytest.raises(TransientError) as caught:
        await channel.send(outbound())
    await channel.send(outbound())

    assert caught.value.retry_after == 3.0
    assert caught.value.code == "429"
    assert len(twilio.messages) == 1
    assert twilio.list_requests == []  # a 429 created nothing: nothing to reconcile


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_transient_and_reconciled_before_the_next_attempt(
    session: aiohttp.ClientSession, twilio: TwilioStandin, status: int
) -> None:
    twilio.fail_next(Failure(status, created=True))  # the message got in all the same
    channel = channel_for(session, twilio)

    with pytest.raises(TransientError) as caught:
        await channel.send(outbound())
    receipt = await channel.send(outbound())

    [created] = twilio.messages
    assert caught.value.code == str(status)
    assert receipt.provider_id == created.sid
    assert twilio.create_requests == 1


async def test_an_unknown_outcome_is_reconciled_not_sent_twice(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    twilio.fail_next(Failure.hang(created=True))
    channel = channel_for(session, twilio, timeout=0.3)

    with pytest.raises(UnknownOutcome):
        await channel.send(outbound())
    receipt = await channel.send(outbound())

    [created] = twilio.messages
    assert receipt == Receipt(provider_id=created.sid, state=DeliveryState.SENT, code="queued")
    assert twilio.create_requests == 1
    assert twilio.list_requests == [{"To": NUMBER, "PageSize": "50"}]


async def test_a_retry_in_another_worker_is_reconciled_too(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    """The worker that saw the timeout died; another one retries the delivery."""
    twilio.fail_next(Failure.hang(created=True))
    queued_at = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(UnknownOutcome):
        await channel_for(session, twilio, timeout=0.3).send(outbound(queued_at=queued_at))

    other_worker = channel_for(session, twilio)
    receipt = await other_worker.send(outbound(attempt=1, queued_at=queued_at))

    [created] = twilio.messages
    assert receipt.provider_id == created.sid
    assert twilio.create_requests == 1


async def test_an_unknown_outcome_that_created_nothing_is_sent_again(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    twilio.fail_next(Failure.hang(created=False))
    channel = channel_for(session, twilio, timeout=0.3)

    with pytest.raises(UnknownOutcome):
        await channel.send(outbound())
    receipt = await channel.send(outbound())
    third = await channel.send(outbound(delivery_id=43, idempotency_key="tocsin-43-x"))

    assert [m.sid for m in twilio.messages] == [receipt.provider_id, third.provider_id]
    assert twilio.create_requests == 3
    assert len(twilio.list_requests) == 1  # only the uncertain delivery was reconciled


async def test_reconciliation_ignores_another_deliverys_message_to_the_same_number(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    channel = channel_for(session, twilio, timeout=0.3)
    other = await channel.send(outbound(delivery_id=7, idempotency_key="tocsin-7-y"))
    twilio.fail_next(Failure.hang(created=False))

    with pytest.raises(UnknownOutcome):
        await channel.send(outbound())
    receipt = await channel.send(outbound())

    assert receipt.provider_id not in (None, other.provider_id)
    assert len(twilio.messages) == 2


async def test_a_reconciled_message_that_failed_is_a_permanent_failure(
    session: aiohttp.ClientSession, twilio: TwilioStandin
) -> None:
    twilio.fail_next(Failure.hang(created=True))
    channel = channel_for(session, twilio, timeout=0.3)
    with pytest.raises(UnknownOutcome):
        await channel.send(outbound())
    twilio.messages[0].status = "undelivered"

    with pytest.raises(PermanentError) as caught:
        await channel.send(outbound())

    assert caught.value.code == "30003"
    assert twilio.create_requests == 1


async def test_an_unreachable_api_is_transient(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    channel = TwilioChannel(
        session,
        api_url=f"http://127.0.0.1:{port}",
        account_sid="AC1",
        auth_token=SecretStr("t"),
        sender="+33700000000",
    )

    with pytest.raises(TransientError):
        await channel.send(outbound())


def test_from_settings_builds_the_twilio_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_TWILIO_SID", "AC123")
    monkeypatch.setenv("TEST_TWILIO_TOKEN", "secret-token")
    settings = settings_from_dict(
        {
            "channels": {
                "sms": {
                    "provider": "twilio",
                    "account_sid_env": "TEST_TWILIO_SID",
                    "auth_token_env": "TEST_TWILIO_TOKEN",
                    "api_url": "http://127.0.0.1:9/",
                    "max_segments": 3,
                }
            }
        }
    )

    channel = from_settings(settings, None)  # type: ignore[arg-type]

    assert isinstance(channel, TwilioChannel)
    assert channel.max_segments == 3
    assert "secret-token" not in repr(channel)
    assert "http://127.0.0.1:9/2010-04-01/Accounts/AC123/Messages.json" in repr(channel)


# --- X-Twilio-Signature ------------------------------------------------------------------------

SIGNED_URL = "https://tocsin.example.org/sms/twilio/status?t=abc"
PARAMS = [("MessageStatus", "delivered"), ("MessageSid", "SM1"), ("To", "+33612345678")]


def test_signature_is_base64_hmac_sha1_of_url_and_sorted_params() -> None:
    # Computed independently: URL, then name+value pairs in name order, HMAC-SHA1, base64.
    payload = SIGNED_URL + "MessageSidSM1" + "MessageStatusdelivered" + "To+33612345678"
    expected = base64.b64encode(
        hmac.new(b"12345", payload.encode(), hashlib.sha1).digest()
    ).decode()

    assert twilio_signature("12345", SIGNED_URL, PARAMS) == expected
    assert twilio_signature("12345", SIGNED_URL, reversed(PARAMS)) == expected


def test_signature_round_trip_and_what_breaks_it() -> None:
    signature = twilio_signature("12345", SIGNED_URL, PARAMS)

    assert valid_twilio_signature("12345", SIGNED_URL, PARAMS, signature)
    assert not valid_twilio_signature("12346", SIGNED_URL, PARAMS, signature)
    assert not valid_twilio_signature("12345", SIGNED_URL + "x", PARAMS, signature)
    assert not valid_twilio_signature(
        "12345", SIGNED_URL, [*PARAMS[:1], ("MessageSid", "SM2"), PARAMS[2]], signature
    )
    assert not valid_twilio_signature("12345", SIGNED_URL, PARAMS, None)
    assert not valid_twilio_signature("12345", SIGNED_URL, PARAMS, "")
    assert not valid_twilio_signature("12345", SIGNED_URL, PARAMS, "é" + signature)
    assert not valid_twilio_signature(
        "", SIGNED_URL, PARAMS, twilio_signature("", SIGNED_URL, PARAMS)
    )
