"""The statement renderer: shipped templates, escaping per format, the sandbox, claims, times."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.domain.errors import InvalidInput
from bot.domain.models import StatementKind
from bot.domain.rendering import (
    EVENTS,
    KIND_FORMATS,
    StatementRenderer,
    TemplateError,
    TemplateProblem,
    format_duration,
    format_local_time,
)
from bot.domain.sms_text import sms_encoding

LOCALES = ("fr", "en")


@pytest.fixture(scope="module")
def renderer() -> StatementRenderer:
    return StatementRenderer()


def context_for(
    renderer: StatementRenderer, event: str, locale: str, **incident: Any
) -> dict[str, Any]:
    """The sample Orbis context as the services would build it for ``event``."""
    context = renderer.sample_context(locale)
    context["event"] = event
    context["incident"].update(incident)
    if event != "update":
        context["update"] = None
    if event == "correction":
        context["claims"] = [c for c in context["claims"] if c["key"] != "not_a_cyberattack"]
    else:
        context["correction"] = None
    if event == "resolved":
        context["incident"].update(
            status="resolved", resolved_at=datetime(2023, 8, 30, 17, 25, tzinfo=UTC)
        )
    return context


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --- the shipped templates -------------------------------------------------------------------


@pytest.mark.parametrize("data_locale", LOCALES)
@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("kind", list(StatementKind))
def test_every_shipped_template_renders(
    renderer: StatementRenderer, kind: StatementKind, event: str, locale: str, data_locale: str
) -> None:
    context = context_for(renderer, event, data_locale)

    bodies = renderer.render(kind, event, locale, context)

    expected = {"sms", "text"} if kind is StatementKind.SMS else set(KIND_FORMATS[kind])
    assert set(bodies) == expected
    title = context["incident"]["title"]
    for fmt, body in bodies.items():
        assert title in body, fmt
        assert body == body.strip()
    if kind is StatementKind.SMS:
        assert bodies["text"] == bodies["sms"]
        assert sms_encoding(bodies["sms"]).segments <= 2
    else:
        assert "\n" not in bodies["subject"]


def test_internal_statement_tells_staff_what_is_down_and_what_to_do(
    renderer: StatementRenderer,
) -> None:
    text = renderer.render(
        StatementKind.INTERNAL, "declared", "fr", context_for(renderer, "declared", "fr")
    )["text"]

    assert text.startswith("Incident critique : Panne du logiciel Orbis\n")
    assert "Depuis le 30 août 2023 à 14h05, les systèmes suivants" in text  # 12:05 UTC, Paris
    assert "• Messagerie électronique" in text
    assert "Passez en procédures dégradées (papier)" in text
    assert "Fonctionnent normalement\n• Logiciel de régulation du SAMU" in text
    assert "• Il ne s'agit pas d'une cyberattaque." in text
    assert "\n\n\n" not in text


def test_english_statement_shows_local_time_with_zone(renderer: StatementRenderer) -> None:
    text = renderer.render(
        StatementKind.INTERNAL, "declared", "en", context_for(renderer, "declared", "en")
    )["text"]

    assert "Since 30 August 2023 at 14:05 CEST, the following systems" in text
    assert "Switch to downtime (paper) procedures" in text


def test_press_statement_is_driven_by_the_claims(renderer: StatementRenderer) -> None:
    context = context_for(renderer, "declared", "fr")
    context["claims"] = [{"key": "no_patient_impact", "text": "Aucun impact sur les patients."}]

    text = renderer.render(StatementKind.PRESS, "declared", "fr", context)["text"]

    assert "Les équipes sont pleinement mobilisées" in text
    assert "Il s'agit d'un problème technique." in text  # cause: technical
    assert "Aucun impact sur les patients." in text
    assert "cyberattaque" not in text


def test_free_text_cause_is_shown_as_written(renderer: StatementRenderer) -> None:
    context = context_for(renderer, "declared", "fr", cause="coupure électrique au datacenter")

    bodies = renderer.render(StatementKind.PRESS, "declared", "fr", context)

    assert "Cause identifiée : coupure électrique au datacenter." in bodies["text"]


def test_correction_quotes_the_withdrawn_claim_and_the_reason(
    renderer: StatementRenderer,
) -> None:
    bodies = renderer.render(
        StatementKind.DEPARTMENT_HEADS,
        "correction",
        "fr",
        context_for(renderer, "correction", "fr"),
    )

    assert "« Il ne s'agit pas d'une cyberattaque. »" in bodies["text"]
    assert "ne peut pas être écartée" in bodies["text"]
    assert (
        bodies["subject"] == "[À relayer] Rectificatif : Panne du logiciel Orbis (INC-20230830-01)"
    )


def test_resolved_statement_gives_time_and_duration(renderer: StatementRenderer) -> None:
    text = renderer.render(
        StatementKind.INTERNAL, "resolved", "fr", context_for(renderer, "resolved", "fr")
    )["text"]

    assert "résolu depuis le 30 août 2023 à 19h25 (durée : 5 h 20 min)" in text


def test_sms_asks_for_an_ok_reply_only_when_acknowledgement_is_required(
    renderer: StatementRenderer,
) -> None:
    context = context_for(renderer, "declared", "fr")

    plain = renderer.render(StatementKind.SMS, "declared", "fr", context)["sms"]
    with_ack = renderer.render(
        StatementKind.SMS, "declared", "fr", {**context, "require_ack": True}
    )["sms"]

    assert "Répondez OK" not in plain
    assert with_ack.endswith("Répondez OK pour confirmer la lecture.")
    assert sms_encoding(with_ack).encoding == "gsm7"


def test_sms_update_carries_the_message_only_when_it_fits(renderer: StatementRenderer) -> None:
    context = context_for(renderer, "update", "fr")
    short = renderer.render(StatementKind.SMS, "update", "fr", context)["sms"]
    context["update"] = {**context["update"], "message": "Redémarrage en cours. " * 20}

    long = renderer.render(StatementKind.SMS, "update", "fr", context)["sms"]

    assert context_for(renderer, "update", "fr")["update"]["message"] in short
    assert "Redémarrage" not in long
    assert "Détails par e-mail." in long
    assert sms_encoding(long).segments <= 2


# --- escaping --------------------------------------------------------------------------------

HOSTILE = '<script>alert(1)</script> & <!channel> <@U123> "x"'


def test_hostile_title_is_escaped_in_html_and_telegram(renderer: StatementRenderer) -> None:
    context = context_for(renderer, "declared", "fr", title=HOSTILE, systems=["<b>Orbis</b>"])

    bodies = renderer.render(StatementKind.INTERNAL, "declared", "fr", context)

    for fmt in ("html", "telegram"):
        assert "<script>" not in bodies[fmt]
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;!channel&gt;" in bodies[fmt]
        assert "&lt;b&gt;Orbis&lt;/b&gt;" in bodies[fmt]
    assert bodies["telegram"].startswith("<b>Incident critique : &lt;script&gt;")
    assert bodies["html"].startswith("<p><strong>Incident critique : &lt;script&gt;")
    assert HOSTILE in bodies["text"]  # plain text is shown as typed
    assert HOSTILE in bodies["subject"]


def test_hostile_title_cannot_mention_anyone_on_slack(renderer: StatementRenderer) -> None:
    context = context_for(renderer, "declared", "fr", title=HOSTILE, sites=['<!here> "Nord"'])

    slack = renderer.render(StatementKind.INTERNAL, "declared", "fr", context)["slack"]

    assert "<!channel>" not in slack
    assert "<!here>" not in slack
    assert "<@U123>" not in slack
    assert slack.startswith("*Incident critique : &lt;script&gt;alert(1)&lt;/script&gt; &amp;")
    assert '&lt;!channel&gt; &lt;@U123&gt; "x"*' in slack
    # Slack decodes &amp; &lt; &gt; only: quotes must stay quotes, not &#34;
    assert '(&lt;!here&gt; "Nord")' in slack
    assert "&#" not in slack


def test_slack_escapes_every_value_without_a_filter(tmp_path: Path) -> None:
    write(
        tmp_path,
        "internal/declared.fr.slack.j2",
        "{{ incident.title }} {{ incident.title|mrkdwn }}",
    )
    renderer = StatementRenderer(tmp_path)

    bodies = renderer.render(
        StatementKind.INTERNAL, "declared", "fr", {"incident": {"title": "<!here> & co"}}
    )

    assert bodies == {"slack": "&lt;!here&gt; &amp; co &lt;!here&gt; &amp; co"}


def test_partials_are_escaped_as_the_format_that_includes_them(tmp_path: Path) -> None:
    write(tmp_path, "_partials/title.j2", "{{ incident.title }}")
    for fmt in ("text", "html", "telegram", "slack"):
        write(tmp_path, f"internal/declared.fr.{fmt}.j2", '{% include "_partials/title.j2" %}')
    renderer = StatementRenderer(tmp_path)

    bodies = renderer.render(
        StatementKind.INTERNAL, "declared", "fr", {"incident": {"title": "<i>"}}
    )

    assert bodies == {
        "text": "<i>",
        "html": "&lt;i&gt;",
        "telegram": "&lt;i&gt;",
        "slack": "&lt;i&gt;",
    }


def test_subject_is_always_one_line(tmp_path: Path) -> None:
    write(tmp_path, "internal/declared.fr.subject.j2", "[Alerte] {{ incident.title }}\n\nsuite")
    renderer = StatementRenderer(tmp_path)

    bodies = renderer.render(
        StatementKind.INTERNAL, "declared", "fr", {"incident": {"title": "A\r\nBcc: x@example.org"}}
    )

    assert bodies == {"subject": "[Alerte] A Bcc: x@example.org suite"}


def test_bodies_from_text_escapes_for_each_format(renderer: StatementRenderer) -> None:
    text = "L'AP-HP <!channel> & <script>x</script>\nligne 2\n\n\n\nparagraphe 2"

    bodies = renderer.bodies_from_text(StatementKind.PRESS, text, "Communiqué\n: Orbis")

    assert bodies == {
        "subject": "Communiqué : Orbis",
        "text": "L'AP-HP <!channel> & <script>x</script>\nligne 2\n\nparagraphe 2",
        "html": "<p>L&#39;AP-HP &lt;!channel&gt; &amp; &lt;script&gt;x&lt;/script&gt;<br>\n"
        "ligne 2</p>\n<p>paragraphe 2</p>",
        "slack": "L'AP-HP &lt;!channel&gt; &amp; &lt;script&gt;x&lt;/script&gt;\nligne 2\n\n"
        "paragraphe 2",
        "telegram": "L&#39;AP-HP &lt;!channel&gt; &amp; &lt;script&gt;x&lt;/script&gt;\nligne 2\n\n"
        "paragraphe 2",
    }


def test_bodies_from_text_for_sms_is_one_plain_paragraph(renderer: StatementRenderer) -> None:
    bodies = renderer.bodies_from_text(StatementKind.SMS, "L\u2019AP-HP\n— panne", "ignored")

    assert bodies == {"sms": "L'AP-HP - panne", "text": "L'AP-HP - panne"}


# --- the sandbox -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ ''.__class__.__mro__ }}", id="dunder attribute"),
        pytest.param("{{ ''.__class__.__mro__[1].__subclasses__() }}", id="subclasses"),
        pytest.param("{{ '{0.__class__.__mro__}'.format('') }}", id="str.format"),
        pytest.param("{{ ('{0.__class__}'|attr('format'))(1) }}", id="attr filter + format"),
        pytest.param("{{ incident.__init__.__globals__ }}", id="globals"),
        pytest.param("{% set l = incident.systems %}{{ l.append('x') }}", id="mutation"),
    ],
)
def test_sandbox_escapes_are_template_errors(tmp_path: Path, source: str) -> None:
    write(tmp_path, "internal/declared.fr.text.j2", "Titre\n\n" + source)
    renderer = StatementRenderer(tmp_path)

    with pytest.raises(TemplateError) as caught:
        renderer.render(
            StatementKind.INTERNAL, "declared", "fr", {"incident": {"systems": ["Orbis"]}}
        )

    [problem] = caught.value.problems
    assert (problem.file, problem.line) == ("internal/declared.fr.text.j2", 3)
    assert "unsafe" in problem.message or "sandbox" in problem.message


# --- errors with file and line ---------------------------------------------------------------


def test_undefined_variable_reports_file_and_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        "internal/declared.fr.text.j2",
        "Titre : {{ incident.title }}\n\n{{ incident.nope }}\n",
    )
    renderer = StatementRenderer(tmp_path)

    with pytest.raises(TemplateError) as caught:
        renderer.render(StatementKind.INTERNAL, "declared", "fr", {"incident": {"title": "T"}})

    assert [str(p) for p in caught.value.problems] == [
        "internal/declared.fr.text.j2:3: 'dict object' has no attribute 'nope'"
    ]


def test_error_in_a_partial_names_the_partial(tmp_path: Path) -> None:
    write(
        tmp_path, "_partials/sections.fr.j2", "{% macro s() %}\nok\n{{ missing }}\n{% endmacro %}"
    )
    write(
        tmp_path,
        "internal/declared.fr.text.j2",
        '{% import "_partials/sections.fr.j2" as s with context %}\n{{ s.s() }}',
    )
    write(tmp_path, "internal/declared.fr.html.j2", '{% include "internal/declared.fr.text.j2" %}')
    renderer = StatementRenderer(tmp_path)

    with pytest.raises(TemplateError) as caught:
        renderer.render(StatementKind.INTERNAL, "declared", "fr", {})

    # reported once, although two formats hit it
    assert caught.value.problems == [
        TemplateProblem("_partials/sections.fr.j2", 3, "'missing' is undefined")
    ]


def test_syntax_error_reports_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "internal/declared.fr.text.j2", "a\nb\n{% if %}\n")
    renderer = StatementRenderer(tmp_path)

    with pytest.raises(TemplateError) as caught:
        renderer.render(StatementKind.INTERNAL, "declared", "fr", {})

    [problem] = caught.value.problems
    assert (problem.file, problem.line) == ("internal/declared.fr.text.j2", 3)


def test_missing_include_reports_the_including_line(tmp_path: Path) -> None:
    write(tmp_path, "internal/declared.fr.text.j2", 'a\n{% include "_partials/nope.j2" %}')
    renderer = StatementRenderer(tmp_path)

    with pytest.raises(TemplateError) as caught:
        renderer.render(StatementKind.INTERNAL, "declared", "fr", {})

    assert [str(p) for p in caught.value.problems] == [
        "internal/declared.fr.text.j2:2: template not found: _partials/nope.j2"
    ]


def test_unknown_label_reports_the_template_line(renderer: StatementRenderer) -> None:
    context = context_for(renderer, "declared", "en", severity="apocalyptic")

    with pytest.raises(TemplateError) as caught:
        renderer.render(StatementKind.INTERNAL, "declared", "en", context)

    assert [str(p) for p in caught.value.problems] == [
        "internal/declared.en.subject.j2:1: labels.en.yaml has no severity label for 'apocalyptic'",
        "internal/declared.en.text.j2:2: labels.en.yaml has no severity label for 'apocalyptic'",
    ]


def test_statement_without_templates_is_a_template_error(renderer: StatementRenderer) -> None:
    with pytest.raises(TemplateError) as caught:
        renderer.render(StatementKind.INTERNAL, "declared", "de", {})

    assert str(caught.value) == "internal/declared.de.*.j2: no template for this statement"


@pytest.mark.parametrize(
    ("kind", "event", "locale"),
    [("internal", "declard", "fr"), ("memo", "declared", "fr"), ("internal", "declared", "../fr")],
)
def test_unknown_kind_event_or_locale_is_invalid_input(
    renderer: StatementRenderer, kind: Any, event: str, locale: str
) -> None:
    with pytest.raises(InvalidInput):
        renderer.render(kind, event, locale, {})


# --- claims ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "locale", "expected"),
    [
        (
            "no_patient_impact",
            "fr",
            "Cet incident n'a aucun impact sur la prise en charge des patients.",
        ),
        ("no_patient_impact", "en", "This incident has no impact on patient care."),
        ("not_a_cyberattack", "fr", "Il ne s'agit pas d'une cyberattaque."),
        ("not_a_cyberattack", "en", "This is not a cyberattack."),
        ("data_not_compromised", "fr", "Aucune donnée n'a été compromise."),
        ("unaffected:SAMU", "fr", "SAMU : fonctionnement normal, non affecté par l'incident."),
        ("unaffected:SAMU", "en", "SAMU: operating normally, not affected by the incident."),
    ],
)
def test_claim_wording_per_locale(
    renderer: StatementRenderer, key: str, locale: str, expected: str
) -> None:
    assert renderer.claim_text(key, locale) == expected


@pytest.mark.parametrize("key", ["no_such_claim", "unaffected:", "unaffected:  ", "other:SAMU", ""])
def test_unknown_claim_is_invalid_input(renderer: StatementRenderer, key: str) -> None:
    assert not renderer.known_claim(key)
    with pytest.raises(InvalidInput, match="unknown claim"):
        renderer.claim_text(key, "fr")


def test_known_claims(renderer: StatementRenderer) -> None:
    assert renderer.known_claim("no_patient_impact")
    assert renderer.known_claim("not_a_cyberattack")
    assert renderer.known_claim("data_not_compromised")
    assert renderer.known_claim("unaffected:Logiciel du SAMU")


def test_claims_yaml_can_add_claims(tmp_path: Path) -> None:
    write(tmp_path, "claims.fr.yaml", 'teams_mobilised: "Les équipes sont mobilisées."\n')
    renderer = StatementRenderer(tmp_path)

    assert renderer.known_claim("teams_mobilised")
    assert renderer.claim_text("teams_mobilised", "fr") == "Les équipes sont mobilisées."
    with pytest.raises(InvalidInput, match="no claim wording for locale"):
        renderer.claim_text("teams_mobilised", "en")


# --- times -----------------------------------------------------------------------------------

SUMMER = datetime(2023, 8, 30, 12, 5, tzinfo=UTC)
WINTER = datetime(2024, 1, 1, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "locale", "style", "expected"),
    [
        (SUMMER, "fr", "datetime", "30 août 2023 à 14h05"),
        (SUMMER, "fr", "date", "30 août 2023"),
        (SUMMER, "fr", "time", "14h05"),
        (SUMMER, "fr", "short", "30/08 à 14h05"),
        (WINTER, "fr", "datetime", "1er janvier 2024 à 08h00"),
        (SUMMER, "en", "datetime", "30 August 2023 at 14:05 CEST"),
        (WINTER, "en", "datetime", "1 January 2024 at 08:00 CET"),
        (SUMMER, "en", "short", "30 Aug 14:05"),
        (SUMMER.replace(tzinfo=None), "fr", "time", "14h05"),  # naive means UTC
        ("2023-08-30T12:05:00+00:00", "fr", "time", "14h05"),
    ],
)
def test_format_local_time(moment: Any, locale: str, style: str, expected: str) -> None:
    assert format_local_time(moment, locale, "Europe/Paris", style) == expected


def test_local_time_filter_uses_the_organisation_time_zone(tmp_path: Path) -> None:
    write(tmp_path, "internal/declared.en.text.j2", "{{ incident.declared_at|local_time }}")
    renderer = StatementRenderer(tmp_path)
    incident = {"declared_at": SUMMER}

    in_paris = renderer.render(StatementKind.INTERNAL, "declared", "en", {"incident": incident})
    in_new_york = renderer.render(
        StatementKind.INTERNAL,
        "declared",
        "en",
        {"incident": incident, "org": {"timezone": "America/New_York"}},
    )

    assert in_paris == {"text": "30 August 2023 at 14:05 CEST"}
    assert in_new_york == {"text": "30 August 2023 at 08:05 EDT"}


@pytest.mark.parametrize(
    ("minutes", "locale", "expected"),
    [(45, "fr", "45 min"), (320, "fr", "5 h 20 min"), (120, "en", "2 h"), (3120, "fr", "2 j 4 h")],
)
def test_format_duration(minutes: int, locale: str, expected: str) -> None:
    end = datetime.fromtimestamp(SUMMER.timestamp() + minutes * 60, UTC)
    assert format_duration(SUMMER, end, locale) == expected


def test_template_problem_reads_as_file_line_message() -> None:
    assert (
        str(TemplateProblem("sms/declared.fr.sms.j2", 4, "boom"))
        == "sms/declared.fr.sms.j2:4: boom"
    )
    assert str(TemplateProblem("claims.fr.yaml", None, "boom")) == "claims.fr.yaml: boom"
