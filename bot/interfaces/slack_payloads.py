"""What Slack sends in and what goes back out, as plain data: a modal's state as a declaration,
field problems as modal errors, a statement as the press message, a refusal as a reply.

No I/O here; :mod:`bot.interfaces.slack_listeners` uses these to answer Slack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from bot.channels import slack_blocks as kit
from bot.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, TocsinError
from bot.domain.models import Statement

LIST_FIELDS = {"systems", "unaffected", "sites", "impact", "claims", "audiences"}


def explain(exc: TocsinError) -> str:
    """What a person sees when a command is refused or fails."""
    if isinstance(exc, Forbidden):
        return f"Refused: {exc}"
    if isinstance(exc, InvalidInput):
        detail = exc.detail
        if isinstance(detail, dict):
            return f"{exc}: " + "; ".join(f"{k}: {v}" for k, v in detail.items())
        return f"{exc}\n{detail}" if isinstance(detail, str) else str(exc)
    if isinstance(exc, NotFound | Conflict):
        return str(exc)
    return f"Failed: {exc}"


def press_view(statement: Statement) -> tuple[str, list[dict[str, Any]]]:
    """The press message of a statement (buttons while it is a draft)."""
    return kit.press_message(
        incident_id=statement.incident_id,
        statement_id=statement.id,
        version=statement.version,
        status=statement.status.value,
        author=statement.author,
        approved_by=statement.approved_by,
        text=statement.text,
    )


def form_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A modal's ``state.values`` → a declaration mapping (empty fields left out, so that no
    audience chosen means the default audiences)."""
    out: dict[str, Any] = {}
    for block_id, actions in values.items():
        element = actions.get(block_id) if isinstance(actions, Mapping) else None
        if not isinstance(element, Mapping):
            continue
        if "selected_options" in element:
            value: Any = [o.get("value") for o in element.get("selected_options") or []]
        elif "selected_option" in element:
            value = (element.get("selected_option") or {}).get("value")
        else:
            value = element.get("value")
            if isinstance(value, str) and block_id in LIST_FIELDS:
                parts = value.splitlines() if block_id == "impact" else re.split(r"[,\n]", value)
                value = [part.strip() for part in parts if part.strip()]
        if value not in (None, "", []):
            out[block_id] = value
    return out


def field_errors(detail: Mapping[str, Any]) -> dict[str, str]:
    """Problems by field → Slack's ``errors`` by block id (unknown fields on the title)."""
    known = {
        "title",
        "systems",
        "severity",
        "impact",
        "sites",
        "unaffected",
        "cause",
        "audiences",
        "locale",
        "claims",
    }
    errors: dict[str, str] = {}
    for key, message in detail.items():
        block = key if key in known else "title"
        errors[block] = (errors.get(block, "") + " " + str(message)).strip()[:150]
    return errors


def view_metadata(view: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON a modal carries in ``private_metadata`` (``{}`` when absent or garbled)."""
    try:
        data = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def action_value(body: Mapping[str, Any]) -> str:
    """The value of the button an interaction is about."""
    actions = body.get("actions") or [{}]
    return str(actions[0].get("value", ""))
