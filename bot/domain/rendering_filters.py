"""The text helpers statement templates use: escaping per format (Slack mrkdwn, HTML), bold and
bullets, local times and durations, and the tidy-up each format gets once rendered.

Nothing here knows about the templates folder; :mod:`bot.domain.rendering` wires these into
each format's Jinja2 environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from jinja2.runtime import Context
from jinja2.utils import pass_context
from markupsafe import Markup, escape

from bot.domain.sms_text import plain_punctuation

# Formats whose environment autoescapes; subject, text and SMS do not.
AUTOESCAPED = frozenset({"html", "telegram", "slack"})

_MONTHS = {
    "fr": (
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ),
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
}


def mrkdwn(value: Any) -> Markup:
    """Escape text for Slack mrkdwn.

    Only ``&``, ``<`` and ``>`` are special to Slack, and escaping them is what keeps
    ``<!channel>``, ``<!here>`` or ``<@U123>`` in incident text from notifying anyone. Markup
    that a helper already produced for Slack passes through unchanged.
    """
    if hasattr(value, "__html__"):
        return Markup(value.__html__())  # noqa: S704 - already escaped by whoever made it
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return Markup(text)  # noqa: S704 - escaped on the line above


def paragraphs(value: Any) -> Markup:
    """Text → HTML: blank-line separated blocks become ``<p>``, line breaks ``<br>``. Text that
    is not markup yet is escaped first."""
    blocks = [block.strip() for block in re.split(r"\n\s*\n", str(escape(value)))]
    return Markup(  # noqa: S704 - the blocks are escaped text
        "\n".join(
            "<p>" + "<br>\n".join(line.strip() for line in block.splitlines()) + "</p>"
            for block in blocks
            if block
        )
    )


def tidy(text: str) -> str:
    """``text`` without trailing spaces on its lines, runs of blank lines, or surrounding
    whitespace."""
    # Templates may leave trailing spaces and runs of blank lines where optional sections are
    # empty; readers should not see either.
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _slack_unquote(text: str) -> str:
    # Slack output is autoescaped like HTML, which escapes the only three characters Slack
    # treats as markup (& < >) and, in passing, quotes, which Slack does not decode and would
    # show as &#34;. Quotes are harmless in mrkdwn, so they go back; the rest stays escaped.
    return text.replace("&#34;", '"').replace("&#39;", "'")


def finish(fmt: str, text: str) -> str:
    """Rendered ``text`` made ready to send as ``fmt``: a subject on one line, an SMS on one
    line in plain punctuation, anything else tidied."""
    if fmt == "subject":
        return " ".join(text.split())  # one line: a newline in a mail header is an injection
    if fmt == "sms":
        return plain_punctuation(" ".join(text.split()))
    text = tidy(text)
    return _slack_unquote(text) if fmt == "slack" else text


def escaper(fmt: str) -> Callable[[Any], str]:
    """The function that escapes a value for ``fmt``: mrkdwn for Slack, HTML for HTML and
    Telegram, none for plain formats."""
    if fmt == "slack":
        return mrkdwn
    if fmt in AUTOESCAPED:
        return escape
    return str


def bold_for(fmt: str) -> Callable[[Any], str]:
    """The template global ``bold`` for ``fmt``."""
    esc = escaper(fmt)
    wrap = {"html": "<strong>{}</strong>", "telegram": "<b>{}</b>", "slack": "*{}*"}.get(fmt)

    def bold(value: Any) -> str:
        """The value in bold where the format has bold."""
        text = esc(value)
        if wrap is None or not str(text).strip():
            return text
        return Markup(wrap.format(text))  # noqa: S704 - text is escaped for the format

    return bold


def bullets_for(fmt: str) -> Callable[[Iterable[Any]], str]:
    """The template global ``bullets`` for ``fmt``."""
    esc = escaper(fmt)

    def bullets(items: Iterable[Any]) -> str:
        """One ``• item`` line per item."""
        lines = "\n".join(f"• {esc(item)}" for item in items)
        # each item went through the format's escaper
        return Markup(lines) if fmt in AUTOESCAPED else lines  # noqa: S704

    return bullets


def as_datetime(value: Any) -> datetime:
    """``value`` (a datetime or an ISO 8601 string) as an aware datetime, UTC when naive."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    # Times are stored in UTC; a naive one can only be a UTC time that lost its zone.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def format_local_time(moment: datetime, locale: str, zone: str, style: str = "datetime") -> str:
    """``moment`` in the time zone ``zone``, written the way ``locale`` writes it.

    Styles: ``datetime`` (``30 août 2023 à 14h05``, ``30 August 2023 at 14:05 CEST``), ``date``,
    ``time`` (``14h05``, ``14:05``) and ``short`` (``30/08 à 14h05``, ``30 Aug 14:05``).
    """
    local = as_datetime(moment).astimezone(ZoneInfo(zone))
    language = locale.split("-")[0].split("_")[0]
    months = _MONTHS.get(language)
    if months is None:
        forms = {
            "datetime": "%Y-%m-%d %H:%M %Z",
            "date": "%Y-%m-%d",
            "time": "%H:%M",
            "short": "%m-%d %H:%M",
        }
        if style not in forms:
            raise ValueError(f"unknown time style {style!r}")
        return local.strftime(forms[style])
    month = months[local.month - 1]
    if language == "fr":
        day = "1er" if local.day == 1 else str(local.day)
        date, time = f"{day} {month} {local.year}", f"{local.hour:02d}h{local.minute:02d}"
        forms = {
            "datetime": f"{date} à {time}",
            "date": date,
            "time": time,
            "short": f"{local.day:02d}/{local.month:02d} à {time}",
        }
    else:
        date, time = f"{local.day} {month} {local.year}", f"{local.hour:02d}:{local.minute:02d}"
        forms = {
            "datetime": f"{date} at {time} {local.tzname()}",
            "date": date,
            "time": time,
            "short": f"{local.day} {month[:3]} {time}",
        }
    if style not in forms:
        raise ValueError(f"unknown time style {style!r}")
    return forms[style]


def format_duration(start: Any, end: Any, locale: str) -> str:
    """How long from ``start`` to ``end``: ``3 h 20 min``, ``45 min``, ``2 j 4 h`` (``2 d 4 h``)."""
    minutes = max(0, int((as_datetime(end) - as_datetime(start)) / timedelta(minutes=1)))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    day_unit = "j" if locale.startswith("fr") else "d"
    if days:
        return f"{days} {day_unit} {hours} h" if hours else f"{days} {day_unit}"
    if hours:
        return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
    return f"{minutes} min"


def local_time_filter(default_zone: str) -> Callable[..., str]:
    """The template filter ``local_time``, in the organisation's time zone when the context has
    one, else in ``default_zone``."""

    @pass_context
    def local_time(context: Context, value: Any, style: str = "datetime") -> str:
        """A UTC datetime shown in the organisation's time zone, per the statement locale."""
        org = context.get("org")
        zone = org.get("timezone") if isinstance(org, Mapping) else None
        return format_local_time(
            value, str(context.get("locale", "en")), zone or default_zone, style
        )

    return local_time


def duration_function() -> Callable[..., str]:
    """The template global ``duration``, worded in the statement's locale."""

    @pass_context
    def duration(context: Context, start: Any, end: Any) -> str:
        """How long from ``start`` to ``end``, e.g. ``3 h 20 min``."""
        return format_duration(start, end, str(context.get("locale", "en")))

    return duration
