"""Pytest plugin: scan every log line of the whole suite for personal data and secrets.

Registered in ``tests/conftest.py`` with ``pytest_plugins = ["tests.log_capture"]``. At session
start it adds a root handler that formats each record exactly as production does
(:class:`bot.logs.RedactingFilter` then :class:`bot.logs.JsonFormatter`, at INFO with the same
quiet HTTP-client loggers), without touching the record other handlers see. At the end it looks
for phone numbers in every format (E.164, national, ``0033…``, URL-encoded), e-mail
addresses, token shapes and the secrets the tests used; any hit fails the session (exit
status 1) and is printed. The lines are also written to ``test-output/suite-log.jsonl``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Generator, Iterable
from pathlib import Path
from urllib.parse import unquote

import phonenumbers
import pytest

from bot.logs import JsonFormatter, RedactingFilter

OUTPUT = Path(__file__).resolve().parents[1] / "test-output" / "suite-log.jsonl"
# As bot.logs.configure_logging: their INFO lines carry URLs and are off in production.
QUIET = ("httpx", "httpcore", "aiohttp.access", "telegram", "slack_bolt", "slack_sdk")
SECRET_NAMES = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY", re.IGNORECASE)

LEAKS = {
    "phone number": re.compile(r"(?<![\w/%+.])\+\d(?:[ .-]?\d){7,14}(?![\d•])"),
    "e-mail address": re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "Telegram token": re.compile(r"(?<!\d)\d{6,12}:[A-Za-z0-9_-]{20,}"),
    "Slack token": re.compile(r"xox[abposr]-[A-Za-z0-9-]{8,}"),
    "bearer credentials": re.compile(r"(?i)\bbearer\s+(?!<redacted>)[\w.~+/-]{8,}"),
}


def national_phone(line: str, region: str = "FR") -> bool:
    """True when ``line`` holds a valid phone number in any format libphonenumber reads:
    national (``0612345678``, ``06 12 34 56 78``), ``0033…``, or URL-encoded (``%2B33…``)."""
    if len(re.findall(r"\d", line)) < 8:
        return False
    decoded = unquote(line)
    for match in phonenumbers.PhoneNumberMatcher(
        decoded, region, leniency=phonenumbers.Leniency.VALID
    ):
        before = decoded[match.start - 1 : match.start] if match.start else ""
        after = decoded[match.end : match.end + 1]
        # Inside an identifier (``press-token-0123456789``) it is not a number.
        if not re.match(r"[\w-]", before) and not re.match(r"[\w-]", after):
            return True
    return False


def find_leaks(lines: Iterable[str], secrets: Iterable[str] = ()) -> list[str]:
    """``"<what>: <line>"`` for each line holding personal data, a token or a known secret."""
    known = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)
    hits = []
    for line in lines:
        found = {what for what, pattern in LEAKS.items() if pattern.search(line)}
        if "phone number" not in found and national_phone(line):
            found.add("phone number")
        hits.extend(f"{what}: {line}" for what in LEAKS if what in found)
        hits.extend(f"test secret: {line}" for secret in known if secret in line)
    return hits


class CaptureHandler(logging.Handler):
    """Keeps each record as the production pipeline would print it."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.lines: list[str] = []
        self._redact = RedactingFilter()
        self._format = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # A copy: RedactingFilter rewrites msg/args, which other handlers must not see.
            copy = logging.makeLogRecord(record.__dict__)
            self._redact.filter(copy)
            self.lines.append(self._format.format(copy))
        except Exception:  # a broken record must not break the test that logged it
            self.handleError(record)


class LogScan:
    """The plugin's state for one session."""

    def __init__(self) -> None:
        self.handler = CaptureHandler()
        self.secrets: set[str] = set()
        self._levels: dict[str, int] = {}

    def install(self) -> None:
        root = logging.getLogger()
        if self.handler not in root.handlers:
            root.addHandler(self.handler)
        if not self._levels:
            self._levels = {name: logging.getLogger(name).level for name in ("", *QUIET)}
            if root.getEffectiveLevel() > logging.INFO:
                root.setLevel(logging.INFO)
            for name in QUIET:
                logging.getLogger(name).setLevel(logging.WARNING)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)

    def harvest_secrets(self) -> None:
        """The secret-looking variables a test put in the environment."""
        for name, value in os.environ.items():
            if SECRET_NAMES.search(name) and len(value) >= 8:
                self.secrets.add(value)

    def known_secrets(self) -> set[str]:
        try:
            from tests.interfaces.api_support import TOKENS
        except ImportError:
            return set(self.secrets)
        return self.secrets | set(TOKENS.values())


_SCAN = LogScan()


def pytest_sessionstart(session: pytest.Session) -> None:
    _SCAN.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    # Something under test may replace the root handlers (configure_logging): put ours back.
    _SCAN.install()
    try:
        return (yield)
    finally:
        _SCAN.harvest_secrets()
        _SCAN.install()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _SCAN.uninstall()
    lines = _SCAN.handler.lines
    try:
        OUTPUT.parent.mkdir(exist_ok=True)
        OUTPUT.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    except OSError:
        pass  # a read-only checkout still gets the scan
    hits = find_leaks(lines, _SCAN.known_secrets())
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.section("log leaks", sep="=", red=True, bold=True)
            for hit in hits[:50]:
                reporter.write_line(hit)
            reporter.write_line(f"{len(hits)} leak(s) in {len(lines)} captured log line(s)")
    elif reporter is not None and lines:
        reporter.write_line(f"log scan: {len(lines)} line(s), no personal data or secret")
