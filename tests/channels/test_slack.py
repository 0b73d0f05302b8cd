"""Slack channel: what it posts, what it makes of Slack's answers, and how the worker paces it.

Everything goes through the real slack_sdk ``AsyncWebClient`` over HTTP to the local Slack
sandbox (or the generic stand-in, for hangs and resets).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import build_renderer, build_service
from bot.channels import slack_blocks
from bot.channels.slack import SlackChannel, from_settings
from bot.config import Settings, settings_from_dict
from bot.delivery.retry import RetryPolicy
from bot.delivery.worker import Dispatcher
from bot.domain.clock import SystemClock
from bot.domain.declarations import IncidentDraft
from bot.domain.errors import PermanentError, TransientError, UnknownOutcome
from bot.domain.models import Actor, ChannelName, DeliveryState, Role, Severity
from bot.ports import Channel, OutboundMessage, Receipt
from bot.store.memory import MemoryStore
from tests.fakes.http_standin import HttpStandin, Reply
from tocsin_sandbox.slack_api import SlackSandbox

TOKEN = "xoxb-test-token"
LIVE_MENTION = re.compile(r"<(!channel|!here|!everyone|!subteam[^>]*|@[UW][A-Z0-9]+[^>]*)>")


def outbound(address: str = "C0CRISIS", **changes: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": 7,
        "channel": ChannelName.SLACK,
        "address": address,
        "recipient": "#cellule-crise",
        "locale": "fr",
        "bodies": {
            "subject": "Panne Orbis",
            "text": "Orbis est indisponible.",
            "slack": "*Orbis* est indisponible.",
        },
        "require_ack": False,
        "ack_token": "tok-7",
        "idempotency_key": "tocsin-7",
    }
    fields.update(changes)
    return OutboundMessage(**fields)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as shared:
        yield shared


@pytest.fixture
async def slack() -> AsyncIterator[SlackSandbox]:
    async with SlackSandbox(token=TOKEN) as sandbox:
        yield sandbox


@pytest.fixture
def channel(slack: SlackSandbox, session: aiohttp.ClientSession) -> SlackChannel:
    return SlackChannel(
        AsyncWebClient(token=TOKEN, base_url=slack.api_url, session=session, retry_handlers=[])
    )


def _posted(call_args: Any) -> str:
    """Everything of a call that Slack would parse for mentions."""
    return json.dumps({"text": call_args.get("text"), "blocks": call_args.get("blocks")})


async def test_posts_blocks_with_a_text_fallback(
    channel: SlackChannel, slack: SlackSandbox
) -> None:
    receipt = await channel.send(outbound())

    [call] = slack.calls_to("chat.postMessage")
    assert call.authorised
    assert call.args["channel"] == "C0CRISIS"
    assert call.args["text"] == "Orbis est indisponible."
    assert call.args["blocks"] == [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "*Orbis* est indisponible.", "verbatim": True},
        }
    ]
    [message] = slack.messages
    assert receipt == Receipt(f"C0CRISIS:{message.ts}", DeliveryState.DELIVERED, "ok")
    assert isinstance(channel, Channel)


async def test_a_person_gets_a_dm_with_the_acknowledge_button(
    channel: SlackChannel, slack: SlackSandbox
) -> None:
    receipt = await channel.send(outbound("U0HEAD1", require_ack=True, ack_token="tok-abc"))

    [message] = slack.messages
    assert message.channel == "D0HEAD1"  # Slack answers a post to a user with the DM's id
    assert receipt.provider_id == f"D0HEAD1:{message.ts}"
    button = message.blocks[-1]
    assert button["type"] == "actions"
    assert button["elements"][0]["action_id"] == "tocsin_ack"
    assert button["elements"][0]["value"] == "tok-abc"
    assert button["elements"][0]["text"]["text"] == "Acknowledge / Pris en compte"


async def test_no_button_when_no_acknowledgement_is_due(
    channel: SlackChannel, slack: SlackSandbox
) -> None:
    await channel.send(outbound(require_ack=False))

    assert all(block["type"] == "section" for block in slack.messages[0].blocks)


@pytest.mark.parametrize(
    "raw",
    [
        "<!channel> Orbis",
        "<!here> Orbis",
        "<@U0CRISIS2> Orbis",
        "<!subteam^S0ONCALL|@oncall> x",
        "<!everyone> x",
        "<@W123|boss> x",
    ],
)
async def test_mentions_never_reach_slack_live(
    channel: SlackChannel, slack: SlackSandbox, raw: str
) -> None:
    # Even a template that forgot to escape cannot ping a hospital-wide channel.
    await channel.send(outbound(bodies={"text": raw, "slack": raw}))

    [call] = slack.calls_to("chat.postMessage")
    assert LIVE_MENTION.search(_posted(call.args)) is None
    assert "&lt;" in call.args["text"]
    assert call.args["parse"] == "none"
    assert call.args["link_names"] is False


async def test_links_survive_the_mention_guard(channel: SlackChannel, slack: SlackSandbox) -> None:
    body = "Voir <https://status.example.org|la page de statut> et <#C0STAFF>."
    await channel.send(outbound(bodies={"text": "Voir la page", "slack": body}))

    [call] = slack.calls_to("chat.postMessage")
    assert call.args["blocks"][0]["text"]["text"] == body


async def test_long_statements_are_split_into_sections_under_3000(
    channel: SlackChannel, slack: SlackSandbox
) -> None:
    paragraphs = [f"*Point {i}* " + "procédure dégradée &amp; papier " * 40 for i in range(12)]
    body = "\n\n".join(paragraphs)  # ~15,000 characters
    await channel.send(outbound(bodies={"text": body.replace("*", ""), "slack": body}))

    blocks = slack.messages[0].blocks
    texts = [b["text"]["text"] for b in blocks]
    assert len(texts) > 1
    assert all(len(text) < 3000 for text in texts)
    assert " ".join(texts).split() == body.split()  # nothing lost, no entity cut in two
    assert all(not re.search(r"&[a-z]*$", text) for text in texts)
    fallback = slack.calls_to("chat.postMessage")[0].args["text"]
    assert len(fallback) <= 3000
    assert fallback.endswith("…")


def test_a_paragraph_without_breaks_is_cut_at_spaces() -> None:
    pieces = slack_blocks.split_sections("mot " * 2000)

    assert all(len(piece) < 3000 and not piece.endswith("mo") for piece in pieces)
    assert " ".join(pieces).split() == ["mot"] * 2000


@pytest.mark.parametrize(
    "error",
    [
        "channel_not_found",
        "not_in_channel",
        "invalid_auth",
        "is_archived",
        "account_inactive",
        "user_not_found",
        "some_new_error",
    ],
)
async def test_slack_refusals_are_permanent(
    channel: SlackChannel, slack: SlackSandbox, error: str
) -> None:
    slack.fail("C0CRISIS", error)

    with pytest.raises(PermanentError) as raised:
        await channel.send(outbound())

    assert raised.value.code == error


async def test_a_wrong_token_is_permanent(
    slack: SlackSandbox, session: aiohttp.ClientSession
) -> None:
    wrong = SlackChannel(
        AsyncWebClient(
            token="xoxb-wrong", base_url=slack.api_url, session=session, retry_handlers=[]
        )
    )

    with pytest.raises(PermanentError) as raised:
        await wrong.send(outbound())

    assert raised.value.code == "invalid_auth"


async def test_429_is_transient_for_that_channel_with_slacks_wait(
    channel: SlackChannel, slack: SlackSandbox
) -> None:
    slack.rate_limit("C0STAFF", retry_after=30)

    with pytest.raises(TransientError) as raised:
        await channel.send(outbound("C0STAFF"))

    assert raised.value.retry_after == 30
    assert raised.value.scope == "destination"
    assert raised.value.code == "ratelimited"
    # One call: the SDK did not sleep and retry on its own.
    assert len(slack.calls_to("chat.postMessage")) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [(200, "internal_error"), (200, "fatal_error"), (503, "service_unavailable"), (500, "boom")],
)
async def test_server_trouble_is_transient(
    channel: SlackChannel, slack: SlackSandbox, status: int, error: str
) -> None:
    slack.fail("C0CRISIS", error, status=status)

    with pytest.raises(TransientError) as raised:
        await channel.send(outbound())

    assert raised.value.scope == "provider"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        # The post was written and no answer came: Slack may hold it (reconciled next time).
        (Reply.hang(), UnknownOutcome),
        (Reply.reset(), UnknownOutcome),
        (
            Reply(502, text="<html>Bad gateway</html>", headers={"Content-Type": "text/html"}),
            TransientError,
        ),
    ],
    ids=["hang", "reset", "proxy-502"],
)
async def test_hangs_and_resets_are_unknown_proxy_pages_transient(
    reply: Reply, error: type[Exception]
) -> None:
    async with (
        HttpStandin() as standin,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session,
    ):
        standin.script("/api/chat.postMessage", reply)
        adapter = SlackChannel(
            AsyncWebClient(
                token=TOKEN, base_url=standin.url + "/api/", session=session, retry_handlers=[]
            )
        )
        with pytest.raises(error):
            await adapter.send(outbound())


async def test_an_address_that_is_not_a_slack_id_is_refused(channel: SlackChannel) -> None:
    with pytest.raises(PermanentError):
        await channel.send(outbound("#general"))


async def test_from_settings_reads_the_token_from_the_environment(
    slack: SlackSandbox, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SLACK_TOKEN", TOKEN)
    settings = settings_from_dict(
        {"channels": {"slack": {"bot_token_env": "TEST_SLACK_TOKEN", "api_url": slack.api_url}}}
    )

    adapter = from_settings(settings, session)
    await adapter.send(outbound())

    assert slack.calls_to("chat.postMessage")[0].authorised
    assert TOKEN not in repr(adapter)


# --- through the real worker -------------------------------------------------------------
def _settings(api_url: str) -> Settings:
    return settings_from_dict(
        {
            "organisation": {"name": "AP-HP", "locale": "fr", "locales": ["fr", "en"]},
            "channels": {"slack": {"api_url": api_url}},
            "audiences": {
                "crisis-cell": {
                    "statement": "internal",
                    "destinations": [{"slack_channel": "C0CRISIS"}],
                },
                "all-staff": {
                    "statement": "internal",
                    "destinations": [{"slack_channel": "C0STAFF"}, {"slack_channel": "C0NORD"}],
                },
                "department-heads": {
                    "statement": "department_heads",
                    "policy": {"channels": ["slack"], "require_ack": True},
                    "members": [{"name": "Dr A. Martin", "slack": "U0HEAD1", "locale": "fr"}],
                },
            },
            "default_audiences": ["crisis-cell", "all-staff", "department-heads"],
        }
    )


@pytest.fixture
async def worker(
    slack: SlackSandbox, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Any, Dispatcher, MemoryStore]]:
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    settings = _settings(slack.api_url)
    store = MemoryStore()
    await store.open()
    clock = SystemClock()
    service = build_service(settings, store, build_renderer(settings), clock)
    dispatcher = Dispatcher(
        store,
        {ChannelName.SLACK: from_settings(settings, session)},
        clock,
        retry=RetryPolicy(max_attempts=5),
    )
    yield service, dispatcher, store
    await store.close()


RESPONDER = Actor("slack:U0CRISIS1", Role.RESPONDER)


async def test_a_429_on_one_channel_pauses_only_that_channel(
    worker: tuple[Any, Dispatcher, MemoryStore], slack: SlackSandbox
) -> None:
    service, dispatcher, store = worker
    slack.rate_limit("C0STAFF", retry_after=30)
    first = await service.declare(
        RESPONDER,
        IncidentDraft(title="Orbis indisponible", systems=("Orbis",), severity=Severity.CRITICAL),
    )

    await dispatcher.drain()

    by_address = {d.address: d for d in await store.deliveries(first.id)}
    assert by_address["C0STAFF"].state == DeliveryState.RETRYING
    assert by_address["C0STAFF"].next_attempt_at is not None
    assert by_address["C0STAFF"].next_attempt_at >= service.clock.now() + timedelta(seconds=25)
    for address in ("C0CRISIS", "C0NORD", "U0HEAD1"):
        assert by_address[address].state == DeliveryState.DELIVERED
    assert dispatcher.limiter.paused_for("dest:slack:C0STAFF") > 25
    assert dispatcher.limiter.paused_for("provider:slack") == 0

    # The other channels keep going; the paused one is not even tried again.
    second = await service.update(RESPONDER, first.id, "identified", "Cause trouvée")
    await dispatcher.drain()

    states = {d.address: d.state for d in await store.deliveries(second.id) if d.seq == 2}
    assert states["C0CRISIS"] == DeliveryState.DELIVERED
    assert states["C0NORD"] == DeliveryState.DELIVERED
    assert states["C0STAFF"] == DeliveryState.QUEUED
    assert [c.args["channel"] for c in slack.calls_to("chat.postMessage")].count("C0STAFF") == 1


async def test_incident_text_never_pings_anyone(
    worker: tuple[Any, Dispatcher, MemoryStore], slack: SlackSandbox
) -> None:
    service, dispatcher, _ = worker
    await service.declare(
        RESPONDER,
        IncidentDraft(
            title="<!channel> Orbis <@U0CRISIS2> <!subteam^S0ONCALL>",
            systems=("<!here>",),
            severity=Severity.MAJOR,
            impact=("<!everyone> papier",),
        ),
    )

    await dispatcher.drain()

    calls = slack.calls_to("chat.postMessage")
    assert len(calls) == 4
    for call in calls:
        posted = _posted(call.args)
        assert LIVE_MENTION.search(posted) is None, posted
        assert "&lt;!channel&gt; Orbis" in posted


async def test_a_permanent_refusal_fails_the_delivery_with_slacks_reason(
    worker: tuple[Any, Dispatcher, MemoryStore], slack: SlackSandbox
) -> None:
    service, dispatcher, store = worker
    slack.fail("C0NORD", "not_in_channel")
    incident = await service.declare(
        RESPONDER, IncidentDraft(title="Orbis", systems=("Orbis",), severity=Severity.MINOR)
    )

    await dispatcher.drain()

    [nord] = [d for d in await store.deliveries(incident.id) if d.address == "C0NORD"]
    assert nord.state == DeliveryState.FAILED
    attempts = (await store.attempts([nord.id]))[nord.id]
    assert attempts[-1].code == "not_in_channel"
    posts = [c for c in slack.calls_to("chat.postMessage") if c.args["channel"] == "C0NORD"]
    assert len(posts) == 1
