"""The ``tocsin`` CLI as a user runs it: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    target = tmp_path / "tocsin.yaml"
    shutil.copy(ROOT / "examples" / "tocsin.yaml", target)
    return target


def tocsin(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd or ROOT,
        check=False,
        env=env,
    )


def test_declare_status_report_and_export(config: Path, tmp_path: Path) -> None:
    declared = tocsin(
        "declare",
        "--config",
        str(config),
        "--file",
        str(ROOT / "examples" / "orbis-outage.yaml"),
        "--no-wait",
        "--as",
        "cellule",
    )
    assert declared.returncode == 0, declared.stderr
    incident = declared.stdout.split()[1].rstrip(":")
    assert incident.startswith("INC-")
    assert (tmp_path / "tocsin.db").exists()  # relative to the config file, not the cwd

    status = tocsin("status", incident, "--config", str(config), "--by-site")
    assert status.returncode == 0, status.stderr
    assert "department-heads" in status.stdout and "queued" in status.stdout
    assert "Hôpital Bichat" in status.stdout and "none yet" in status.stdout

    listing = tocsin("deliveries", incident, "--config", str(config))
    assert "f•••@example.org" in listing.stdout and "f.moreau" not in listing.stdout

    report = tocsin("report", incident, "--config", str(config), "--format", "json")
    data = json.loads(report.stdout)
    assert data["incident"]["id"] == incident
    assert data["deliveries"]["total"] == sum(data["deliveries"]["by_state"].values())

    updated = tocsin(
        "update",
        incident,
        "--config",
        str(config),
        "--status",
        "identified",
        "-m",
        "Cause identifiée",
        "--as",
        "cellule",
    )
    assert updated.returncode == 0 and "identified" in updated.stdout

    press = tocsin(
        "statement",
        incident,
        "--config",
        str(config),
        "--kind",
        "press",
        "--approve",
        "--as",
        "cellule",
    )
    assert press.returncode == 2
    assert "press role required" in press.stderr  # --as gives that person's roles, no more
    approved = tocsin(
        "statement",
        incident,
        "--config",
        str(config),
        "--kind",
        "press",
        "--approve",
        "--as",
        "presse",
    )
    assert approved.returncode == 0, approved.stderr
    assert "approved by presse" in approved.stdout

    site = tmp_path / "site"
    exported = tocsin("status-page", "export", str(site), "--config", str(config))
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in site.iterdir()) == [
        "feed.atom",
        "index.en.html",
        "index.fr.html",
        "index.html",
    ]
    assert "Orbis" in (site / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["declare", "--title", "x", "--severity", "bad", "--system", "Orbis"], "severity"),
        (["declare", "--title", "x", "--severity", "major"], "systems"),
        (["declare", "--file", "/nonexistent.yaml"], "no such file"),
        (
            ["update", "INC-1999-0101-01", "--status", "identified", "--as", "cellule"],
            "no incident",
        ),
        (["update", "INC-1999-0101-01", "--status", "identified", "--as", "mallory"], "--as"),
        (["report", "INC-1999-0101-01", "--format", "pdf"], "--format"),
        (["statement", "INC-1999-0101-01", "--kind", "memo"], "unknown kind"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    config: Path, tmp_path: Path, args: list[str], reason: str
) -> None:
    result = tocsin(*args, "--config", str(config))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0]
    assert (
        not (tmp_path / "tocsin.db").exists()
        or "INC-" not in tocsin("status", "--config", str(config)).stdout
    )


def test_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "examples" / "tocsin.yaml").read_text(encoding="utf-8")
    bad.write_text(text.replace('phone: "06 12 34 56 78"', 'phone: "12"'), encoding="utf-8")
    result = tocsin("status", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: audiences.department-heads.members.0.phone" in result.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("default_audiences:", "default_audience:"), encoding="utf-8")
    result = tocsin("status", "--config", str(typo))
    assert result.returncode == 2 and "default_audience: Extra inputs" in result.stderr
    missing = tocsin("status", "--config", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "no such configuration file" in missing.stderr


def test_templates_check_and_preview() -> None:
    checked = tocsin("templates", "check")
    assert checked.returncode == 0, checked.stderr
    assert "templates: ok" in checked.stdout
    preview = tocsin("templates", "preview")
    assert preview.returncode == 0 and "sms/declared.fr.sms.j2" in preview.stdout


def test_templates_check_exits_2_naming_the_broken_template(config: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "message_templates", templates)
    broken = sorted((templates / "internal").glob("declared.fr.*.j2"))[0]
    broken.write_text("{% if %}\n", encoding="utf-8")
    text = config.read_text(encoding="utf-8")
    config.write_text(text + "\ntemplates_dir: templates\n", encoding="utf-8")
    result = tocsin("templates", "check", "--config", str(config))
    assert result.returncode == 2, result.stdout
    assert broken.name in result.stderr
    assert (
        tocsin("templates", "check", "--config", str(ROOT / "examples" / "tocsin.yaml")).returncode
        == 0
    )
