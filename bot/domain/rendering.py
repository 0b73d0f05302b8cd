"""Statements rendered from the Jinja2 templates in ``message_templates/``, in a sandbox.

The folder's layout is in :mod:`bot.domain.template_layout`, the filters and helpers templates
use in :mod:`bot.domain.rendering_filters`, and ``tocsin templates check|preview`` in
:mod:`bot.domain.template_check`; this module re-exports their public names.

Each format has an environment of its own, so escaping follows the format being produced, not
the name of the file being compiled: a partial included from an HTML template is escaped as
HTML, the same partial included from a Slack template is escaped for Slack, and nobody has to
remember a filter. HTML, Telegram and Slack autoescape; subject, text and SMS do not.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_context
from markupsafe import escape

import bot
from bot.domain import template_check
from bot.domain.errors import InvalidInput
from bot.domain.models import StatementKind
from bot.domain.rendering_filters import (
    AUTOESCAPED,
    bold_for,
    bullets_for,
    duration_function,
    finish,
    format_duration,
    format_local_time,
    local_time_filter,
    mrkdwn,
    paragraphs,
    tidy,
)
from bot.domain.sms_text import sms_encoding
from bot.domain.template_check import TELEGRAM_TAGS
from bot.domain.template_layout import (
    ALL_FORMATS,
    BUILTIN_CLAIM_FAMILIES,
    BUILTIN_CLAIMS,
    CAUSES,
    EVENTS,
    KIND_FORMATS,
    MESSAGE_FORMATS,
    TemplateError,
    TemplateProblem,
    statement_files,
    template_name,
)

__all__ = [
    "ALL_FORMATS",
    "BUILTIN_CLAIMS",
    "BUILTIN_CLAIM_FAMILIES",
    "CAUSES",
    "EVENTS",
    "KIND_FORMATS",
    "MESSAGE_FORMATS",
    "TELEGRAM_TAGS",
    "StatementRenderer",
    "TemplateError",
    "TemplateProblem",
    "format_duration",
    "format_local_time",
    "mrkdwn",
    "paragraphs",
    "sample_context",
]

_LOCALE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?$")


def packaged_templates() -> Path:
    """The message templates shipped with the package.

    An installed wheel carries them as ``bot/message_templates/`` (see ``setup.py``); an
    editable checkout reads the top-level ``message_templates/`` folder in place.
    """
    installed = importlib.resources.files(bot) / "message_templates"
    if installed.is_dir():
        return Path(str(installed))
    return Path(bot.__file__).resolve().parent.parent / "message_templates"


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
        self._dir = Path(templates_dir or packaged_templates())
        self._root = os.path.abspath(self._dir)
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(f"unknown time zone {timezone!r}") from None
        self.timezone = timezone
        self.sms_max_segments = sms_max_segments
        self._yaml_cache: dict[str, Mapping[str, Any]] = {}
        self._loader = FileSystemLoader(self._root)
        self._envs = {fmt: self._environment(fmt, self._loader) for fmt in ALL_FORMATS}

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
            if (self._dir / (name := template_name(kind, event, locale, fmt))).is_file()
        }
        if not names:
            pattern = f"{kind}/{event}.{locale}.*.j2"
            raise TemplateError([TemplateProblem(pattern, None, "no template for this statement")])
        values = {"event": event, **context}
        bodies: dict[str, str] = {}
        problems: list[TemplateProblem] = []
        for fmt, name in names.items():
            try:
                bodies[fmt] = self.render_template(name, fmt, locale, values)
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
            sms = finish("sms", text)
            return {"sms": sms, "text": sms}
        body = tidy(text)
        return {
            "subject": finish("subject", subject),
            "text": body,
            "html": str(paragraphs(body)),
            "slack": str(mrkdwn(body)),
            "telegram": str(escape(body)),
        }

    def locales(self) -> tuple[str, ...]:
        """Locales that have at least one statement template."""
        return tuple(sorted({locale for _, _, locale, _, _ in statement_files(self._dir)}))

    # --- claims ----------------------------------------------------------------------------

    def known_claim(self, key: str) -> bool:
        """True for the built-in claims, ``unaffected:<system>`` and keys worded in any
        ``claims.<locale>.yaml``."""
        family, colon, value = key.partition(":")
        worded = self.claim_keys()
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

    def check(
        self, context: Mapping[str, Any], locales: Sequence[str] = ("fr", "en")
    ) -> list[TemplateProblem]:
        """Everything wrong with the templates, rendering each one with ``context`` (for every
        event, with a sample update and correction where the context has none): template errors
        with file and line, SMS over the segment budget, Telegram tags Telegram refuses, missing
        formats, misnamed files, and gaps in the claims and labels files. ``[]`` when all is
        well."""
        return template_check.check(self, context, locales)

    def preview(
        self, context: Mapping[str, Any], locales: Sequence[str] = ("fr", "en")
    ) -> list[tuple[str, str]]:
        """``(template path, output)`` for every statement template in ``locales``, rendered
        with ``context`` as ``check`` does. Raises :class:`TemplateError` if any fails."""
        return template_check.preview(self, context, locales)

    def sample_context(self, locale: str = "fr") -> dict[str, Any]:
        """A realistic render context: the AP-HP Orbis outage of 30 August 2023, worded in
        ``locale`` (``fr`` or ``en``), as declared, with a sample update and correction."""
        return template_check.orbis_outage(self, locale)

    # --- templates and wording files -------------------------------------------------------

    def render_template(self, name: str, fmt: str, locale: str, context: Mapping[str, Any]) -> str:
        """Render the template ``name`` (relative to the templates folder) as ``fmt`` in
        ``locale``, finished for that format.

        Raises :class:`TemplateError` with the file and line where it went wrong.
        """
        values = {**context, "locale": locale}
        try:
            if fmt not in self._envs:  # a registered channel's own format: plain text
                self._envs[fmt] = self._environment(fmt, self._loader)
            output = self._envs[fmt].get_template(name).render(values)
        except TemplateSyntaxError as exc:
            file = exc.name or self._relative(exc.filename or "") or name
            raise TemplateError(
                [TemplateProblem(file, exc.lineno, exc.message or str(exc))]
            ) from exc
        except Exception as exc:  # a template is code that users edit: anything can go wrong
            file, line = self._position(exc) or (name, None)
            raise TemplateError([TemplateProblem(file, line, _describe(exc))]) from exc
        return finish(fmt, output)

    def wording(self, name: str, *, fresh: bool = False) -> Mapping[str, Any]:
        """The claims or labels file ``name`` as a mapping, read once and kept (``fresh`` reads
        it again). Raises :class:`TemplateError` when it is missing, invalid or not a mapping."""
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

    def claim_keys(self) -> set[str]:
        """Every claim key worded in any ``claims.<locale>.yaml``."""
        keys: set[str] = set()
        for path in self._dir.glob("claims.*.yaml"):
            keys.update(str(key) for key in self.wording(path.name))
        return keys

    # --- internals -------------------------------------------------------------------------

    def _environment(self, fmt: str, loader: FileSystemLoader) -> ImmutableSandboxedEnvironment:
        env = ImmutableSandboxedEnvironment(
            loader=loader,
            undefined=StrictUndefined,
            autoescape=fmt in AUTOESCAPED,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        env.filters["local_time"] = local_time_filter(self.timezone)
        env.filters["mrkdwn"] = mrkdwn
        env.filters["paragraphs"] = paragraphs
        env.filters["sms_fits"] = self._sms_fits
        env.tests["startswith"] = lambda value, prefix: str(value).startswith(prefix)
        env.globals.update(
            bold=bold_for(fmt),
            bullets=bullets_for(fmt),
            label=self._label_function(),
            duration=duration_function(),
        )
        return env

    def _sms_fits(self, text: Any) -> bool:
        """True when ``text``, sent as an SMS, fits the segment budget: lets an SMS template
        carry free text (an update's message) only when there is room, never cutting it."""
        return sms_encoding(finish("sms", str(text))).segments <= self.sms_max_segments

    def _label_function(self) -> Callable[..., str]:
        @pass_context
        def label(context: Context, group: str, key: Any) -> str:
            """Localised label of ``key`` in ``group`` (severity, status, cause, ...)."""
            locale = str(context.get("locale", "en"))
            table = self.wording(f"labels.{locale}.yaml").get(group)
            if not isinstance(table, Mapping):
                raise TemplateRuntimeError(f"labels.{locale}.yaml has no group {group!r}")
            key = str(key)
            if key in table:
                return str(table[key])
            if "other" in table:
                return str(table["other"]).replace("{value}", key)
            raise TemplateRuntimeError(f"labels.{locale}.yaml has no {group} label for {key!r}")

        return label

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

    def _claims(self, locale: str) -> Mapping[str, Any]:
        if not (self._dir / f"claims.{locale}.yaml").is_file():
            raise InvalidInput(f"no claim wording for locale {locale!r}", detail={"locale": locale})
        return self.wording(f"claims.{locale}.yaml")

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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SecurityError):
        return f"sandbox: {exc}"
    if isinstance(exc, TemplateNotFound):
        return f"template not found: {exc.name}"
    if type(exc).__module__.startswith("jinja2"):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
