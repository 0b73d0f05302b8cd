"""The report's possible duplicates: a resend after an outcome the provider could not tell."""

from __future__ import annotations

from collections import deque
from datetime import timedelta

import pytest

from bot.domain.errors import UnknownOutcome
from bot.domain.models import Attempt, ChannelName, DeliveryState
from bot.domain.report import build_report, possible_duplicate
from bot.interfaces.report_format import to_html, to_markdown
from bot.ports import Receipt
from tests.continuity.test_quorum_and_report import declare, runtime
from tests.factories import T0


def attempts(*outcomes: tuple[str, str | None]) -> list[Attempt]:
    return [
        Attempt(1, T0 + timedelta(seconds=i), outcome, code=code)
        for i, (outcome, code) in enumerate(outcomes)
    ]


@pytest.mark.parametrize(
    ("record", "duplicate"),
    [
        ((("unknown", None), ("sent", "200")), True),  # Telegram, Kannel: sent again
        ((("unknown", None), ("retry", "502"), ("delivered", "ok")), True),
        ((("unknown", None), ("delivered", "reconciled")), False),  # Slack found it
        ((("unknown", None), ("delivered", "reconciled:not-found")), False),
        ((("retry", "502"), ("sent", "200")), False),  # refused: nothing was taken
        ((("sent", "200"),), False),
        ((("unknown", None), ("failed", "400")), False),
    ],
)
def test_a_success_after_an_unknown_outcome_is_a_possible_duplicate(
    record: tuple[tuple[str, str | None], ...], duplicate: bool
) -> None:
    assert possible_duplicate(attempts(*record)) is duplicate


async def test_the_report_counts_them_in_every_format() -> None:
    async with runtime() as (rt, worker, clock, channels):
        incident = await declare(rt)
        channels[ChannelName.TELEGRAM].per_address["1001"] = deque(
            [UnknownOutcome("no answer from Telegram after sending")]
        )
        channels[ChannelName.TELEGRAM].per_address["1004"] = deque(
            [
                UnknownOutcome("no answer from Slack in time"),
                Receipt("C0:1.2", DeliveryState.DELIVERED, "reconciled"),
            ]
        )
        await worker.drain()
        clock.advance(600)
        await worker.drain()

        report = await build_report(rt.service, incident)

    assert report["deliveries"]["possible_duplicates"] == 1
    assert "possible duplicates 1" in to_markdown(report)
    assert "possible duplicates 1" in to_html(report)
