"""The outbound message of a claimed delivery, as a channel receives it."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields, replace

import pytest

from bot.channels.email import EmailChannel
from bot.channels.slack import SlackChannel
from bot.channels.sms.kannel import KannelChannel
from bot.channels.sms.twilio import TwilioChannel
from bot.channels.telegram import TelegramChannel
from bot.channels.webhook import WebhookChannel
from bot.delivery.outbound import message_for
from bot.domain.ack_tokens import ACK, CALLBACK, AckKeys
from bot.domain.models import ChannelName, Delivery, DeliveryPolicy, DeliveryState
from bot.ports import OutboundMessage
from tests import factories as f

KEYS = AckKeys(b"deployment key")


def _delivery(**over: object) -> Delivery:
    stmt = f.statement()
    values: dict[str, object] = dict(
        id=42,
        incident_id=stmt.incident_id,
        seq=1,
        statement_id=stmt.id,
        audience="department-heads",
        recipient="dr-martin",
        channel=ChannelName.SMS,
        address="+33612345678",
        state=DeliveryState.SENDING,
        locale="fr",
        site="Hôpital Nord",
        contacts={"sms": "+33612345678"},
        policy=DeliveryPolicy(require_ack=True),
        ack_token="nonce-of-delivery-42",
        created_at=f.T0,
    )
    values.update(over)
    return Delivery(**values)  # type: ignore[arg-type]


def test_the_message_carries_every_field_of_its_record() -> None:
    # Built without OutboundMessage.__init__ (models.assemble): every field must be named.
    message = message_for(_delivery(), f.statement(), "https://tocsin.example", KEYS)
    assert set(vars(message)) == {field.name for field in fields(OutboundMessage)}
    assert message == replace(message)


def test_a_message_that_asks_for_an_acknowledgement_carries_its_token_and_link() -> None:
    delivery = _delivery()
    message = message_for(delivery, f.statement(), "https://tocsin.example", KEYS)
    assert message.require_ack
    assert message.ack_token == KEYS.token(delivery, ACK)
    assert message.ack_url == f"https://tocsin.example/ack/{message.ack_token}"
    assert message.callback_token == KEYS.token(delivery, CALLBACK) != message.ack_token


def test_a_message_that_asks_for_none_carries_no_acknowledgement_token() -> None:
    # A list or a channel (no contacts) is never asked to acknowledge: no token is made.
    delivery = _delivery(contacts={}, policy=DeliveryPolicy(require_ack=True))
    message = message_for(delivery, f.statement(), "https://tocsin.example", KEYS)
    assert not message.require_ack
    assert message.ack_token == "" and message.ack_url is None
    assert message.callback_token == KEYS.token(delivery, CALLBACK)


def test_tokens_are_those_of_messages_already_sent() -> None:
    # Links and gateway callbacks already out in the world must keep working after an
    # upgrade: the tokens of a delivery never change (values from the first release).
    delivery = _delivery()
    message = message_for(delivery, f.statement(), "https://tocsin.example", KEYS)
    assert message.ack_token == "42.N3Z0u9XoV3wtflQ59uKT7Q"
    assert message.callback_token == "42.ZVfnBy-hFH0yQYHtQ4BK6A"
    assert message.idempotency_key == "tocsin-42-c08d3d36"


def test_a_channel_is_handed_only_the_credentials_it_reads() -> None:
    delivery = _delivery()
    bare = message_for(delivery, f.statement(), "https://tocsin.example", KEYS, frozenset())
    assert bare.callback_token == "" and bare.idempotency_key == ""
    assert bare.ack_token == KEYS.token(delivery, ACK)  # asked of the person, whatever the channel
    gateway = message_for(
        delivery, f.statement(), "https://tocsin.example", KEYS, frozenset({"callback_token"})
    )
    assert gateway.callback_token == KEYS.token(delivery, CALLBACK)
    assert gateway.idempotency_key == ""


@pytest.mark.parametrize(
    "adapter",
    [WebhookChannel, SlackChannel, TelegramChannel, EmailChannel, KannelChannel, TwilioChannel],
)
def test_every_adapter_names_the_credentials_its_module_reads(adapter: type) -> None:
    # An adapter that read message.callback_token without naming it would send an empty
    # credential (a delivery report nobody could match): checked against its module's source.
    source = inspect.getsource(inspect.getmodule(adapter))
    read = set(re.findall(r"message\.(callback_token|idempotency_key)\b", source))
    assert read == set(adapter.keys)
