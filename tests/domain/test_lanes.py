"""Which deliveries are urgent: the rule, from the configuration to the planned rows."""

from __future__ import annotations

from pathlib import Path

from bot.app import audiences_from
from bot.config import load_settings
from bot.domain.audiences import (
    NORMAL_LANE,
    URGENT_LANE,
    StatementIndex,
    lane_of,
    plan_deliveries,
)
from bot.domain.models import StatementKind
from tests import factories as f

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tocsin.yaml"


def test_people_who_must_acknowledge_and_the_crisis_cell_are_urgent() -> None:
    settings = load_settings(EXAMPLE)
    audiences = audiences_from(settings)
    lanes = {}
    for name, audience in audiences.items():
        statements = StatementIndex(
            [
                f.statement(kind=kind, locale=locale)
                for kind in (audience.kind, StatementKind.SMS)
                for locale in ("fr", "en")
            ],
            "fr",
        )
        planned = plan_deliveries(
            incident_id="INC-2023-0830-01",
            seq=1,
            audiences=[audience],
            statements=statements,
            default_locale="fr",
            now=f.T0,
        )
        lanes[name] = {d.lane for d in planned}
    assert lanes["crisis-cell"] == {URGENT_LANE}  # the reminders' audience
    assert lanes["department-heads"] == {URGENT_LANE}  # require_ack
    assert lanes["all-staff"] == lanes["press"] == {NORMAL_LANE}
    assert lane_of(audiences["public"]) == NORMAL_LANE


def test_an_audience_priority_overrides_the_rule() -> None:
    settings = load_settings(EXAMPLE)
    data = settings.model_dump(by_alias=True)
    data["audiences"]["department-heads"]["priority"] = "normal"
    data["audiences"]["public"]["priority"] = "urgent"
    audiences = audiences_from(type(settings).model_validate(data))
    assert audiences["department-heads"].urgent is False
    assert audiences["public"].urgent is True
    assert audiences["all-staff"].urgent is None
