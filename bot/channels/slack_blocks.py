"""Block Kit for Tocsin's Slack messages: statements, the acknowledge button, mention safety.

Statements arrive already escaped for mrkdwn by the templates; everything here still treats
text as hostile, because a live ``<!channel>`` in a hospital-wide channel is an incident of its
own. :func:`defuse` turns any special mention that got through into visible text;
:func:`escape` is for plain text interpolated into mrkdwn.
"""

from __future__ import annotations

import re
from typing import Any

from bot.domain.template_layout import CAUSES

ACK_ACTION = "tocsin_ack"
ACK_LABEL = "Acknowledge / Pris en compte"
# Slack refuses a section whose text reaches 3,000 characters; stay clearly under.
SECTION_LIMIT = 2_900
# A message holds at most 50 blocks; keep room for the button and a context line.
MAX_SECTIONS = 45

# <!channel>, <!here>, <!everyone>, <!subteam^S123|@team>, <@U123>, <@W123|name>: the forms
# that notify people. Links (<https://…|label>) and channel links (<#C123>) stay as they are.
_MENTION = re.compile(r"<([!@][^<>]*)>")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")


def escape(text: str) -> str:
    """Plain text → mrkdwn: only ``&``, ``<`` and ``>`` are special to Slack."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def defuse(mrkdwn: str) -> str:
    """Make every notifying mention in ``mrkdwn`` show as text instead of pinging anyone."""
    return _MENTION.sub(lambda m: f"&lt;{m.group(1)}&gt;", mrkdwn)


def user_mention(user_id: str) -> str:
    """``<@U123>`` for a real Slack user id; anything else is shown escaped, never live."""
    return f"<@{user_id}>" if _USER_ID.match(user_id) else escape(user_id)


def channel_link(channel_id: str) -> str:
    """``<#C123>`` for a real channel id; anything else is shown escaped."""
    return f"<#{channel_id}>" if _CHANNEL_ID.match(channel_id) else escape(channel_id)


def split_sections(mrkdwn: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Cut text into pieces shorter than ``limit``: at blank lines, else at line ends, else at
    spaces, never inside an entity such as ``&amp;``."""
    chunks: list[str] = []
    rest = mrkdwn.strip()
    while len(rest) > limit:
        cut = _cut(rest[:limit], limit)
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        chunks.append(rest)
    return chunks


def _cut(window: str, limit: int) -> int:
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator)
        if at > limit // 2:
            return at
    entity = window.rfind("&", limit - 8)
    if entity != -1 and ";" not in window[entity:]:
        return entity
    return limit


def fallback_text(mrkdwn: str, limit: int = 3_000) -> str:
    """A message's notification text: mentions defused, and short (the blocks carry it all)."""
    text = defuse(mrkdwn).strip()
    if len(text) <= limit:
        return text
    return split_sections(text, limit - 1)[0] + "…"


def section(mrkdwn: str) -> dict[str, Any]:
    """A section block; ``verbatim`` keeps Slack from turning ``@here`` or ``#x`` into links."""
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn, "verbatim": True}}


def context(mrkdwn: str) -> dict[str, Any]:
    """A small grey line under a message."""
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn, "verbatim": True}]}


def ack_button(token: str) -> dict[str, Any]:
    """The actions block whose button acknowledges one delivery (its value: the ack token)."""
    return {
        "type": "actions",
        "block_id": ACK_ACTION,
        "elements": [
            {
                "type": "button",
                "action_id": ACK_ACTION,
                "text": {"type": "plain_text", "text": ACK_LABEL, "emoji": True},
                "style": "primary",
                "value": token,
            }
        ],
    }


def statement_blocks(mrkdwn: str, *, ack_token: str | None = None) -> list[dict[str, Any]]:
    """A statement as Block Kit: its sections, then the acknowledge button when one is due."""
    pieces = split_sections(defuse(mrkdwn))
    if len(pieces) > MAX_SECTIONS:
        raise ValueError(f"statement too long for one Slack message ({len(pieces)} sections)")
    blocks = [section(piece) for piece in pieces]
    if ack_token:
        blocks.append(ack_button(ack_token))
    return blocks


def without_actions(blocks: Any) -> list[dict[str, Any]]:
    """A message's blocks minus its action blocks (a button pressed once is gone)."""
    if not isinstance(blocks, list):
        return []
    return [b for b in blocks if isinstance(b, dict) and b.get("type") != "actions"]


# --- the /incident modals and the press draft --------------------------------------------
DECLARE_VIEW = "tocsin_declare"
PRESS_EDIT_VIEW = "tocsin_press_edit"
PRESS_EDIT_ACTION = "tocsin_press_edit"
PRESS_APPROVE_ACTION = "tocsin_press_approve"
SEVERITIES = ("minor", "major", "critical")
# Slack's limit for a plain_text_input's value.
INPUT_LIMIT = 3_000


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text[:75], "emoji": True}


