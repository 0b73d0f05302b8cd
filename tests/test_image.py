"""The Docker image, rehearsed without a Docker engine.

The build stage is replayed from the Dockerfile itself: its COPY sources are laid out in a
temporary folder exactly where the stage puts them, and the wheel is built there with the
stage's own ``pip wheel --no-deps --no-build-isolation`` (the build tools are the locked ones
of requirements/build.txt, which the test venv holds at the same pins). The runtime stage is
replayed honestly but fast: instead of downloading requirements/runtime.txt again, a fresh
venv (``--without-pip``) sees a folder of links to exactly the distributions that
requirements/runtime.txt pins (taken from the project's venv, where they are installed at
those versions) and nothing else: no test tool, no stand-in, no aiosmtpd. The wheel is
installed into it with ``--no-deps``, as the image does, and ``tocsin templates check``,
``tocsin db upgrade`` and ``tocsin serve`` run from another folder against the compose
example's configuration (SQLite in place of PostgreSQL) until ``/readyz`` answers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import venv
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_SUFFIXES = {".j2", ".yaml", ".md"}
STAND_INS = ("bot/sandbox/", "tocsin_sandbox/")
PIP = [sys.executable, "-m", "pip"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


@dataclass
class Stage:
    name: str
    workdir: str = "/"
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def commands(self, keyword: str) -> list[str]:
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def dockerfile_stages(text: str) -> list[Stage]:
    """The Dockerfile's stages, with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    )
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, arguments = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            stages.append(Stage(name=words[2] if len(words) > 2 else str(len(stages))))
        stages[-1].instructions.append((keyword, " ".join(arguments.split())))
        if keyword == "WORKDIR":
            stages[-1].workdir = arguments.strip()
    return stages


def pins(requirements: Path) -> dict[str, str]:
    return {
        canonical(name): version
        for name, version in PIN.findall(requirements.read_text(encoding="utf-8"))
    }


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lay_out_build_context(stage: Stage, into: Path) -> None:
    """Put every COPY source of the stage where the stage copies it (relative to WORKDIR)."""
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for arguments in stage.commands("COPY"):
        assert not arguments.startswith("--"), f"build stage copies from elsewhere: {arguments}"
        *sources, destination = arguments.split()
        target = into / os.path.relpath(
            os.path.normpath(os.path.join(stage.workdir, destination)), stage.workdir
        )
        for source in sources:
            assert source not in ignored, f"{source} is copied but .dockerignore drops it"
            origin = ROOT / source
            assert origin.exists(), f"Dockerfile copies missing {source}"
            place = target / origin.name if destination.endswith("/") else target
            if len(sources) > 1:
                place = target / origin.name
            place.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, place, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, place)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages((ROOT / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, stages: list[Stage]) -> Path:
    """The wheel the build stage makes, built from exactly what it copies."""
    build = stages[0]
    context = tmp_path_factory.mktemp("build-stage")
    lay_out_build_context(build, context)
    (wheel_command,) = [r for r in build.commands("RUN") if "pip wheel" in r]
    words = shlex.split(wheel_command)
    assert words[:2] == ["pip", "wheel"]
    assert {"--no-deps", "--no-build-isolation"} <= set(words)
    assert words[-1] == "."
    dist = context / "dist"
    subprocess.run(
        [*PIP, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist), "."],
        cwd=context,
        check=True,
        timeout=120,
        capture_output=True,
    )
    (wheel,) = dist.glob("tocsin-*.whl")
    return wheel


def repository_files(folder: str, suffixes: set[str]) -> set[str]:
    return {
        p.relative_to(ROOT / folder).as_posix()
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and p.suffix in suffixes
    }


def test_the_stages_build_a_wheel_then_run_it_as_a_non_root_user(stages: list[Stage]) -> None:
    build, runtime = stages
    assert build.name == "build"
    assert "pip install --require-hashes -r requirements/build.txt" in build.commands("RUN")
    (install,) = runtime.commands("RUN")
    assert "pip install --require-hashes -r /tmp/requirements.txt" in install
    assert "pip install --no-deps /tmp/dist/*.whl" in install
    assert "COPY requirements/runtime.txt /tmp/requirements.txt" in [
        "COPY " + c for c in runtime.commands("COPY")
    ]
    assert "COPY --from=build /dist/ /tmp/dist/" in ["COPY " + c for c in runtime.commands("COPY")]
    (user,) = runtime.commands("USER")
    assert user not in {"root", "0"}
    assert f"--create-home {user}" in install
    assert runtime.commands("ENTRYPOINT") == ['["tocsin"]']


def test_the_wheel_holds_templates_migrations_and_web_assets_and_no_stand_in(
    built: Path,
) -> None:
    names = set(zipfile.ZipFile(built).namelist())
    templates = {
        n.removeprefix("bot/message_templates/")
        for n in names
        if n.startswith("bot/message_templates/")
    }
    expected = repository_files("message_templates", TEMPLATE_SUFFIXES)
    assert len(expected) >= 100
    assert templates == expected
    for folder, suffixes in [
        ("bot/store/sql", {".sql"}),
        ("bot/interfaces/web/templates", {".j2"}),
        ("bot/interfaces/status_templates", {".j2"}),
    ]:
        shipped = {n for n in names if n.startswith(folder + "/")}
        wanted = {f"{folder}/{f}" for f in repository_files(folder, suffixes)}
        assert wanted, folder
        assert wanted <= shipped, f"{folder}: missing {sorted(wanted - shipped)}"
    assert not [n for n in names if n.startswith(STAND_INS)]
    requires = metadata_requires(built)
    runtime = {canonical(re.split(r"[<>=!~ ;\[]", r)[0]) for r in requires if "extra ==" not in r}
    assert "aiosmtpd" not in runtime
    assert "tocsin-sandbox" not in runtime


