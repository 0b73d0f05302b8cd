"""docker-compose.yml, the Dockerfile and the example configurations, checked without Docker."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bot.config import settings_from_dict
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[1]
SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|KEY", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{(\w+):\?[^}]+\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def tocsin_config(compose: dict[str, Any]) -> dict[str, Any]:
    content = compose["configs"]["tocsin-config"]["content"]
    assert "$" not in content  # Compose would interpolate it
    return dict(yaml.safe_load(content))


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"tocsin", "worker", "postgres", "kannel", "mailpit"}
    assert services["tocsin"]["command"] == ["serve"]
    assert services["worker"]["command"] == ["worker"]
    assert services["tocsin"]["image"] == services["worker"]["image"]
    assert services["tocsin"]["build"] == services["worker"]["build"] == "."
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")
    assert "kannel" in services["kannel"]["build"]["dockerfile_inline"]


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert published["tocsin"] == ["127.0.0.1:8080:8080"]
    assert published["mailpit"] == ["127.0.0.1:8025:8025"]
    for ports in published.values():
        assert all(str(p).startswith("127.0.0.1:") for p in ports)


def test_secrets_come_from_the_environment(
    compose: dict[str, Any], tocsin_config: dict[str, Any]
) -> None:
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET.search(key):
                assert REFERENCE.match(str(value)), f"{name}.{key} must be ${{VAR:?…}}"
    environment = compose["services"]["tocsin"]["environment"]
    assert environment == compose["services"]["worker"]["environment"]
    needed = {t["token_env"] for t in tocsin_config["auth"]["tokens"]}
    needed |= {tocsin_config["auth"]["secret_key_env"]}
    sms = tocsin_config["channels"]["sms"]
    needed |= {sms["username_env"], sms["password_env"], "TOCSIN_SMS_INBOUND_SECRET"}
    assert needed <= set(environment)
    assert environment["TOCSIN_CONFIG"] == "/etc/tocsin/tocsin.yaml"
    postgres = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    ours, theirs = REFERENCE.match(environment["PGPASSWORD"]), REFERENCE.match(postgres)
    assert ours is not None
    assert theirs is not None
    assert ours[1] == theirs[1] == "POSTGRES_PASSWORD"


def test_the_tocsin_configuration_is_valid_and_points_at_the_services(
    compose: dict[str, Any], tocsin_config: dict[str, Any]
) -> None:
    settings = settings_from_dict(tocsin_config, source="docker-compose.yml")
    services = compose["services"]
    storage = urlsplit(settings.storage.url)
    assert (storage.scheme, storage.hostname, storage.username) == (
        "postgresql",
        "postgres",
        services["postgres"]["environment"]["POSTGRES_USER"],
    )
    assert storage.password is None  # PGPASSWORD carries it
    email = settings.channels.email
    assert email is not None
    assert (email.host, str(email.port)) == ("mailpit", services["mailpit"]["expose"][0])
    sms = settings.channels.sms
    assert sms is not None
    sendsms = urlsplit(sms.url)
    assert (sendsms.hostname, str(sendsms.port)) == ("kannel", services["kannel"]["expose"][0])
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 8080)
    mount = compose["services"]["tocsin"]["configs"][0]
    assert mount == {"source": "tocsin-config", "target": "/etc/tocsin/tocsin.yaml"}


def test_volumes_and_mounted_files_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert "pgdata" in compose["volumes"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"


def test_kannel_placeholders_are_all_filled(compose: dict[str, Any]) -> None:
    kannel = compose["services"]["kannel"]
    template = (ROOT / "examples" / "kannel.conf").read_text(encoding="utf-8")
    placeholders = set(re.findall(r"@(\w+)@", template))
    assert placeholders == {
        "KANNEL_USER",
        "KANNEL_PASSWORD",
        "KANNEL_ADMIN_PASSWORD",
        "INBOUND_SECRET",
    }
    script = kannel["command"][-1]
    for name in placeholders:
        assert f"s/@{name}@/$${name}/" in script
        assert name in kannel["environment"]
    assert "sendsms-port = 13013" in template
    assert "/sms/kannel/inbound?secret=@INBOUND_SECRET@&" in template


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for other, rule in (service.get("depends_on") or {}).items():
            assert other in services, f"{name} depends on unknown {other}"
            if rule["condition"] == "service_healthy" and other != "tocsin":
                assert "healthcheck" in services[other], f"{other} has no healthcheck"


def test_dockerfile_copies_what_exists_and_runs_tocsin() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("COPY ") and not line.startswith("COPY --from="):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert 'ENTRYPOINT ["tocsin"]' in text
    assert "EXPOSE 8080" in text
    assert "/readyz" in text


def test_example_alertmanager_routes_to_tocsin_with_a_token() -> None:
    config = yaml.safe_load((ROOT / "examples" / "alertmanager.yml").read_text(encoding="utf-8"))
    (tocsin,) = [r for r in config["receivers"] if r["name"] == "tocsin"]
    (hook,) = tocsin["webhook_configs"]
    assert urlsplit(hook["url"]).path == "/api/v1/alerts/alertmanager"
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"]


@pytest.mark.alertmanager
def test_example_alertmanager_configuration_passes_amtool() -> None:
    amtool = shutil.which("amtool")
    require(amtool is not None, "amtool (prometheus-alertmanager)")
    assert amtool is not None
    result = subprocess.run(
        [amtool, "check-config", str(ROOT / "examples" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("unit", "command"), [("tocsin", "serve"), ("tocsin-worker", "worker")])
def test_systemd_units_run_tocsin_as_its_own_user_with_secrets_from_a_file(
    unit: str, command: str
) -> None:
    text = (ROOT / "examples" / f"{unit}.service").read_text(encoding="utf-8")
    service = dict(
        line.split("=", 1)
        for line in text.split("[Service]", 1)[1].split("[Install]", 1)[0].splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert service["ExecStart"].split()[-1] == command
    assert service["ExecStart"].split()[0].endswith("/bin/tocsin")
    assert service["User"] == "tocsin"
    assert service["EnvironmentFile"] == "/etc/tocsin/tocsin.env"
    assert service["Environment"] == "TOCSIN_CONFIG=/etc/tocsin/tocsin.yaml"
    assert service["Restart"] == "on-failure"
    assert "WantedBy=multi-user.target" in text
