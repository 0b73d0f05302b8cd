"""Audiences: who gets which statement, on which channel, and the fan-out plan."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from bot.domain.channel_facts import facts_for
from bot.domain.models import (
    ChannelName,
    Delivery,
    DeliveryPolicy,
    NewDelivery,
    Statement,
    StatementKind,
)


@dataclass(frozen=True)
class Target:
    """A destination reached as one delivery: a Slack channel, Telegram group, e-mail list, URL."""

    channel: ChannelName
    address: str
    name: str | None = None
    locale: str | None = None


@dataclass(frozen=True)
class Person:
    """A member of an audience, reached on the first policy channel they have an address for."""

    name: str
    contacts: Mapping[str, str]
    site: str | None = None
    locale: str | None = None
    deputy: bool = False


@dataclass(frozen=True)
class Audience:
    """A named group of recipients and destinations with a delivery policy.

    ``urgent`` is the audience's configured priority (None: decided by its policy)."""

    name: str
    kind: StatementKind
    targets: tuple[Target, ...] = ()
    members: tuple[Person, ...] = ()
    policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    urgent: bool | None = None


URGENT_LANE = 0
NORMAL_LANE = 1


def lane_of(audience: Audience) -> int:
    """The queue lane of an audience's deliveries: urgent ones are claimed before normal ones
    due at the same moment, so a large public fan-out never holds back the people who must
    act. An audience is urgent when configured so, else when its policy asks for an
    acknowledgement; public, press, subscriber and staff lists are normal."""
    if audience.urgent is not None:
        return URGENT_LANE if audience.urgent else NORMAL_LANE
    return URGENT_LANE if audience.policy.require_ack else NORMAL_LANE


def new_ack_token() -> str:
    """An opaque, unguessable reference for acknowledgement links, buttons and callbacks."""
    return secrets.token_urlsafe(16)


def statement_kind_for(channel: ChannelName, audience_kind: StatementKind) -> StatementKind:
    """The statement a channel carries: its own when it declares one (SMS: the short ``sms``
    statement), else the audience's kind."""
    return facts_for(channel).statement_kind or audience_kind


def next_channel(
    policy: DeliveryPolicy,
    contacts: Mapping[str, str],
    after: ChannelName | None,
    usable: frozenset[ChannelName] | None = None,
) -> ChannelName | None:
    """The next channel of the policy (after ``after``) that the person has an address for."""
    order = list(policy.channels)
    start = order.index(after) + 1 if after in order else 0
    for channel in order[start:]:
        if contacts.get(channel.value) and (usable is None or channel in usable):
            return channel
    return None


class StatementIndex:
    """Statements of one incident event, looked up by (kind, locale) with locale fallback."""

    def __init__(self, statements: list[Statement], default_locale: str) -> None:
        self._by_key = {(s.kind, s.locale): s for s in statements}
        self._default = default_locale

    def find(self, kind: StatementKind, locale: str | None) -> Statement | None:
        return self._by_key.get((kind, locale or self._default)) or self._by_key.get(
            (kind, self._default)
        )


def plan_deliveries(
    *,
    incident_id: str,
    seq: int,
    audiences: list[Audience],
    statements: StatementIndex,
    default_locale: str,
    now: datetime,
    kinds: frozenset[StatementKind] | None = None,
    locale_only: str | None = None,
    usable: frozenset[ChannelName] | None = None,
) -> list[NewDelivery]:
    """One delivery per (audience target) and per (audience member, first usable channel).

    ``kinds`` limits the fan-out to audiences of those statement kinds (e.g. ``press`` once
    approved); ``locale_only`` to recipients of that locale.
    """
    planned: list[NewDelivery] = []
    for audience in audiences:
        if kinds is not None and audience.kind not in kinds:
            continue
        for target in audience.targets:
            locale = target.locale or default_locale
            if locale_only and locale != locale_only:
                continue
            statement = statements.find(statement_kind_for(target.channel, audience.kind), locale)
            if statement is None:
                continue
            planned.append(
                NewDelivery(
                    incident_id=incident_id,
                    seq=seq,
                    statement_id=statement.id,
                    audience=audience.name,
                    recipient=target.name or target.address,
                    channel=target.channel,
                    address=target.address,
                    locale=statement.locale,
                    site=None,
                    contacts={},
                    policy=audience.policy,
                    ack_token=new_ack_token(),
                    next_attempt_at=now,
                    lane=lane_of(audience),
                )
            )
        for person in audience.members:
            if person.deputy:
                continue  # deputies are reached only when their site lacks confirmations
            locale = person.locale or default_locale
            if locale_only and locale != locale_only:
                continue
            channel = next_channel(audience.policy, person.contacts, None, usable)
            if channel is None:
                continue
            statement = statements.find(statement_kind_for(channel, audience.kind), locale)
            if statement is not None:
                planned.append(person_delivery(audience, person, channel, statement, seq, now))
    return planned


def person_delivery(
    audience: Audience,
    person: Person,
    channel: ChannelName,
    statement: Statement,
    seq: int,
    now: datetime,
) -> NewDelivery:
    """One delivery of ``statement`` to a member of ``audience`` on ``channel``."""
    return NewDelivery(
        incident_id=statement.incident_id,
        seq=seq,
        statement_id=statement.id,
        audience=audience.name,
        recipient=person.name,
        channel=channel,
        address=person.contacts[channel.value],
        locale=statement.locale,
        site=person.site,
        contacts=dict(person.contacts),
        policy=audience.policy,
        ack_token=new_ack_token(),
        next_attempt_at=now,
        lane=lane_of(audience),
    )


def next_untried_channel(
    delivery: Delivery,
    tried: set[str],
    usable: frozenset[ChannelName] | None,
    skip: Callable[[ChannelName, str], bool] | None = None,
) -> ChannelName | None:
    """The person's next policy channel not yet tried for this chain, starting after the
    current one and wrapping round; ``skip`` leaves out channels known to be down."""
    order = list(delivery.policy.channels)
    start = order.index(delivery.channel) + 1 if delivery.channel in order else 0
    for channel in order[start:] + order[:start]:
        address = delivery.contacts.get(channel.value)
        if channel.value in tried or not address:
            continue
        if (usable is not None and channel not in usable) or (skip and skip(channel, address)):
            continue
        return channel
    return None


def new_follow_up(
    delivery: Delivery,
    channel: ChannelName,
    statement_id: str,
    now: datetime,
    *,
    escalation: bool = False,
) -> NewDelivery:
    """The same recipient on another channel: a failover (or an escalation) of ``delivery``."""
    return NewDelivery(
        incident_id=delivery.incident_id,
        seq=delivery.seq,
        statement_id=statement_id,
        audience=delivery.audience,
        recipient=delivery.recipient,
        channel=channel,
        address=delivery.contacts[channel.value],
        locale=delivery.locale,
        site=delivery.site,
        contacts=delivery.contacts,
        policy=delivery.policy,
        ack_token=new_ack_token(),
        next_attempt_at=now,
        failover_of=None if escalation else delivery.id,
        escalation_of=delivery.id if escalation else None,
        root_id=delivery.root_id or delivery.id,
        lane=delivery.lane,
    )
