"""Statements rendered from the Jinja2 templates in ``message_templates/``, in a sandbox.

Layout: ``<kind>/<event>.<locale>.<format>.j2``, shared pieces in ``_partials/``, claim wording
in ``claims.<locale>.yaml`` and labels (severity, status, cause) in ``labels.<locale>.yaml``.

Each format has an environment of its own, so escaping follows the format being produced, not
the name of the file being compiled: a partial included from an HTML template is escaped as
HTML, the same partial included from a Slack template is escaped for Slack, and nobody has to
remember a filter. HTML, Telegram and Slack autoescape; subject, text and SMS do not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_context
from markupsafe import Markup, escape

import bot
from bot.domain.errors import InvalidInput, TocsinError
from bot.domain.models import IncidentStatus, Severity, StatementKind
from bot.domain.sms_text import plain_punctuation, sms_encoding

EVENTS = ("declared", "update", "resolved", "correction")
MESSAGE_FORMATS = ("subject", "text", "html", "slack", "telegram")
KIND_FORMATS: Mapping[StatementKind, tuple[str, ...]] = {
    kind: ("sms",) if kind is StatementKind.SMS else MESSAGE_FORMATS for kind in StatementKind
}
ALL_FORMATS = (*MESSAGE_FORMATS, "sms")
_AUTOESCAPED = frozenset({"html", "telegram", "slack"})
TELEGRAM_TAGS = frozenset({"b", "i", "a", "code", "pre"})

# Claims every deployment understands; ``claims.<locale>.yaml`` must word each of them.
BUILTIN_CLAIMS = ("no_patient_impact", "not_a_cyberattack", "data_not_compromised")
# Claim families take a value after the colon (``unaffected:SAMU``); worded as ``"<family>:*"``.
BUILTIN_CLAIM_FAMILIES = ("unaffected",)
CAUSES = ("unknown", "technical", "cyberattack_ruled_out", "cyberattack")
_LABEL_KEYS: Mapping[str, tuple[str, ...]] = {
    "severity": tuple(Severity),
    "status": tuple(IncidentStatus),
    "status_sentence": tuple(IncidentStatus),
    "cause": (*CAUSES, "other"),
    "cause_sentence": (*CAUSES, "other"),
}

_TEMPLATE_NAME = re.compile(r"^(?P<event>\w+)\.(?P<locale>[\w-]+)\.(?P<format>\w+)\.j2$")
_LOCALE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?$")
_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)")

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


@dataclass(frozen=True)
class TemplateProblem:
    """One thing wrong with the templates: where (file relative to the templates folder, line
    when known) and what."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


