"""One table-driven harness for every HTTP adapter: odd answers in, a classification out.

Each adapter in ``ADAPTERS`` is fed the same scenarios by the same local stand-in (200, 201,
400, 401, 404, 429 with ``Retry-After`` in seconds or as a date, 500, 502, 503, a hang, a
reset) and must answer with a :class:`Receipt`, a :class:`TransientError` (with the
provider's wait where it gave one), a :class:`PermanentError` carrying the status, or an
:class:`UnknownOutcome` where the request left and no answer came from a provider whose
create call is not idempotent (Slack, Telegram, Kannel, Twilio; a webhook resend carries the
same ``Idempotency-Key``, so its hang stays transient). To add an adapter, add an
:class:`Adapter` row: how to build it, what to send, how its provider answers success and
failure, what receipt a success gives, and where its provider's facts differ from the
table's defaults (``overrides``). ``PROVIDER_CASES`` then feeds each adapter the answers only
its provider gives (Slack's ``ok: false`` codes, Telegram's blocked bot, Kannel's queued
answer, Twilio's error codes); ``test_every_http_channel_has_a_row`` fails when a registered
HTTP channel (or an SMS provider) has no row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from pydantic import SecretStr
from slack_sdk.web.async_client import AsyncWebClient

from bot.channels.http_errors import parse_retry_after
from bot.channels.slack import SlackChannel
from bot.channels.sms.kannel import KannelChannel
from bot.channels.sms.twilio import TwilioChannel
from bot.channels.telegram import TelegramChannel, build_bot
from bot.channels.webhook import WebhookChannel
from bot.config import WebhookChannelSettings
from bot.domain.errors import ChannelError, PermanentError, TransientError, UnknownOutcome
from bot.domain.models import ChannelName, DeliveryState
from bot.ports import Channel, OutboundMessage, Receipt
from tests.fakes.http_standin import HttpStandin, Reply

# Short, so that the hang scenario costs little; long enough for loopback.
TIMEOUT = 0.5


@dataclass(frozen=True)
class Adapter:
    """How the harness drives one HTTP adapter against the stand-in."""

    name: str
    path: str  # where on the stand-in the adapter sends
    build: Callable[[aiohttp.ClientSession, str], Channel]  # (shared session, stand-in URL)
    message: Callable[[str], OutboundMessage]  # stand-in URL → what to send
    answer: Callable[[int, Mapping[str, str]], Reply]  # the provider's reply for a status
    receipt: Callable[[int], Receipt]  # what a success with this status must give
    # Scenario name → what this provider's facts make of it, where they differ from the table.
    overrides: Mapping[str, Expect] = field(default_factory=dict)
    # What a permanent error's reason must hold for a status (the provider's own words).
    reason: Callable[[int], str] = lambda status: f"provider said {status}"


def _webhook_message(base_url: str) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=1,
        channel=ChannelName.WEBHOOK,
        address=base_url + "/hooks/T0/B0/x",
        recipient="crisis-cell",
        locale="fr",
        bodies={"subject": "Panne Orbis", "text": "Orbis est indisponible."},
        require_ack=False,
        ack_token="tok",
        idempotency_key="delivery-1",
    )


def _webhook_answer(status: int, headers: Mapping[str, str]) -> Reply:
    if status < 300:
        return Reply(status, {"ok": True, "id": "m-1"}, headers)
    return Reply(status, {"ok": False, "error": f"provider said {status}"}, headers)


@dataclass(frozen=True)
class Expect:
    """The classification a scenario must get."""

    outcome: type[ChannelError] | type[Receipt]
    code: str | None = None
    retry_after: float | None = None
    scope: str | None = None


def _message(channel: ChannelName, address: str) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=1,
        channel=channel,
        address=address,
        recipient="crisis-cell",
        locale="fr",
        bodies={"text": "Orbis est indisponible.", "telegram": "Orbis", "sms": "Orbis HS"},
        require_ack=False,
        ack_token="tok",
    )


def _slack_answer(status: int, headers: Mapping[str, str]) -> Reply:
    if status < 300:
        return Reply(status, {"ok": True, "channel": "C0CRISIS", "ts": "1.000001"}, headers)
    # Slack names its error in ``error``; the status stands in for it here.
    return Reply(status, {"ok": False, "error": str(status)}, headers)


def _telegram_answer(status: int, headers: Mapping[str, str]) -> Reply:
    if status < 300:
        chat = {"id": 1001, "type": "private", "first_name": "A"}
        return Reply(status, {"ok": True, "result": {"message_id": 5, "date": 0, "chat": chat}})
    body: dict[str, object] = {
        "ok": False,
        "error_code": status,
        "description": f"provider said {status}",
    }
    wait = headers.get("Retry-After", "")
    if status == 429 and wait.isdigit():  # Telegram gives its wait in the body, not a header
        body["parameters"] = {"retry_after": int(wait)}
    return Reply(status, body, headers)


def _kannel_answer(status: int, headers: Mapping[str, str]) -> Reply:
    if status < 300:
        return Reply(status, text="0: Accepted for delivery", headers=headers)
    return Reply(status, text=f"provider said {status}", headers=headers)


def _twilio_answer(status: int, headers: Mapping[str, str]) -> Reply:
    if status < 300:
        return Reply(status, {"sid": "SM1", "status": "queued"}, headers)
    return Reply(status, {"code": status, "message": f"provider said {status}"}, headers)


_TOKEN = "123456:harness-token"
_UNKNOWN = {"hang": Expect(UnknownOutcome), "reset": Expect(UnknownOutcome)}

ADAPTERS = [
    Adapter(
        name="webhook",
        path="/hooks/T0/B0/x",
        build=lambda session, _: WebhookChannel(session, WebhookChannelSettings(timeout=TIMEOUT)),
        message=_webhook_message,
        answer=_webhook_answer,
        receipt=lambda status: Receipt("m-1", DeliveryState.DELIVERED, str(status)),
    ),
    Adapter(
        name="slack",
        path="/api/chat.postMessage",
        build=lambda session, url: SlackChannel(
            AsyncWebClient(
                token="xoxb-t", base_url=url + "/api/", session=session, retry_handlers=[]
            ),
            timeout=TIMEOUT,
        ),
        message=lambda _: _message(ChannelName.SLACK, "C0CRISIS"),
        answer=_slack_answer,
        receipt=lambda _: Receipt("C0CRISIS:1.000001", DeliveryState.DELIVERED, "ok"),
        overrides={
            **_UNKNOWN,
            # The SDK takes only a 200 with ``ok: true`` as success; Slack never answers 201.
            "201": Expect(PermanentError, "201"),
        },
        reason=lambda status: f"HTTP {status}",
    ),
    Adapter(
        name="telegram",
        path=f"/bot{_TOKEN}/sendMessage",
        build=lambda session, url: TelegramChannel(
            build_bot(_TOKEN, url, session, read_timeout=TIMEOUT)
        ),
        message=lambda _: _message(ChannelName.TELEGRAM, "1001"),
        answer=_telegram_answer,
        receipt=lambda _: Receipt("1001:5", DeliveryState.SENT, "200"),
        overrides={
            **_UNKNOWN,
            # Telegram's flood wait is an integer in the body; a 429 without it (never seen
            # from Telegram) is not read as a chat's flood control.
            "429 retry-after date": Expect(TransientError, "429", scope="provider"),
            "429 no retry-after": Expect(TransientError, "429", scope="provider"),
            "503 retry-after": Expect(TransientError, "503", scope="provider"),
        },
        # Telegram answers 401 or 404 to a bad token: python-telegram-bot says so.
        reason=lambda status: "token" if status in (401, 404) else f"provider said {status}",
    ),
    Adapter(
        name="kannel",
        path="/cgi-bin/sendsms",
        build=lambda session, url: KannelChannel(
            session,
            url=url + "/cgi-bin/sendsms",
            username=SecretStr("u"),
            password=SecretStr("p"),
            sender="APHP",
            timeout=TIMEOUT,
        ),
        message=lambda _: _message(ChannelName.SMS, "+33612345678"),
        answer=_kannel_answer,
        receipt=lambda _: Receipt(None, DeliveryState.SENT, "0"),
        overrides=_UNKNOWN,
    ),
    Adapter(
        name="twilio",
        path="/2010-04-01/Accounts/AC1/Messages.json",
        build=lambda session, url: TwilioChannel(
            session,
            api_url=url,
            account_sid="AC1",
            auth_token=SecretStr("t"),
            sender="+33700000000",
            timeout=TIMEOUT,
        ),
        message=lambda _: _message(ChannelName.SMS, "+33612345678"),
        answer=_twilio_answer,
        receipt=lambda _: Receipt("SM1", DeliveryState.SENT, "queued"),
        overrides={
            **_UNKNOWN,
            # Twilio's 429 is the account's concurrency limit, not one number's.
            "429 retry-after seconds": Expect(TransientError, "429", 7.0, "provider"),
            "429 retry-after date": Expect(TransientError, "429", 120.0, "provider"),
            "429 no retry-after": Expect(TransientError, "429", scope="provider"),
        },
    ),
]


@dataclass(frozen=True)
class Scenario:
    name: str
    status: int = 200
    headers: Callable[[], dict[str, str]] = field(default=dict)
    action: str = "answer"  # or "hang", "reset"
    expect: Expect = Expect(Receipt)


def _in_two_minutes() -> dict[str, str]:
    return {"Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=120), True)}


SCENARIOS = [
    Scenario("200", 200),
    Scenario("201", 201),
    Scenario("400", 400, expect=Expect(PermanentError, "400")),
    Scenario("401", 401, expect=Expect(PermanentError, "401")),
    Scenario("404", 404, expect=Expect(PermanentError, "404")),
    Scenario(
        "429 retry-after seconds",
        429,
        lambda: {"Retry-After": "7"},
        expect=Expect(TransientError, "429", retry_after=7.0, scope="destination"),
    ),
    Scenario(
        "429 retry-after date",
        429,
        _in_two_minutes,
        expect=Expect(TransientError, "429", retry_after=120.0, scope="destination"),
    ),
    Scenario("429 no retry-after", 429, expect=Expect(TransientError, "429", scope="destination")),
    Scenario("500", 500, expect=Expect(TransientError, "500", scope="provider")),
    Scenario("502", 502, expect=Expect(TransientError, "502", scope="provider")),
    Scenario(
        "503 retry-after",
        503,
        lambda: {"Retry-After": "30"},
        expect=Expect(TransientError, "503", retry_after=30.0, scope="provider"),
    ),
    Scenario("hang", action="hang", expect=Expect(TransientError)),
    Scenario("reset", action="reset", expect=Expect(TransientError)),
]


@pytest.fixture
async def standin() -> AsyncIterator[HttpStandin]:
    async with HttpStandin() as server:
        yield server


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
async def test_classifies_the_answer(
    adapter: Adapter, scenario: Scenario, session: aiohttp.ClientSession, standin: HttpStandin
) -> None:
    if scenario.action == "hang":
        reply = Reply.hang()
    elif scenario.action == "reset":
        reply = Reply.reset()
    else:
        reply = adapter.answer(scenario.status, scenario.headers())
    standin.script(adapter.path, reply)
    channel = adapter.build(session, standin.url)

    outcome: Receipt | ChannelError
    try:
        outcome = await channel.send(adapter.message(standin.url))
    except ChannelError as exc:
        outcome = exc
    finally:
        await channel.close()

    expect = adapter.overrides.get(scenario.name, scenario.expect)
    # Retrying is the engine's job: an adapter makes exactly one request per send.
    assert len(standin.requests_to(adapter.path)) == 1
    if expect.outcome is Receipt:
        assert outcome == adapter.receipt(scenario.status)
        return
    assert type(outcome) is expect.outcome, f"got {outcome!r}"
    assert isinstance(outcome, ChannelError)
    assert outcome.code == expect.code
    assert outcome.reason
    if isinstance(outcome, PermanentError):
        assert adapter.reason(scenario.status) in outcome.reason
    if isinstance(outcome, TransientError):
        if expect.retry_after is None:
            assert outcome.retry_after is None
        else:
            assert outcome.retry_after == pytest.approx(expect.retry_after, abs=3)
        if expect.scope is not None:
            assert outcome.scope == expect.scope


NOW = datetime(2023, 8, 30, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("Wed, 30 Aug 2023 09:02:00 GMT", 120.0),
        ("Wed, 30 Aug 2023 08:59:00 GMT", 0.0),  # already past: go now
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_forms(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_every_http_channel_has_a_row() -> None:
    """Each registered channel but e-mail (SMTP, tested against a real relay) speaks HTTP:
    each has a row, and the SMS channel one per provider it can be configured with."""
    from typing import get_args

    from bot.channels.registry import specs
    from bot.channels.sms import SmsChannelSettings

    covered = {adapter.message("http://127.0.0.1").channel for adapter in ADAPTERS}
    http_channels = {spec.name for spec in specs()} - {ChannelName.EMAIL}
    assert http_channels <= covered
    providers = set(get_args(SmsChannelSettings.model_fields["provider"].annotation))
    assert providers <= {adapter.name for adapter in ADAPTERS}


@dataclass(frozen=True)
class ProviderCase:
    """An answer only one provider gives, and what it must be classified as."""

    adapter: str
    name: str
    reply: Callable[[], Reply]
    expect: Expect
    receipt: Receipt | None = None


def _slack_error(code: str) -> Callable[[], Reply]:
    return lambda: Reply(200, {"ok": False, "error": code})


def _telegram_error(status: int, description: str) -> Callable[[], Reply]:
    return lambda: Reply(status, {"ok": False, "error_code": status, "description": description})


def _twilio_error(status: int, code: int, message: str) -> Callable[[], Reply]:
    return lambda: Reply(status, {"code": code, "message": message, "status": status})


PROVIDER_CASES = [
    ProviderCase(
        "webhook", "408 request timeout", lambda: Reply(408), Expect(TransientError, "408")
    ),
    ProviderCase("webhook", "410 gone", lambda: Reply(410), Expect(PermanentError, "410")),
    # Slack answers HTTP 200 with ``ok: false`` and names the error.
    ProviderCase(
        "slack",
        "channel_not_found",
        _slack_error("channel_not_found"),
        Expect(PermanentError, "channel_not_found"),
    ),
    ProviderCase(
        "slack",
        "not_in_channel",
        _slack_error("not_in_channel"),
        Expect(PermanentError, "not_in_channel"),
    ),
    ProviderCase(
        "slack",
        "ratelimited in the body",
        _slack_error("ratelimited"),
        Expect(TransientError, "ratelimited", scope="destination"),
    ),
    ProviderCase(
        "slack",
        "internal_error",
        _slack_error("internal_error"),
        Expect(TransientError, "internal_error"),
    ),
    ProviderCase(
        "telegram",
        "blocked by the user",
        _telegram_error(403, "Forbidden: bot was blocked by the user"),
        Expect(PermanentError, "403"),
    ),
    ProviderCase(
        "telegram",
        "chat not found",
        _telegram_error(400, "Bad Request: chat not found"),
        Expect(PermanentError, "400"),
    ),
    # Kannel answers in its body: 0 accepted, 3 queued for later; anything else is refused.
    ProviderCase(
        "kannel",
        "queued for later delivery",
        lambda: Reply(202, text="3: Queued for later delivery"),
        Expect(Receipt),
        Receipt(None, DeliveryState.SENT, "3"),
    ),
    ProviderCase(
        "kannel",
        "authorization failed",
        lambda: Reply(403, text="Authorization failed for sendsms"),
        Expect(PermanentError, "403"),
    ),
    ProviderCase(
        "twilio",
        "invalid number",
        _twilio_error(400, 21211, "The 'To' number is not a valid phone number."),
        Expect(PermanentError, "21211"),
    ),
    ProviderCase(
        "twilio",
        "unsubscribed recipient",
        _twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"),
        Expect(PermanentError, "21610"),
    ),
]


@pytest.mark.parametrize("case", PROVIDER_CASES, ids=lambda c: f"{c.adapter}: {c.name}")
async def test_provider_specific_answers(
    case: ProviderCase, session: aiohttp.ClientSession, standin: HttpStandin
) -> None:
    adapter = next(a for a in ADAPTERS if a.name == case.adapter)
    standin.script(adapter.path, case.reply())
    channel = adapter.build(session, standin.url)
    outcome: Receipt | ChannelError
    try:
        outcome = await channel.send(adapter.message(standin.url))
    except ChannelError as exc:
        outcome = exc
    finally:
        await channel.close()

    assert len(standin.requests_to(adapter.path)) == 1
    if case.expect.outcome is Receipt:
        assert outcome == case.receipt
        return
    assert type(outcome) is case.expect.outcome, f"got {outcome!r}"
    assert isinstance(outcome, ChannelError)
    assert outcome.code == case.expect.code
    if case.expect.scope is not None:
        assert isinstance(outcome, TransientError)
        assert outcome.scope == case.expect.scope
