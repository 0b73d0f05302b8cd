"""``tocsin templates check|preview``: every statement template rendered with a sample context,
and everything wrong with the templates folder, with file and line.

:class:`~bot.domain.rendering.StatementRenderer` answers ``check``, ``preview`` and
``sample_context`` with the functions here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from bot.domain.errors import InvalidInput
from bot.domain.models import IncidentStatus, Severity, StatementKind
from bot.domain.rendering_filters import as_datetime
from bot.domain.sms_text import sms_encoding
from bot.domain.template_layout import (
    BUILTIN_CLAIM_FAMILIES,
    BUILTIN_CLAIMS,
    CAUSES,
    EVENTS,
    KIND_FORMATS,
    TEMPLATE_NAME,
    TemplateError,
    TemplateProblem,
    statement_files,
    template_name,
)


class StatementRenderer(Protocol):
    """What the checks use of :class:`bot.domain.rendering.StatementRenderer` (which calls
    them: a protocol keeps the two modules from importing each other)."""

    timezone: str
    sms_max_segments: int

    @property
    def templates_dir(self) -> Path: ...

    def known_claim(self, key: str) -> bool: ...

    def claim_text(self, key: str, locale: str) -> str: ...

    def claim_keys(self) -> set[str]: ...

    def render_template(
        self, name: str, fmt: str, locale: str, context: Mapping[str, Any]
    ) -> str: ...

    def wording(self, name: str, *, fresh: bool = False) -> Mapping[str, Any]: ...


TELEGRAM_TAGS = frozenset({"b", "i", "a", "code", "pre"})
_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)")
_LABEL_KEYS: Mapping[str, tuple[str, ...]] = {
    "severity": tuple(Severity),
    "status": tuple(IncidentStatus),
    "status_sentence": tuple(IncidentStatus),
    "cause": (*CAUSES, "other"),
    "cause_sentence": (*CAUSES, "other"),
}


def check(
    renderer: StatementRenderer, context: Mapping[str, Any], locales: Sequence[str]
) -> list[TemplateProblem]:
    """Everything wrong with ``renderer``'s templates, as :meth:`StatementRenderer.check`
    describes it."""
    problems = _check_files(renderer, locales)
    for locale in locales:
        problems.extend(_check_wording(renderer, locale))
    for kind, event, locale, fmt, name in statement_files(renderer.templates_dir):
        if locale not in locales or fmt not in KIND_FORMATS[kind] or event not in EVENTS:
            continue
        try:
            values = _event_context(renderer, context, event, locale)
            output = renderer.render_template(name, fmt, locale, values)
        except TemplateError as exc:
            problems.extend(exc.problems)
            continue
        except InvalidInput as exc:  # no claim wording for this locale
            problems.append(TemplateProblem(name, None, str(exc)))
            continue
        problems.extend(_check_output(renderer, name, fmt, output))
    return list(dict.fromkeys(problems))


def preview(
    renderer: StatementRenderer, context: Mapping[str, Any], locales: Sequence[str]
) -> list[tuple[str, str]]:
    """``(template path, output)`` for every statement template in ``locales``, as
    :meth:`StatementRenderer.preview` describes it."""
    outputs: list[tuple[str, str]] = []
    problems: list[TemplateProblem] = []
    for kind, event, locale, fmt, name in statement_files(renderer.templates_dir):
        if locale not in locales or fmt not in KIND_FORMATS[kind] or event not in EVENTS:
            continue
        try:
            ctx = _event_context(renderer, context, event, locale)
            outputs.append((name, renderer.render_template(name, fmt, locale, ctx)))
        except TemplateError as exc:
            problems.extend(exc.problems)
        except InvalidInput as exc:  # no claim wording for this locale
            problems.append(TemplateProblem(name, None, str(exc)))
    if problems:
        raise TemplateError(list(dict.fromkeys(problems)))
    return outputs


def orbis_outage(renderer: StatementRenderer, locale: str) -> dict[str, Any]:
    """The AP-HP Orbis outage of 30 August 2023 as a render context, worded in ``locale``
    (``fr`` or ``en``) with ``renderer``'s claims and time zone, as declared, with a sample
    update and correction."""
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
        "org": {"name": "AP-HP", "locale": locale, "timezone": renderer.timezone},
        "incident": incident,
        "event": "declared",
        "update": {"status": "identified", "message": message, "at": updated},
        "claims": [{"key": key, "text": renderer.claim_text(key, locale)} for key in keys],
        "correction": {
            "claim": "not_a_cyberattack",
            "claim_text": renderer.claim_text("not_a_cyberattack", locale),
            "reason": reason,
        },
    }


def _event_context(
    renderer: StatementRenderer, context: Mapping[str, Any], event: str, locale: str
) -> dict[str, Any]:
    # check/preview render every event from one sample: fill in what each event needs and
    # word the claims in the locale being rendered, as the services do for real statements.
    values = {**context, "event": event, "require_ack": True}
    values["claims"] = [_relocalise(renderer, claim, locale) for claim in context.get("claims", [])]
    if event == "update" and not context.get("update"):
        values["update"] = orbis_outage(renderer, locale)["update"]
    if event == "correction":
        correction = dict(context.get("correction") or orbis_outage(renderer, locale)["correction"])
        if renderer.known_claim(str(correction.get("claim", ""))):
            correction["claim_text"] = renderer.claim_text(str(correction["claim"]), locale)
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
            declared = as_datetime(incident["declared_at"])
            incident["resolved_at"] = declared + timedelta(hours=5, minutes=20)
            incident["updated_at"] = incident["resolved_at"]
        incident["status"] = "resolved"
        values["incident"] = incident
    return values


def _relocalise(renderer: StatementRenderer, claim: Any, locale: str) -> Any:
    if isinstance(claim, Mapping) and renderer.known_claim(str(claim.get("key", ""))):
        return {**claim, "text": renderer.claim_text(str(claim["key"]), locale)}
    return claim


def _check_output(
    renderer: StatementRenderer, name: str, fmt: str, output: str
) -> list[TemplateProblem]:
    problems = []
    if not output:
        problems.append(TemplateProblem(name, None, "renders to nothing"))
    if fmt == "sms":
        encoding = sms_encoding(output)
        if encoding.segments > renderer.sms_max_segments:
            unit = "septets" if encoding.encoding == "gsm7" else "UCS-2 units"
            problems.append(
                TemplateProblem(
                    name,
                    None,
                    f"SMS of {encoding.segments} segments ({encoding.units} {unit}, "
                    f"{encoding.encoding}), over the budget of {renderer.sms_max_segments}",
                )
            )
    if fmt == "telegram":
        refused = sorted({tag.lower() for tag in _TAG.findall(output)} - TELEGRAM_TAGS)
        if refused:
            problems.append(
                TemplateProblem(name, None, f"Telegram refuses tags: {', '.join(refused)}")
            )
    return problems


def _check_files(renderer: StatementRenderer, locales: Sequence[str]) -> list[TemplateProblem]:
    folder = renderer.templates_dir
    if not folder.is_dir():
        return [TemplateProblem(str(folder), None, "templates folder not found")]
    problems = []
    present: set[tuple[str, str, str, str]] = set()
    for kind_dir in sorted(folder.iterdir()):
        if not kind_dir.is_dir() or kind_dir.name.startswith("_"):
            continue
        if kind_dir.name not in set(StatementKind):
            problems.append(TemplateProblem(kind_dir.name, None, "not a statement kind"))
            continue
        kind = StatementKind(kind_dir.name)
        for path in sorted(kind_dir.iterdir()):
            name = f"{kind}/{path.name}"
            match = TEMPLATE_NAME.match(path.name)
            if match is None:
                problems.append(
                    TemplateProblem(name, None, "not named <event>.<locale>.<format>.j2")
                )
            elif match["event"] not in EVENTS:
                problems.append(TemplateProblem(name, None, f"unknown event {match['event']!r}"))
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
                                template_name(kind, event, locale, fmt),
                                None,
                                f"missing: no {fmt} template for {kind} {event} in {locale}",
                            )
                        )
    return problems


def _check_wording(renderer: StatementRenderer, locale: str) -> list[TemplateProblem]:
    problems = []
    claims_file, labels_file = f"claims.{locale}.yaml", f"labels.{locale}.yaml"
    try:
        claims = renderer.wording(claims_file, fresh=True)
    except TemplateError as exc:
        problems.extend(exc.problems)
    else:
        wanted = (*BUILTIN_CLAIMS, *(f"{family}:*" for family in BUILTIN_CLAIM_FAMILIES))
        for key in wanted:
            if not isinstance(claims.get(key), str):
                problems.append(TemplateProblem(claims_file, None, f"no wording for {key!r}"))
        try:
            elsewhere = renderer.claim_keys()
        except TemplateError:
            elsewhere = set()  # the broken file reports itself, under its own locale
        for key in sorted(elsewhere - set(claims)):
            problems.append(
                TemplateProblem(
                    claims_file, None, f"no wording for {key!r} (other locales have one)"
                )
            )
    try:
        labels = renderer.wording(labels_file, fresh=True)
    except TemplateError as exc:
        problems.extend(exc.problems)
    else:
        for group, keys in _LABEL_KEYS.items():
            table = labels.get(group)
            missing = [key for key in keys if not isinstance(table, Mapping) or key not in table]
            if missing:
                problems.append(
                    TemplateProblem(
                        labels_file, None, f"{group}: no label for {', '.join(missing)}"
                    )
                )
    return problems
