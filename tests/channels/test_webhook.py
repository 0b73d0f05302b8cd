"""Webhook channel: what it posts, and what it makes of a receiver's answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from bot.channels.webhook import WebhookChannel
from bot.config import WebhookChannelSettings
from bot.domain.errors import PermanentError, TransientError
from bot.domain.models import ChannelName, DeliveryState
from bot.ports import Channel, OutboundMessage, Receipt
from tests.fakes.http_standin import HttpStandin, Reply
from tocsin_sandbox.webhook_sink import WebhookSink

HOOK = "/hooks/T0CRISIS/B0/secret"


def outbound(address: str, **changes: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "delivery_id": 7,
        "channel": ChannelName.WEBHOOK,
        "address": address,
        "recipient": "crisis-cell",
        "locale": "fr",
        "bodies": {"subject": "Panne Orbis", "text": "Orbis est indisponible."},
        "require_ack": False,
        "ack_token": "tok",
        "idempotency_key": "delivery-7",
    }
    fields.update(changes)
    return OutboundMessage(**fields)


@pytest.fixture
async def standin() -> AsyncIterator[HttpStandin]:
    async with HttpStandin() as server:
        yield server


@pytest.fixture
def channel(session: aiohttp.ClientSession) -> WebhookChannel:
    return WebhookChannel(session, WebhookChannelSettings(timeout=5.0))


async def test_posts_the_payload_with_an_idempotency_key(
    channel: WebhookChannel, standin: HttpStandin
) -> None:
    standin.script(HOOK, Reply(200, {"ok": True, "id": "m-1"}))
    ack_url = "https://tocsin.example.org/ack/abc"

    receipt = await channel.send(outbound(standin.url + HOOK, ack_url=ack_url, require_ack=True))

    [request] = standin.requests
    assert request.method == "POST"
    assert request.path == HOOK
    assert request.headers["Idempotency-Key"] == "tocsin-delivery-7"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json == {
        "text": f"Orbis est indisponible.\n\nMerci de confirmer la lecture : {ack_url}",
        "subject": "Panne Orbis",
        "delivery_id": 7,
        "idempotency_key": "tocsin-delivery-7",
        "ack_url": ack_url,
    }
    assert receipt == Receipt(provider_id="m-1", state=DeliveryState.DELIVERED, code="200")


async def test_without_ack_url_the_text_is_as_rendered(
    channel: WebhookChannel, standin: HttpStandin
) -> None:
    await channel.send(outbound(standin.url + HOOK, locale="en"))

    [request] = standin.requests
    assert request.json["text"] == "Orbis est indisponible."
    assert request.json["ack_url"] is None


async def test_provider_id_falls_back_to_the_request_id_header(
    channel: WebhookChannel, standin: HttpStandin
) -> None:
    # Slack's incoming webhooks answer a bare "ok".
    standin.script(HOOK, Reply(200, text="ok", headers={"X-Request-Id": "req-9"}))

    receipt = await channel.send(outbound(standin.url + HOOK))

    assert receipt == Receipt(provider_id="req-9", state=DeliveryState.DELIVERED, code="200")


async def test_every_resend_carries_the_same_key_from_the_delivery_id_alone(
    channel: WebhookChannel, standin: HttpStandin
) -> None:
    standin.script(HOOK, Reply(503), Reply(200, {"ok": True}))
    message = outbound(standin.url + HOOK, ack_token="s3cret-ack-token", idempotency_key="")

    with pytest.raises(TransientError):
        await channel.send(message)
    receipt = await channel.send(replace(message, attempt=1, unknown_attempts=1))

    keys = [r.headers["Idempotency-Key"] for r in standin.requests]
    assert keys == ["tocsin-delivery-7", "tocsin-delivery-7"]
    assert all("s3cret" not in key for key in keys)
    assert receipt.state == DeliveryState.DELIVERED


async def test_a_redirect_is_not_followed(channel: WebhookChannel, standin: HttpStandin) -> None:
    standin.script(HOOK, Reply(301, headers={"Location": standin.url + "/elsewhere"}))

    with pytest.raises(PermanentError) as caught:
        await channel.send(outbound(standin.url + HOOK))

    assert caught.value.code == "301"
    assert [r.path for r in standin.requests] == [HOOK]


async def test_delivers_to_the_shipped_sink(channel: WebhookChannel) -> None:
    async with WebhookSink() as sink:
        first = await channel.send(outbound(sink.url + "/mattermost"))
        second = await channel.send(outbound(sink.url + "/teams", delivery_id=8))
        posts = await sink.wait_for(2)

    assert [first.provider_id, second.provider_id] == ["1", "2"]
    assert [p.path for p in posts] == ["/mattermost", "/teams"]
    assert posts[0].body["text"] == "Orbis est indisponible."
    assert posts[1].headers["idempotency-key"] == "tocsin-delivery-8"


async def test_uses_but_never_closes_the_shared_session(
    channel: WebhookChannel, session: aiohttp.ClientSession, standin: HttpStandin
) -> None:
    assert isinstance(channel, Channel)
    await channel.send(outbound(standin.url + HOOK))
    await channel.close()

    assert not session.closed


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://hooks.slack.com/services/T/B/X", "webhook:hooks.slack.com:443"),
        ("http://127.0.0.1:8065/hooks/abc", "webhook:127.0.0.1:8065"),
        ("http://mattermost.local/hooks/abc", "webhook:mattermost.local:80"),
        ("not a url", "webhook:invalid"),
    ],
)
def test_provider_key_is_the_host(channel: WebhookChannel, url: str, key: str) -> None:
    assert channel.provider_key(url) == key