class TemplateError(TocsinError):
    """A statement could not be rendered; ``problems`` says where and why."""

    def __init__(self, problems: Sequence[TemplateProblem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = list(problems)


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


def _tidy(text: str) -> str:
    # Templates may leave trailing spaces and runs of blank lines where optional sections are
    # empty; readers should not see either.
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _slack_unquote(text: str) -> str:
    # Slack output is autoescaped like HTML, which escapes the only three characters Slack
    # treats as markup (& < >) and, in passing, quotes, which Slack does not decode and would
    # show as &#34;. Quotes are harmless in mrkdwn, so they go back; the rest stays escaped.
    return text.replace("&#34;", '"').replace("&#39;", "'")


def _finish(fmt: str, text: str) -> str:
    if fmt == "subject":
        return " ".join(text.split())  # one line: a newline in a mail header is an injection
    if fmt == "sms":
        return plain_punctuation(" ".join(text.split()))
    text = _tidy(text)
    return _slack_unquote(text) if fmt == "slack" else text


def _escaper(fmt: str) -> Callable[[Any], str]:
    if fmt == "slack":
        return mrkdwn
    if fmt in _AUTOESCAPED:
        return escape
    return str


def _bold(fmt: str) -> Callable[[Any], str]:
    esc = _escaper(fmt)
    wrap = {"html": "<strong>{}</strong>", "telegram": "<b>{}</b>", "slack": "*{}*"}.get(fmt)

    def bold(value: Any) -> str:
        """The value in bold where the format has bold."""
        text = esc(value)
        if wrap is None or not str(text).strip():
            return text
        return Markup(wrap.format(text))  # noqa: S704 - text is escaped for the format

    return bold


def _bullets(fmt: str) -> Callable[[Iterable[Any]], str]:
    esc = _escaper(fmt)

    def bullets(items: Iterable[Any]) -> str:
        """One ``• item`` line per item."""
        lines = "\n".join(f"• {esc(item)}" for item in items)
        # each item went through the format's escaper
        return Markup(lines) if fmt in _AUTOESCAPED else lines  # noqa: S704

    return bullets


def _as_datetime(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    # Times are stored in UTC; a naive one can only be a UTC time that lost its zone.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def format_local_time(moment: datetime, locale: str, zone: str, style: str = "datetime") -> str:
    """``moment`` in the time zone ``zone``, written the way ``locale`` writes it.

    Styles: ``datetime`` (``30 août 2023 à 14h05``, ``30 August 2023 at 14:05 CEST``), ``date``,
    ``time`` (``14h05``, ``14:05``) and ``short`` (``30/08 à 14h05``, ``30 Aug 14:05``).
    """
    local = _as_datetime(moment).astimezone(ZoneInfo(zone))
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
    minutes = max(0, int((_as_datetime(end) - _as_datetime(start)) / timedelta(minutes=1)))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    day_unit = "j" if locale.startswith("fr") else "d"
    if days:
        return f"{days} {day_unit} {hours} h" if hours else f"{days} {day_unit}"
    if hours:
        return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
    return f"{minutes} min"


class StatementRenderer:
    """Renders statements of every kind, event, locale and format from the templates folder,
    in Jinja2's immutable sandbox, with undefined variables as errors.

    ``render`` gives a statement's bodies by format; ``check`` and ``preview`` go through every
    template (``tocsin templates check|preview``); ``claim_text`` words a claim.
    """

    def __init__(
        self,
        templates_dir: Path | None = None,
        *,
        timezone: str = "Europe/Paris",
        sms_max_segments: int = 2,
    ) -> None:
        self._dir = Path(templates_dir or Path(bot.__file__).parent / "message_templates")
        self._root = os.path.abspath(self._dir)
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(f"unknown time zone {timezone!r}") from None
        self.timezone = timezone
        self.sms_max_segments = sms_max_segments
        self._yaml_cache: dict[str, Mapping[str, Any]] = {}
        loader = FileSystemLoader(self._root)
        self._envs = {fmt: self._environment(fmt, loader) for fmt in ALL_FORMATS}

    @property
    def templates_dir(self) -> Path:
        """The folder the templates are read from."""
        return self._dir

    # --- rendering -------------------------------------------------------------------------

    def render(
        self, kind: StatementKind, event: str, locale: str, context: Mapping[str, Any]
    ) -> dict[str, str]:
        """Render one statement: ``{format: body}`` for every format the templates folder has
        for ``kind``/``event``/``locale`` (for the ``sms`` kind, ``text`` repeats ``sms``).

        Raises :class:`TemplateError`, with file and line, when no template exists or any of
        them fails (undefined variable, syntax error, sandbox violation, ...).
        """
        kind = self._kind(kind)
        self._validate(event, locale)
        names = {
            fmt: name
            for fmt in KIND_FORMATS[kind]
            if (self._dir / (name := _template_name(kind, event, locale, fmt))).is_file()
        }
        if not names:
            pattern = f"{kind}/{event}.{locale}.*.j2"
            raise TemplateError([TemplateProblem(pattern, None, "no template for this statement")])
        values = {"event": event, **context}
        bodies: dict[str, str] = {}
        problems: list[TemplateProblem] = []
        for fmt, name in names.items():
            try:
                bodies[fmt] = self._render_file(name, fmt, locale, values)
            except TemplateError as exc:
                problems.extend(exc.problems)
        if problems:
            # the html, slack and telegram files include the text file: report a fault once
            raise TemplateError(list(dict.fromkeys(problems)))
        if kind is StatementKind.SMS:
            bodies["text"] = bodies["sms"]
        return bodies

    def bodies_from_text(self, kind: StatementKind, text: str, subject: str) -> dict[str, str]:
        """Bodies for a statement a person wrote as plain text (a press officer's edit), each
        escaped for its format: HTML paragraphs, Slack mrkdwn, Telegram HTML."""
        kind = self._kind(kind)
        if kind is StatementKind.SMS:
            sms = _finish("sms", text)
            return {"sms": sms, "text": sms}
        body = _tidy(text)
        return {
            "subject": _finish("subject", subject),
            "text": body,
            "html": str(paragraphs(body)),
            "slack": str(mrkdwn(body)),
            "telegram": str(escape(body)),
        }

    def locales(self) -> tuple[str, ...]:
        """Locales that have at least one statement template."""
        return tuple(sorted({locale for _, _, locale, _, _ in self._statement_files()}))

    # --- claims ----------------------------------------------------------------------------

    def known_claim(self, key: str) -> bool:
        """True for the built-in claims, ``unaffected:<system>`` and keys worded in any
        ``claims.<locale>.yaml``."""
        family, colon, value = key.partition(":")
        worded = self._claim_keys()
        if colon:
            return bool(value.strip()) and (
                family in BUILTIN_CLAIM_FAMILIES or f"{family}:*" in worded
            )
        return key in BUILTIN_CLAIMS or (key in worded and not key.endswith(":*"))

    def claim_text(self, key: str, locale: str) -> str:
        """The sentence a statement in ``locale`` uses for claim ``key``
        (``unaffected:SAMU`` → ``SAMU : fonctionnement normal, …``).

        Raises :class:`InvalidInput` for an unknown claim or a locale without wording.
        """
        if not self.known_claim(key):
            raise InvalidInput(f"unknown claim {key!r}", detail={"claim": key})
        if not _LOCALE.match(locale):
            raise InvalidInput(f"not a locale: {locale!r}")
        wording = self._claims(locale)
        family, colon, value = key.partition(":")
        sentence = wording.get(f"{family}:*" if colon else key)
        if not isinstance(sentence, str):
            raise InvalidInput(
                f"claim {key!r} has no wording in claims.{locale}.yaml",
                detail={"claim": key, "locale": locale},
            )
        return sentence.replace("{value}", value.strip()) if colon else sentence

    # --- checks and previews ---------------------------------------------------------------

    def check(
        self, context: Mapping[str, Any], locales: Sequence[str] = ("fr", "en")
    ) -> list[TemplateProblem]:
        """Everything wrong with the templates, rendering each one with ``context`` (for every
        event, with a sample update and correction where the context has none): template errors
        with file and line, SMS over the segment budget, Telegram tags Telegram refuses, missing
        formats, misnamed files, and gaps in the claims and labels files. ``[]`` when all is
        well."""
        problems = self._check_files(locales)
        for locale in locales:
            problems.extend(self._check_wording(locale))
        for kind, event, locale, fmt, name in self._statement_files():
            if locale not in locales or fmt not in KIND_FORMATS[kind] or event not in EVENTS:
                continue
            try:
                values = self._event_context(context, event, locale)
                output = self._render_file(name, fmt, locale, values)
            except TemplateError as exc:
                problems.extend(exc.problems)
                continue
            except InvalidInput as exc:  # no claim wording for this locale
                problems.append(TemplateProblem(name, None, str(exc)))
                continue
            problems.extend(self._check_output(name, fmt, output))
        return list(dict.fromkeys(problems))

    def preview(
        self, context: Mapping[str, Any], locales: Sequence[str] = ("fr", "en")
    ) -> list[tuple[str, str]]:
        """``(template path, output)`` for every statement template in ``locales``, rendered
        with ``context`` as ``check`` does. Raises :class:`TemplateError` if any fails."""
        outputs: list[tuple[str, str]] = []
        problems: list[TemplateProblem] = []
        for kind, event, locale, fmt, name in self._statement_files():
            if locale not in locales or fmt not in KIND_FORMATS[kind] or event not in EVENTS:
                continue
            try:
                ctx = self._event_context(context, event, locale)
                outputs.append((name, self._render_file(name, fmt, locale, ctx)))
            except TemplateError as exc:
                problems.extend(exc.problems)
            except InvalidInput as exc:  # no claim wording for this locale
                problems.append(TemplateProblem(name, None, str(exc)))
        if problems:
            raise TemplateError(list(dict.fromkeys(problems)))
        return outputs

    def sample_context(self, locale: str = "fr") -> dict[str, Any]:
        """A realistic render context: the AP-HP Orbis outage of 30 August 2023, worded in
        ``locale`` (``fr`` or ``en``), as declared, with a sample update and correction."""
        english = locale.startswith("en")
        declared = datetime(2023, 8, 30, 12, 5, tzinfo=UTC)
        updated = declared + timedelta(hours=1, minutes=25)
        incident: dict[str, Any]
        if english:
            incident = {
                "title": "Orbis outage",
                "systems": [
                    "Orbis (patient identification, exam and drug prescriptions)",
                    "AP-HP website",
                    "E-mail",
                ],
                "unaffected": ["SAMU dispatch software"],
                "impact": [
                    "Patient identification and prescriptions on paper",
                    "Lab and imaging results available by phone only",
                ],
                "sites": ["All AP-HP hospitals"],
                "declared_by": "Crisis cell",
            }
            message = (
                "A faulty network device has been identified; Orbis is being brought back "
                "gradually, service by service."
            )
            reason = "Further analysis is under way: a cyberattack cannot be ruled out yet."
        else:
            incident = {
                "title": "Panne du logiciel Orbis",
                "systems": [
                    "Orbis (identification des patients, prescription d'examens et de médicaments)",
                    "Site internet de l'AP-HP",
                    "Messagerie électronique",
                ],
                "unaffected": ["Logiciel de régulation du SAMU"],
                "impact": [
                    "Identification des patients et prescriptions sur support papier",
                    "Résultats d'examens transmis uniquement par téléphone",
                ],
                "sites": ["Tous les hôpitaux de l'AP-HP"],
                "declared_by": "Cellule de crise",
            }
            message = (
                "Un équipement réseau défaillant a été identifié ; Orbis est rétabli "
                "progressivement, service par service."
            )
            reason = (
                "Des analyses complémentaires sont en cours : l'hypothèse d'une attaque "
                "informatique ne peut pas être écartée à ce stade."
            )
        incident.update(
            {
                "id": "INC-20230830-01",
                "severity": "critical",
                "status": "investigating",
                "cause": "technical",
                "declared_at": declared,
                "updated_at": declared,
                "resolved_at": None,
            }
        )
        keys = ["no_patient_impact", "not_a_cyberattack", f"unaffected:{incident['unaffected'][0]}"]
        return {
            "org": {"name": "AP-HP", "locale": locale, "timezone": self.timezone},
            "incident": incident,
            "event": "declared",
            "update": {"status": "identified", "message": message, "at": updated},
            "claims": [{"key": key, "text": self.claim_text(key, locale)} for key in keys],
            "correction": {
                "claim": "not_a_cyberattack",
                "claim_text": self.claim_text("not_a_cyberattack", locale),
                "reason": reason,
            },
        }

    # --- internals -------------------------------------------------------------------------

    def _environment(self, fmt: str, loader: FileSystemLoader) -> ImmutableSandboxedEnvironment:
        env = ImmutableSandboxedEnvironment(
            loader=loader,
            undefined=StrictUndefined,
            autoescape=fmt in _AUTOESCAPED,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        env.filters["local_time"] = self._local_time_filter()
        env.filters["mrkdwn"] = mrkdwn
        env.filters["paragraphs"] = paragraphs
        env.filters["sms_fits"] = self._sms_fits
        env.tests["startswith"] = lambda value, prefix: str(value).startswith(prefix)
        env.globals.update(
            bold=_bold(fmt),
            bullets=_bullets(fmt),
            label=self._label_function(),
            duration=_duration_function(),
        )
        return env

    def _sms_fits(self, text: Any) -> bool:
        """True when ``text``, sent as an SMS, fits the segment budget: lets an SMS template
        carry free text (an update's message) only when there is room, never cutting it."""
        return sms_encoding(_finish("sms", str(text))).segments <= self.sms_max_segments

    def _local_time_filter(self) -> Callable[..., str]:
        default_zone = self.timezone

        @pass_context
        def local_time(context: Context, value: Any, style: str = "datetime") -> str:
            """A UTC datetime shown in the organisation's time zone, per the statement locale."""
            org = context.get("org")
            zone = org.get("timezone") if isinstance(org, Mapping) else None
            return format_local_time(
                value, str(context.get("locale", "en")), zone or default_zone, style
            )

        return local_time

    def _label_function(self) -> Callable[..., str]:
        @pass_context
        def label(context: Context, group: str, key: Any) -> str:
            """Localised label of ``key`` in ``group`` (severity, status, cause, ...)."""
            locale = str(context.get("locale", "en"))
            table = self._yaml(f"labels.{locale}.yaml").get(group)
            if not isinstance(table, Mapping):
                raise TemplateRuntimeError(f"labels.{locale}.yaml has no group {group!r}")
            key = str(key)
            if key in table:
                return str(table[key])
            if "other" in table:
                return str(table["other"]).replace("{value}", key)
            raise TemplateRuntimeError(f"labels.{locale}.yaml has no {group} label for {key!r}")

        return label

    def _render_file(self, name: str, fmt: str, locale: str, context: Mapping[str, Any]) -> str:
        values = {**context, "locale": locale}
        try:
            output = self._envs[fmt].get_template(name).render(values)
        except TemplateSyntaxError as exc:
            file = exc.name or self._relative(exc.filename or "") or name
            raise TemplateError(
                [TemplateProblem(file, exc.lineno, exc.message or str(exc))]
            ) from exc
        except Exception as exc:  # a template is code that users edit: anything can go wrong
            file, line = self._position(exc) or (name, None)
            raise TemplateError([TemplateProblem(file, line, _describe(exc))]) from exc
        return _finish(fmt, output)

    def _position(self, exc: BaseException) -> tuple[str, int] | None:
        # Jinja rewrites tracebacks so that template frames carry the template's file name and
        # line; the innermost such frame is the partial or template where it went wrong.
        found = None
        tb = exc.__traceback__
        while tb is not None:
            relative = self._relative(tb.tb_frame.f_code.co_filename)
            if relative is not None:
                found = (relative, tb.tb_lineno)
            tb = tb.tb_next
        return found

    def _relative(self, filename: str) -> str | None:
        if not filename.endswith(".j2"):
            return None
        relative = os.path.relpath(os.path.abspath(filename), self._root)
        if relative.startswith(".."):
            return None
        return relative.replace(os.sep, "/")

    def _event_context(self, context: Mapping[str, Any], event: str, locale: str) -> dict[str, Any]:
        # check/preview render every event from one sample: fill in what each event needs and
        # word the claims in the locale being rendered, as the services do for real statements.
        values = {**context, "event": event, "require_ack": True}
        values["claims"] = [self._relocalise(claim, locale) for claim in context.get("claims", [])]
        if event == "update" and not context.get("update"):
            values["update"] = self.sample_context(locale)["update"]
        if event == "correction":
            correction = dict(
                context.get("correction") or self.sample_context(locale)["correction"]
            )
            if self.known_claim(str(correction.get("claim", ""))):
                correction["claim_text"] = self.claim_text(str(correction["claim"]), locale)
            values["correction"] = correction
            # a correction goes out once the claim is withdrawn: the statement no longer carries it
            values["claims"] = [
                claim
                for claim in values["claims"]
                if not (isinstance(claim, Mapping) and claim.get("key") == correction.get("claim"))
            ]
        if event == "resolved":
            incident = dict(values["incident"])
            if incident.get("resolved_at") is None:
                declared = _as_datetime(incident["declared_at"])
                incident["resolved_at"] = declared + timedelta(hours=5, minutes=20)
                incident["updated_at"] = incident["resolved_at"]
            incident["status"] = "resolved"
            values["incident"] = incident
        return values

    def _relocalise(self, claim: Any, locale: str) -> Any:
        if isinstance(claim, Mapping) and self.known_claim(str(claim.get("key", ""))):
            return {**claim, "text": self.claim_text(str(claim["key"]), locale)}
        return claim

    def _check_output(self, name: str, fmt: str, output: str) -> list[TemplateProblem]:
        problems = []
        if not output:
            problems.append(TemplateProblem(name, None, "renders to nothing"))
        if fmt == "sms":
            encoding = sms_encoding(output)
            if encoding.segments > self.sms_max_segments:
                unit = "septets" if encoding.encoding == "gsm7" else "UCS-2 units"
                problems.append(
                    TemplateProblem(
                        name,
                        None,
                        f"SMS of {encoding.segments} segments ({encoding.units} {unit}, "
                        f"{encoding.encoding}), over the budget of {self.sms_max_segments}",
                    )
                )
        if fmt == "telegram":
            refused = sorted({tag.lower() for tag in _TAG.findall(output)} - TELEGRAM_TAGS)
            if refused:
                problems.append(
                    TemplateProblem(name, None, f"Telegram refuses tags: {', '.join(refused)}")
                )
        return problems

    def _check_files(self, locales: Sequence[str]) -> list[TemplateProblem]:
        if not self._dir.is_dir():
            return [TemplateProblem(str(self._dir), None, "templates folder not found")]
        problems = []
        present: set[tuple[str, str, str, str]] = set()
        for kind_dir in sorted(self._dir.iterdir()):
            if not kind_dir.is_dir() or kind_dir.name.startswith("_"):
                continue
            if kind_dir.name not in set(StatementKind):
                problems.append(TemplateProblem(kind_dir.name, None, "not a statement kind"))
                continue
            kind = StatementKind(kind_dir.name)
            for path in sorted(kind_dir.iterdir()):
                name = f"{kind}/{path.name}"
                match = _TEMPLATE_NAME.match(path.name)
                if match is None:
                    problems.append(
                        TemplateProblem(name, None, "not named <event>.<locale>.<format>.j2")
                    )
                elif match["event"] not in EVENTS:
                    problems.append(
                        TemplateProblem(name, None, f"unknown event {match['event']!r}")
                    )
                elif match["format"] not in KIND_FORMATS[kind]:
                    problems.append(
                        TemplateProblem(
                            name, None, f"format {match['format']!r} is not one of {kind}'s"
                        )
                    )
                else:
                    present.add((kind, match["event"], match["locale"], match["format"]))
        for kind in StatementKind:
            for event in EVENTS:
                for locale in locales:
                    for fmt in KIND_FORMATS[kind]:
                        if (kind, event, locale, fmt) not in present:
                            problems.append(
                                TemplateProblem(
                                    _template_name(kind, event, locale, fmt),
                                    None,
                                    f"missing: no {fmt} template for {kind} {event} in {locale}",
                                )
                            )
        return problems

    def _check_wording(self, locale: str) -> list[TemplateProblem]:
        problems = []
        claims_file, labels_file = f"claims.{locale}.yaml", f"labels.{locale}.yaml"
        try:
            claims = self._yaml(claims_file, fresh=True)
        except TemplateError as exc:
            problems.extend(exc.problems)
        else:
            wanted = (*BUILTIN_CLAIMS, *(f"{family}:*" for family in BUILTIN_CLAIM_FAMILIES))
            for key in wanted:
                if not isinstance(claims.get(key), str):
                    problems.append(TemplateProblem(claims_file, None, f"no wording for {key!r}"))
            try:
                elsewhere = self._claim_keys()
            except TemplateError:
                elsewhere = set()  # the broken file reports itself, under its own locale
            for key in sorted(elsewhere - set(claims)):
                problems.append(
                    TemplateProblem(
                        claims_file, None, f"no wording for {key!r} (other locales have one)"
                    )
                )
        try:
            labels = self._yaml(labels_file, fresh=True)
        except TemplateError as exc:
            problems.extend(exc.problems)
        else:
            for group, keys in _LABEL_KEYS.items():
                table = labels.get(group)
                missing = [
                    key for key in keys if not isinstance(table, Mapping) or key not in table
                ]
                if missing:
                    problems.append(
                        TemplateProblem(
                            labels_file, None, f"{group}: no label for {', '.join(missing)}"
                        )
                    )
        return problems

    def _statement_files(self) -> list[tuple[StatementKind, str, str, str, str]]:
        found = []
        for kind in StatementKind:
            kind_dir = self._dir / kind
            if not kind_dir.is_dir():
                continue
            for path in sorted(kind_dir.iterdir()):
                match = _TEMPLATE_NAME.match(path.name)
                if match is not None:
                    found.append(
                        (
                            kind,
                            match["event"],
                            match["locale"],
                            match["format"],
                            f"{kind}/{path.name}",
                        )
                    )
        return found

    def _claims(self, locale: str) -> Mapping[str, Any]:
        if not (self._dir / f"claims.{locale}.yaml").is_file():
            raise InvalidInput(f"no claim wording for locale {locale!r}", detail={"locale": locale})
        return self._yaml(f"claims.{locale}.yaml")

    def _claim_keys(self) -> set[str]:
        keys: set[str] = set()
        for path in self._dir.glob("claims.*.yaml"):
            keys.update(str(key) for key in self._yaml(path.name))
        return keys

    def _yaml(self, name: str, *, fresh: bool = False) -> Mapping[str, Any]:
        if not fresh and name in self._yaml_cache:
            return self._yaml_cache[name]
        path = self._dir / name
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise TemplateError([TemplateProblem(name, None, "file not found")]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            raise TemplateError([TemplateProblem(name, line, f"invalid YAML: {exc}")]) from None
        if not isinstance(data, Mapping):
            raise TemplateError([TemplateProblem(name, None, "must be a mapping")])
        self._yaml_cache[name] = data
        return data

    @staticmethod
    def _kind(kind: StatementKind | str) -> StatementKind:
        try:
            return StatementKind(kind)
        except ValueError:
            raise InvalidInput(f"unknown statement kind {kind!r}") from None

    @staticmethod
    def _validate(event: str, locale: str) -> None:
        if event not in EVENTS:
            raise InvalidInput(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
        if not _LOCALE.match(locale):
            raise InvalidInput(f"not a locale: {locale!r}")


def sample_context(locale: str = "fr", renderer: StatementRenderer | None = None) -> dict[str, Any]:
    """The sample Orbis context of :meth:`StatementRenderer.sample_context`, with claims worded
    by ``renderer`` (the packaged templates when None). ``check`` and ``preview`` re-word the
    claims for each locale they render, so any renderer will do for them."""
    return (renderer or StatementRenderer()).sample_context(locale)


def _template_name(kind: StatementKind, event: str, locale: str, fmt: str) -> str:
    return f"{kind}/{event}.{locale}.{fmt}.j2"


def _duration_function() -> Callable[..., str]:
    @pass_context
    def duration(context: Context, start: Any, end: Any) -> str:
        """How long from ``start`` to ``end``, e.g. ``3 h 20 min``."""
        return format_duration(start, end, str(context.get("locale", "en")))

    return duration


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SecurityError):
        return f"sandbox: {exc}"
    if isinstance(exc, TemplateNotFound):
        return f"template not found: {exc.name}"
    if type(exc).__module__.startswith("jinja2"):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
