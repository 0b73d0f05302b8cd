"""The press desk: versioned edits, four-eyes approval, publication and corrections.

Press and public statements (and corrections) start as drafts. A person with the ``press``
role edits them (each edit is a new version) and another person approves: approval publishes
the statement, supersedes the version it replaces and queues its deliveries.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from datetime import datetime

from bot.domain.audiences import new_ack_token, statement_kind_for
from bot.domain.errors import Conflict, Forbidden, InvalidInput
from bot.domain.models import (
    PENDING_STATES,
    Actor,
    Delivery,
    DeliveryState,
    NewDelivery,
    Role,
    Statement,
    StatementKind,
    StatementStatus,
    TimelineEntry,
)
from bot.domain.publishing import HoldsStore, Publisher, all_deliveries, require
from bot.domain.statement_context import Renderer, new_statement_id
from bot.ports import Changes

CORRECTION = "correction"
# A delivery "carries" a claim to its recipient unless it never went out.
NOT_RECEIVED = frozenset({DeliveryState.FAILED, DeliveryState.CANCELLED})


def same_text_key(s: Statement) -> tuple[str, int, str, str, str]:
    """Statements that are versions of one another share this key."""
    return (s.incident_id, s.seq, s.event, s.kind.value, s.locale)


class PressDesk:
    """Edits and approvals of statements that need a second person."""

    def __init__(self, publisher: Publisher, renderer: Renderer) -> None:
        self.publisher = publisher
        self.store = publisher.store
        self.renderer = renderer

    async def versions(self, statement_id: str) -> list[Statement]:
        """Every version of the statement's text, oldest first."""
        current = await self.publisher.statement(statement_id)
        return sorted(
            (
                s
                for s in await self.store.statements(current.incident_id)
                if same_text_key(s) == same_text_key(current)
            ),
            key=lambda s: s.version,
        )

    async def diff(self, statement_id: str, against_id: str | None = None) -> str:
        """A unified diff from ``against_id`` (default: the previous version) to this one."""
        versions = await self.versions(statement_id)
        current = next(s for s in versions if s.id == statement_id)
        if against_id is None:
            older = [s for s in versions if s.version < current.version]
            if not older:
                return ""
            base = older[-1]
        else:
            found = [s for s in versions if s.id == against_id]
            if not found:
                raise InvalidInput(
                    "not a version of this statement", detail={"against": against_id}
                )
            base = found[0]
        return "".join(
            difflib.unified_diff(
                base.text.splitlines(keepends=True),
                current.text.splitlines(keepends=True),
                fromfile=f"v{base.version} ({base.author})",
                tofile=f"v{current.version} ({current.author})",
            )
        )

    async def edit(self, actor: Actor, statement_id: str, text: str) -> Statement:
        """A new draft version. Editing a draft supersedes it; editing a published statement
        leaves it published until the new version is approved."""
        require(actor, Role.PRESS)
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("text is required", detail={"text": "a non-empty string"})
        if len(text) > 20_000:
            raise InvalidInput("text too long", detail={"text": "at most 20000 characters"})
        current = await self.publisher.statement(statement_id)
        versions = await self.versions(statement_id)
        if current.status == StatementStatus.SUPERSEDED or current != versions[-1]:
            raise Conflict(f"statement {statement_id} has a newer version: edit that one")
        now = self.publisher.clock.now()
        bodies = self.renderer.bodies_from_text(
            current.kind, text.strip(), current.bodies.get("subject", "")
        )
        if "sms" in current.bodies:  # a correction keeps its short SMS wording
            bodies["sms"] = current.bodies["sms"]
        edited = replace(
            current,
            id=new_statement_id(),
            version=current.version + 1,
            text=text.strip(),
            bodies=bodies,
            status=StatementStatus.DRAFT,
            author=actor.name,
            approved_by=None,
            created_at=now,
        )
        updates = []
        if current.status == StatementStatus.DRAFT:
            updates.append(replace(current, status=StatementStatus.SUPERSEDED))
        seq = await self.publisher.next_seq(current.incident_id)
        await self.publisher.commit(
            Changes(
                statements=[edited],
                statement_updates=updates,
                timeline=[
                    TimelineEntry(
                        current.incident_id,
                        seq,
                        now,
                        actor.name,
                        "statement_edited",
                        {
                            "statement": edited.id,
                            "kind": edited.kind.value,
                            "locale": edited.locale,
                            "version": edited.version,
                            "previous": current.id,
                        },
                    )
                ],
            )
        )
        return edited

    async def approve(self, actor: Actor, statement_id: str) -> Statement:
        """Four-eyes: a press-role person other than the author of this version publishes it.

        A press statement's approval also publishes the public statement of the same event and
        language (the status page), unless that one was edited separately or was written by
        the approver. Authors and approvers are people (see ``auth`` ``person:``), whatever
        interface each acted through."""
        require(actor, Role.PRESS)
        current = await self.publisher.statement(statement_id)
        if current.status != StatementStatus.DRAFT:
            raise Conflict(f"statement {statement_id} is {current.status.value}, not a draft")
        if current.author == actor.name:
            raise Forbidden("the author of a statement cannot approve it (four-eyes rule)")
        incident = await self.publisher.incident(current.incident_id)
        now = self.publisher.clock.now()
        all_statements = await self.store.statements(incident.id)
        published = replace(current, status=StatementStatus.PUBLISHED, approved_by=actor.name)
        updates = [published] + [
            replace(s, status=StatementStatus.SUPERSEDED)
            for s in all_statements
            if same_text_key(s) == same_text_key(current)
            and s.id != current.id
            and s.status in (StatementStatus.PUBLISHED, StatementStatus.DRAFT)
        ]
        twins = []
        if current.kind == StatementKind.PRESS and current.event != CORRECTION:
            twins = [
                replace(s, status=StatementStatus.PUBLISHED, approved_by=actor.name)
                for s in all_statements
                if s.kind == StatementKind.PUBLIC
                and s.seq == current.seq
                and s.locale == current.locale
                and s.status == StatementStatus.DRAFT
                and s.version == 1
                # Four-eyes holds for the twin too: a public text its approver wrote (or
                # declared) waits for someone else's approval.
                and s.author != actor.name
            ]
        seq = await self.publisher.next_seq(incident.id)
        changes = Changes(
            statement_updates=updates + twins,
            timeline=[
                TimelineEntry(
                    incident.id,
                    seq,
                    now,
                    actor.name,
                    "statement_approved",
                    {
                        "statement": current.id,
                        "kind": current.kind.value,
                        "event": current.event,
                        "locale": current.locale,
                        "version": current.version,
                        "author": current.author,
                        "public": [t.id for t in twins],
                    },
                )
            ],
        )
        if current.event == CORRECTION:
            changes.deliveries = await self._correction_deliveries(published, now)
        else:
            changes.deliveries = self.publisher.plan(
                incident,
                current.seq,
                self.publisher.audiences_named(self._audiences_for(current)),
                [published],
                now,
                kinds=frozenset({current.kind}),
                locale_only=current.locale,
            )
        await self.publisher.commit(changes, publication=True)
        return published

    def _audiences_for(self, statement: Statement) -> list[str]:
        return [
            name
            for name, audience in self.publisher.audiences.items()
            if audience.kind == statement.kind and audience.kind == StatementKind.PRESS
        ]

    async def _correction_deliveries(
        self, correction: Statement, now: datetime
    ) -> list[NewDelivery]:
        """Exactly the recipients who received the claim, on the address they got it on."""
        [claim] = correction.claims
        received = await claim_recipients(self.publisher, correction.incident_id, claim)
        planned = []
        for delivery in received:
            if delivery.locale != correction.locale:
                continue
            planned.append(
                NewDelivery(
                    incident_id=delivery.incident_id,
                    seq=correction.seq,
                    statement_id=correction.id,
                    audience=delivery.audience,
                    recipient=delivery.recipient,
                    channel=delivery.channel,
                    address=delivery.address,
                    locale=delivery.locale,
                    site=delivery.site,
                    contacts=delivery.contacts,
                    policy=replace(
                        delivery.policy,
                        kind=statement_kind_for(delivery.channel, StatementKind.PRESS),
                    ),
                    ack_token=new_ack_token(),
                    next_attempt_at=self.publisher.clock.now(),
                    lane=delivery.lane,
                )
            )
        return planned


async def claim_recipients(holder: HoldsStore, incident_id: str, claim: str) -> list[Delivery]:
    """One delivery per recipient address that received (or is receiving) ``claim``."""
    statements = {s.id: s for s in await holder.store.statements(incident_id)}
    carrying = {sid for sid, s in statements.items() if claim in s.claims and s.event != CORRECTION}
    chosen: dict[tuple[str, str, str], Delivery] = {}
    for delivery in await all_deliveries(holder, incident_id):
        if delivery.statement_id not in carrying or delivery.state in NOT_RECEIVED:
            continue
        key = (delivery.audience, delivery.channel.value, delivery.address)
        chosen.setdefault(key, delivery)
    return list(chosen.values())


__all__ = [
    "CORRECTION",
    "PENDING_STATES",
    "PressDesk",
    "all_deliveries",
    "claim_recipients",
    "new_statement_id",
]
