"""Parsing and validating an outage declaration, whatever interface it came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.domain.errors import InvalidInput
from bot.domain.models import IncidentStatus, Severity
from bot.domain.template_layout import CAUSES

DECLARE_FIELDS = frozenset(
    {
        "title",
        "systems",
        "unaffected",
        "impact",
        "severity",
        "sites",
        "cause",
        "locale",
        "audiences",
        "claims",
    }
)


# Bounds on a declaration's lists: each item is rendered into every message.
MAX_ITEMS = 50
MAX_ITEM_LENGTH = 500


@dataclass(frozen=True)
class IncidentDraft:
    """A validated declaration, before it becomes an incident."""

    title: str
    systems: tuple[str, ...]
    severity: Severity
    unaffected: tuple[str, ...] = ()
    impact: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    cause: str = "unknown"
    locale: str | None = None
    audiences: tuple[str, ...] | None = None
    claims: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Any) -> IncidentDraft:
        """Validate a JSON/YAML mapping; every problem is listed in ``InvalidInput.detail``."""
        if not isinstance(data, Mapping):
            raise InvalidInput("the declaration must be an object")
        problems: dict[str, str] = {}
        unknown = sorted(set(data) - DECLARE_FIELDS)
        for key in unknown:
            problems[key] = "unknown field"
        title = data.get("title")
        if not isinstance(title, str) or not title.strip():
            problems["title"] = "required, a non-empty string"
        elif len(title) > 200:
            problems["title"] = "at most 200 characters"
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("systems", "unaffected", "impact", "sites", "claims"):
            value = data.get(key, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, Sequence) or not all(
                isinstance(v, str) and v.strip() for v in value
            ):
                problems[key] = "a list of non-empty strings"
                continue
            if len(value) > MAX_ITEMS or any(len(v) > MAX_ITEM_LENGTH for v in value):
                problems[key] = f"at most {MAX_ITEMS} items of {MAX_ITEM_LENGTH} characters"
                continue
            lists[key] = tuple(v.strip() for v in value)
        if "systems" not in problems and not lists.get("systems"):
            problems["systems"] = "required, at least one affected system"
        severity = data.get("severity")
        if severity not in {s.value for s in Severity}:
            problems["severity"] = "required, one of " + ", ".join(s.value for s in Severity)
        cause = data.get("cause", "unknown")
        if not isinstance(cause, str) or not cause.strip() or len(cause) > 500:
            problems["cause"] = "a short text, e.g. " + ", ".join(CAUSES)
        locale = data.get("locale")
        if locale is not None and not (isinstance(locale, str) and locale.isalpha()):
            problems["locale"] = "a language code such as fr or en"
        audiences = data.get("audiences")
        if audiences is not None and (
            not isinstance(audiences, Sequence)
            or isinstance(audiences, str)
            or not all(isinstance(a, str) for a in audiences)
            or len(audiences) > MAX_ITEMS
        ):
            problems["audiences"] = "a list of audience names"
        if problems:
            raise InvalidInput("invalid declaration", detail=problems)
        return cls(
            title=str(title).strip(),
            systems=lists["systems"],
            severity=Severity(str(severity)),
            unaffected=lists.get("unaffected", ()),
            impact=lists.get("impact", ()),
            sites=lists.get("sites", ()),
            cause=str(cause).strip(),
            locale=locale,
            audiences=tuple(audiences) if audiences is not None else None,
            claims=lists.get("claims", ()),
        )


def parse_status(value: Any) -> IncidentStatus:
    """An update's new status; ``draft`` cannot be returned to."""
    try:
        status = IncidentStatus(str(value).lower())
    except ValueError:
        raise InvalidInput(
            "unknown status",
            detail={"status": "one of investigating, identified, monitoring, resolved"},
        ) from None
    if status == IncidentStatus.DRAFT:
        raise InvalidInput("an incident cannot go back to draft", detail={"status": "draft"})
    return status
