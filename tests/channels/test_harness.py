"""One table-driven harness for every HTTP adapter: odd answers in, a classification out.

Each adapter in ``ADAPTERS`` is fed the same scenarios by the same local stand-in (200, 201,
400, 401, 404, 429 with ``Retry-After`` in seconds or as a date, 500, 502, 503, a hang, a
reset) and must answer with a :class:`Receipt`, a :class:`TransientError` (with the
provider's wait where it gave one) or a :class:`PermanentError` carrying the status. To add an
adapter, add an :class:`Adapter` row: how to build it, what to send, how its provider
answers success and failure, and what receipt a success gives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest

from bot.channels.http_errors import parse_retry_after
from bot.channels.webhook import WebhookChannel
from bot.config import WebhookChannelSettings
from bot.domain.errors import ChannelError, PermanentError, TransientError
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


ADAPTERS = [
    Adapter(
        name="webhook",
        path="/hooks/T0/B0/x",
        build=lambda session, _: WebhookChannel(session, WebhookChannelSettings(timeout=TIMEOUT)),
        message=_webhook_message,
        answer=_webhook_answer,
        receipt=lambda status: Receipt("m-1", DeliveryState.DELIVERED, str(status)),
    ),
]


@dataclass(frozen=True)
class Expect:
    """The classification a scenario must get."""

    outcome: type[ChannelError] | type[Receipt]
    code: str | None = None
    retry_after: float | None = None
    scope: str | None = None


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
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as shared:
        yield shared


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

    expect = scenario.expect
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
        assert f"provider said {scenario.status}" in outcome.reason
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
