"""The templates folder: which statements, events and formats it holds, how its files are named,
the claims and causes its wording files must cover, and what is reported when one is wrong.

Layout: ``<kind>/<event>.<locale>.<format>.j2``, shared pieces in ``_partials/``, claim wording
in ``claims.<locale>.yaml`` and labels (severity, status, cause) in ``labels.<locale>.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.domain.channel_facts import all_facts, message_formats
from bot.domain.errors import TocsinError
from bot.domain.models import StatementKind

EVENTS = ("declared", "update", "resolved", "correction")
# The built-in channels' formats; KIND_FORMATS is what the registered channels read.
MESSAGE_FORMATS = ("subject", "text", "html", "slack", "telegram")
ALL_FORMATS = (*MESSAGE_FORMATS, "sms")


class _KindFormats(Mapping[StatementKind, tuple[str, ...]]):
    """The formats each statement kind is rendered in, from the registered channels' facts:
    a kind some channel always carries (``sms``) in that channel's formats, every other kind
    in the base formats plus each channel's own (``slack``, ``telegram``…)."""

    def __getitem__(self, kind: StatementKind) -> tuple[str, ...]:
        kind = StatementKind(kind)
        own = [facts for facts in all_facts() if facts.statement_kind is kind]
        if own:
            return tuple(dict.fromkeys(fmt for facts in own for fmt in facts.formats))
        return message_formats()

    def __iter__(self) -> Iterator[StatementKind]:
        return iter(StatementKind)

    def __len__(self) -> int:
        return len(StatementKind)


KIND_FORMATS: Mapping[StatementKind, tuple[str, ...]] = _KindFormats()

# Claims every deployment understands; ``claims.<locale>.yaml`` must word each of them.
BUILTIN_CLAIMS = ("no_patient_impact", "not_a_cyberattack", "data_not_compromised")
# Claim families take a value after the colon (``unaffected:SAMU``); worded as ``"<family>:*"``.
BUILTIN_CLAIM_FAMILIES = ("unaffected",)
CAUSES = ("unknown", "technical", "cyberattack_ruled_out", "cyberattack")

TEMPLATE_NAME = re.compile(r"^(?P<event>\w+)\.(?P<locale>[\w-]+)\.(?P<format>\w+)\.j2$")


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


def template_name(kind: StatementKind, event: str, locale: str, fmt: str) -> str:
    """The path, relative to the templates folder, of one statement template."""
    return f"{kind}/{event}.{locale}.{fmt}.j2"


def statement_files(folder: Path) -> list[tuple[StatementKind, str, str, str, str]]:
    """``(kind, event, locale, format, path)`` for every well-named statement template in
    ``folder``, the path relative to it; files named otherwise are left out."""
    found = []
    for kind in StatementKind:
        kind_dir = folder / kind
        if not kind_dir.is_dir():
            continue
        for path in sorted(kind_dir.iterdir()):
            match = TEMPLATE_NAME.match(path.name)
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