def _option(value: str, label: str | None = None) -> dict[str, Any]:
    return {"text": _plain(label or value), "value": value}


def _input(
    block_id: str,
    label: str,
    element: dict[str, Any],
    *,
    optional: bool = False,
    hint: str | None = None,
) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "input",
        "block_id": block_id,
        "label": _plain(label),
        "element": {**element, "action_id": block_id},
        "optional": optional,
    }
    if hint:
        block["hint"] = _plain(hint)
    return block


def _text_input(
    multiline: bool = False, initial: str | None = None, max_length: int = INPUT_LIMIT
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "multiline": multiline,
        "max_length": max_length,
    }
    if initial:
        element["initial_value"] = initial
    return element


def _select(options: list[str], initial: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "static_select", "options": [_option(o) for o in options]}
    if initial in options:
        element["initial_option"] = _option(initial)
    return element


def _multi(options: list[str], initial: list[str]) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "multi_static_select",
        "options": [_option(o) for o in options],
    }
    chosen = [_option(o) for o in initial if o in options]
    if chosen:
        element["initial_options"] = chosen
    return element


def declare_modal(
    *,
    audiences: list[str],
    default_audiences: list[str],
    locales: list[str],
    default_locale: str,
    claims: list[str],
    metadata: str,
) -> dict[str, Any]:
    """The ``/incident declare`` form; block ids are the declaration's field names."""
    blocks = [
        _input("title", "Title / Titre", _text_input(max_length=200)),
        _input(
            "systems",
            "Affected systems / Systèmes touchés",
            _text_input(),
            hint="Comma-separated, e.g. Orbis, Web",
        ),
        _input("severity", "Severity / Gravité", _select(list(SEVERITIES), "major")),
        _input(
            "impact",
            "Impact",
            _text_input(multiline=True),
            optional=True,
            hint="One consequence per line",
        ),
        _input("sites", "Sites", _text_input(), optional=True, hint="Comma-separated"),
        _input(
            "unaffected",
            "Unaffected systems / Systèmes non touchés",
            _text_input(),
            optional=True,
            hint="Comma-separated, e.g. SAMU",
        ),
        _input("cause", "Cause", _select(list(CAUSES), "unknown"), optional=True),
    ]
    # Slack refuses a select without options: offer only what this deployment has.
    if audiences:
        blocks.append(
            _input("audiences", "Audiences", _multi(audiences, default_audiences), optional=True)
        )
    if locales:
        blocks.append(
            _input("locale", "Language / Langue", _select(locales, default_locale), optional=True)
        )
    if claims:
        blocks.append(_input("claims", "Claims / Affirmations", _multi(claims, []), optional=True))
    return {
        "type": "modal",
        "callback_id": DECLARE_VIEW,
        "private_metadata": metadata,
        "title": _plain("Declare an incident"),
        "submit": _plain("Declare"),
        "close": _plain("Cancel"),
        "blocks": blocks,
    }


def press_edit_modal(text: str, metadata: str) -> dict[str, Any]:
    """The form that edits a press draft (a new version on submission)."""
    return {
        "type": "modal",
        "callback_id": PRESS_EDIT_VIEW,
        "private_metadata": metadata,
        "title": _plain("Edit press statement"),
        "submit": _plain("Save"),
        "close": _plain("Cancel"),
        "blocks": [_input("text", "Statement", _text_input(multiline=True, initial=text))],
    }


def press_message(
    *,
    incident_id: str,
    statement_id: str,
    version: int,
    status: str,
    author: str,
    approved_by: str | None,
    text: str,
) -> tuple[str, list[dict[str, Any]]]:
    """The press draft as posted in Slack: fallback text and blocks, with Edit / Approve
    buttons while it is a draft. ``author``/``approved_by`` are shown escaped."""
    heading = (
        f"*Press statement {escape(incident_id)}* · v{version} · {escape(status)} · "
        f"by {escape(author)}"
    )
    if approved_by:
        heading += f" · approved by {escape(approved_by)}"
    blocks = [section(heading), *(section(p) for p in split_sections(escape(text)))]
    if status == "draft":
        blocks.append(
            {
                "type": "actions",
                "block_id": "tocsin_press",
                "elements": [
                    {
                        "type": "button",
                        "action_id": PRESS_EDIT_ACTION,
                        "value": statement_id,
                        "text": _plain("Edit"),
                    },
                    {
                        "type": "button",
                        "action_id": PRESS_APPROVE_ACTION,
                        "value": statement_id,
                        "text": _plain("Approve"),
                        "style": "primary",
                    },
                ],
            }
        )
    fallback = f"Press statement {incident_id} v{version} ({status})"
    return escape(fallback), blocks