def metadata_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode("utf-8")
    return [
        ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")
    ]


def test_the_runtime_lock_covers_the_wheel_and_excludes_the_stand_ins(built: Path) -> None:
    runtime = pins(ROOT / "requirements" / "runtime.txt")
    dev = pins(ROOT / "requirements" / "dev.txt")
    build = pins(ROOT / "requirements" / "build.txt")
    assert "aiosmtpd" not in runtime
    assert "tocsin-sandbox" not in runtime
    assert "aiosmtpd" in dev
    required = {
        canonical(re.split(r"[<>=!~ ;\[]", r)[0])
        for r in metadata_requires(built)
        if "extra ==" not in r
    }
    assert required <= set(runtime), f"not locked: {sorted(required - set(runtime))}"
    # One resolution: the test venv (dev lock) holds the runtime and build pins unchanged.
    assert {k: dev.get(k) for k in runtime} == runtime
    assert {k: dev.get(k) for k in build if k != "packaging"} == {
        k: v for k, v in build.items() if k != "packaging"
    }
    for lock in ("runtime", "dev", "build"):
        text = (ROOT / "requirements" / f"{lock}.txt").read_text(encoding="utf-8")
        entries = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2])
        assert all("--hash=sha256:" in e for e in entries if "==" in e), lock


def test_the_sdist_carries_the_templates(tmp_path: Path, built: Path, stages: list[Stage]) -> None:
    context = tmp_path / "context"
    lay_out_build_context(stages[0], context)
    out = tmp_path / "sdist"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))",
            str(out),
        ],
        cwd=context,
        check=True,
        timeout=60,
        capture_output=True,
    )
    (sdist,) = out.glob("tocsin-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    prefix = names[0].split("/")[0] + "/message_templates/"
    shipped = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
    assert shipped >= repository_files("message_templates", TEMPLATE_SUFFIXES)
    assert any(n.endswith(".sql") for n in names)
    assert not [n for n in names if "/bot/sandbox/" in n]


def runtime_environment(target: Path) -> Path:
    """A fresh venv that sees only the distributions requirements/runtime.txt pins."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(target)
    deps = target / "locked-runtime"
    deps.mkdir()
    for name, version in pins(ROOT / "requirements" / "runtime.txt").items():
        dist = metadata.distribution(name)
        assert dist.version == version, f"{name} {dist.version} installed, {version} locked"
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            origin = Path(str(dist.locate_file(top)))
            if top.endswith(".pth") or top == ".." or not origin.exists():
                continue
            link = deps / top
            if not link.exists():
                link.symlink_to(origin)
    (site,) = (target / "lib").glob("python*/site-packages")
    (site / "locked-runtime.pth").write_text(str(deps) + "\n", encoding="utf-8")
    return target / "bin" / "python"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, built: Path) -> Path:
    """The runtime stage: the wheel installed with --no-deps over the locked runtime only."""
    root = tmp_path_factory.mktemp("runtime-stage")
    python = runtime_environment(root / "venv")
    install = ["install", "--quiet", "--no-deps", "--no-index", str(built)]
    subprocess.run(
        [*PIP, "--python", str(python), *install], check=True, timeout=120, capture_output=True
    )
    return python


def clean_environment(python: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_runtime_stage_has_the_package_and_no_stand_in(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import bot, importlib.util as u; print(bot.__file__);"
        " print(u.find_spec('aiosmtpd'), u.find_spec('pytest'), u.find_spec('tocsin_sandbox'))"
    )
    where = subprocess.run(
        [str(installed), "-c", probe],
        cwd=tmp_path,
        env=clean_environment(installed),
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.splitlines()
    assert where[0].startswith(str(installed.parents[1])), where
    assert where[1] == "None None None"


def test_the_demo_without_its_extra_says_how_to_install_it(installed: Path, tmp_path: Path) -> None:
    demo = subprocess.run(
        [str(installed.parent / "tocsin"), "demo", "--exit", "--port", "0"],
        cwd=tmp_path,
        env=clean_environment(installed),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert demo.returncode == 1
    assert demo.stdout == ""
    assert demo.stderr.count("\n") == 1
    assert "pip install 'tocsin[demo]'" in demo.stderr


@pytest.mark.timeout(120)
def test_the_installed_wheel_serves_the_compose_configuration_from_another_folder(
    tmp_path: Path, installed: Path
) -> None:
    python = installed
    tocsin = python.parent / "tocsin"
    workdir = tmp_path / "srv"
    workdir.mkdir()
    env = clean_environment(python)

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    config = yaml.safe_load(compose["configs"]["tocsin-config"]["content"])
    port, closed = free_port(), free_port()
    config["storage"] = {"url": "sqlite:///tocsin.db"}
    config["server"] = {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"}
    config["channels"]["sms"]["url"] = f"http://127.0.0.1:{closed}/cgi-bin/sendsms"
    config["channels"]["email"].update(host="127.0.0.1", port=closed)
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "tocsin.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    for name, value in compose["x-tocsin"]["environment"].items():
        env[name] = value if not str(value).startswith("${") else f"test-{name.lower()}"
    env["TOCSIN_CONFIG"] = str(path)

    def tocsin_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tocsin), *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    checked = tocsin_run("templates", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    upgraded = tocsin_run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert (etc / "tocsin.db").is_file()  # relative to the config file, not the cwd
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [str(tocsin), "serve"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}/readyz", serve, timeout=60)
        assert ready == {"store": True, "worker": True}
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        log.close()


def wait_ready(url: str, process: subprocess.Popen[Any], timeout: float) -> Any:
    """Poll ``/readyz`` until it answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "tocsin serve exited before it was ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return json.loads(answer.read())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")
