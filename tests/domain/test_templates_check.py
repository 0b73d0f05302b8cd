"""``StatementRenderer.check`` and ``preview``: what ``tocsin templates check|preview`` report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from bot.domain.rendering import StatementRenderer, TemplateProblem, sample_context

SHIPPED = StatementRenderer().templates_dir
EXAMPLE = Path(__file__).parents[2] / "examples" / "orbis-outage.yaml"


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A copy of the shipped templates, to break."""
    copy = tmp_path / "message_templates"
    shutil.copytree(SHIPPED, copy)
    return copy


def check(templates_dir: Path, locale: str = "fr") -> list[str]:
    renderer = StatementRenderer(templates_dir)
    return [str(problem) for problem in renderer.check(renderer.sample_context(locale))]


@pytest.mark.parametrize("locale", ["fr", "en"])
def test_shipped_templates_pass(locale: str) -> None:
    renderer = StatementRenderer()

    assert renderer.check(renderer.sample_context(locale)) == []


def test_module_sample_context_serves_both_locales() -> None:
    # what `tocsin templates check` runs: one sample, every locale checked
    assert StatementRenderer().check(sample_context(), ("fr", "en")) == []


def test_check_reports_a_syntax_error_with_file_and_line(templates: Path) -> None:
    path = templates / "internal" / "declared.fr.text.j2"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = "{% if incident.systems %}"  # line 4, never closed
    path.write_text("\n".join(lines), encoding="utf-8")

    problems = check(templates)

    # the html, slack and telegram files include the text file; the fault is reported once
    assert len(problems) == 1
    assert problems[0].startswith("internal/declared.fr.text.j2:")
    assert "endif" in problems[0]


def test_check_reports_an_undefined_variable_with_file_and_line(templates: Path) -> None:
    path = templates / "press" / "update.en.text.j2"
    path.write_text(path.read_text(encoding="utf-8") + "{{ incident.spokesperson }}\n", "utf-8")
    line = len(path.read_text(encoding="utf-8").splitlines())

    assert check(templates) == [
        f"press/update.en.text.j2:{line}: 'dict object' has no attribute 'spokesperson'"
    ]


def test_check_reports_an_error_inside_a_partial(templates: Path) -> None:
    path = templates / "_partials" / "sections.en.j2"
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace("{{ org.name }} crisis cell", "{{ org.nam }} crisis cell"), "utf-8"
    )
    line = next(
        number
        for number, content in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "org.nam }}" in content
    )

    assert check(templates) == [
        f"_partials/sections.en.j2:{line}: 'dict object' has no attribute 'nam'"
    ]


def test_check_flags_an_sms_over_budget(templates: Path) -> None:
    long = "{{ incident.title }} : " + "Passez en procédures dégradées. " * 12
    (templates / "sms" / "declared.fr.sms.j2").write_text(long, encoding="utf-8")

    assert check(templates) == [
        "sms/declared.fr.sms.j2: SMS of 3 segments (409 septets, gsm7), over the budget of 2"
    ]


def test_sms_budget_is_configurable(templates: Path) -> None:
    renderer = StatementRenderer(templates, sms_max_segments=1)

    problems = renderer.check(renderer.sample_context("fr"))

    assert problems
    assert all(problem.file.startswith("sms/") for problem in problems)
    assert all("over the budget of 1" in problem.message for problem in problems)


def test_check_reports_missing_formats_and_misnamed_files(templates: Path) -> None:
    (templates / "internal" / "update.en.slack.j2").unlink()
    (templates / "public" / "resolved.fr.html.j2").rename(
        templates / "public" / "resolved.fr.htlm.j2"
    )
    (templates / "sms" / "declared.fr.text.j2").write_text("x", encoding="utf-8")

    assert check(templates) == [
        "public/resolved.fr.htlm.j2: format 'htlm' is not one of public's",
        "sms/declared.fr.text.j2: format 'text' is not one of sms's",
        "internal/update.en.slack.j2: missing: no slack template for internal update in en",
        "public/resolved.fr.html.j2: missing: no html template for public resolved in fr",
    ]


def test_check_reports_tags_telegram_refuses(templates: Path) -> None:
    path = templates / "press" / "declared.fr.telegram.j2"
    path.write_text(path.read_text(encoding="utf-8") + "<u>souligné</u>\n", encoding="utf-8")

    assert check(templates) == ["press/declared.fr.telegram.j2: Telegram refuses tags: u"]


def test_check_reports_gaps_in_claims_and_labels(templates: Path) -> None:
    claims = templates / "claims.en.yaml"
    claims.write_text(
        "\n".join(
            line
            for line in claims.read_text(encoding="utf-8").splitlines()
            if not line.startswith("data_not_compromised")
        ),
        encoding="utf-8",
    )
    labels = templates / "labels.fr.yaml"
    labels.write_text(
        labels.read_text(encoding="utf-8").replace("  critical: Incident critique\n", ""), "utf-8"
    )

    problems = check(templates, "en")

    assert "claims.en.yaml: no wording for 'data_not_compromised'" in problems
    assert "labels.fr.yaml: severity: no label for critical" in problems


def test_check_reports_invalid_yaml_with_its_line(templates: Path) -> None:
    (templates / "labels.en.yaml").write_text("severity:\n  minor: [unclosed\n", encoding="utf-8")

    problems = StatementRenderer(templates).check(StatementRenderer().sample_context("fr"))

    assert any(
        problem.file == "labels.en.yaml" and problem.line is not None for problem in problems
    )


def test_preview_renders_every_template() -> None:
    renderer = StatementRenderer()

    previews = dict(renderer.preview(renderer.sample_context("fr")))

    # 4 kinds x 4 events x 2 locales x 5 formats, plus sms: 4 events x 2 locales
    assert len(previews) == 4 * 4 * 2 * 5 + 4 * 2
    assert previews["sms/declared.fr.sms.j2"].startswith(
        "AP-HP - Incident critique depuis 14h05 : Panne du logiciel Orbis."
    )
    assert previews["press/correction.en.subject.j2"] == (
        "Press release – AP-HP: correction – Panne du logiciel Orbis"
    )


def test_problems_compare_as_values() -> None:
    assert TemplateProblem("a.j2", 1, "x") == TemplateProblem("a.j2", 1, "x")


@pytest.mark.parametrize("locale", ["fr", "en"])
def test_shipped_templates_pass_with_the_example_orbis_incident(locale: str) -> None:
    example = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    renderer = StatementRenderer()
    context = renderer.sample_context(locale)
    context["incident"].update(
        {key: example[key] for key in ("title", "systems", "impact", "unaffected", "sites")},
        severity=example["severity"],
        cause=example["cause"],
    )
    context["claims"] = [
        {"key": key, "text": renderer.claim_text(key, locale)} for key in example["claims"]
    ]

    assert renderer.check(context) == []
