"""Logs never carry personal data or secrets: redaction, the JSON format, the suite-wide scan."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.logs import JsonFormatter, RedactingFilter, redact
from tests.log_capture import CaptureHandler, find_leaks

TELEGRAM_TOKEN = "123456789:AAHk-abcdefghijklmnopqrstuvwxyz01234"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (
            f"POST https://api.telegram.org/bot{TELEGRAM_TOKEN}/sendMessage failed",
            "POST https://api.telegram.org/bot<redacted>/sendMessage failed",
        ),
        ("Authorization: Bearer responder-token-0123456789", "Authorization: <redacted>"),
        (
            "slack said invalid_auth for xoxb-1234-5678-abcdef",
            "slack said invalid_auth for <redacted>",
        ),
        ("SMS to +33612345678 accepted", "SMS to +33 6•• •• •• 78 accepted"),
        ("SMS to +33 6 12 34 56 78 accepted", "SMS to +33 6•• •• •• 78 accepted"),
        ("550 <a.martin@example.org> unknown", "550 <a•••@example.org> unknown"),
        ("nothing personal in INC-2026-1129-01", "nothing personal in INC-2026-1129-01"),
    ],
)
def test_redact(raw: str, shown: str) -> None:
    assert redact(raw) == shown
    assert find_leaks([shown]) == []


@pytest.mark.parametrize(
    "line",
    [
        "SMS to +33612345678",
        "SMS to +44 20 7946 0958",
        "SMS to 0612345678",
        "SMS to 06 12 34 56 78",
        "SMS to 06.12.34.56.78",
        "SMS to 0033612345678",
        "GET /sms/kannel/inbound?from=%2B33612345678&text=OK",
        "mail to a.martin@example.org",
        f"GET /bot{TELEGRAM_TOKEN}/getMe",
        "token xoxb-1234-5678-abcdef",
        "Authorization: Bearer abcdefgh12345678",
    ],
)
def test_the_scan_finds_raw_personal_data_and_tokens(line: str) -> None:
    assert len(find_leaks([line])) == 1
    assert find_leaks([redact(line)]) == []


def test_a_deliberate_national_format_leak_fails_the_scan() -> None:
    # A line logged around the redaction (as a careless handler could) is caught.
    leaked = '{"message": "reply from 06 12 34 56 78: OK"}'
    assert find_leaks([leaked]) == [f"phone number: {leaked}"]
    handler = CaptureHandler()
    logger = logging.getLogger("tocsin.test-leak")
    logger.addHandler(handler)
    try:
        logger.warning("reply from %s", "0612345678")
    finally:
        logger.removeHandler(handler)
    # Through the production pipeline the same number comes out masked.
    assert find_leaks(handler.lines) == []
    assert "+33 6•• •• •• 78" in handler.lines[0]


def test_the_scan_finds_known_secrets_and_ignores_short_ones() -> None:
    line = '{"message": "login with press-token-0123456789"}'
    assert find_leaks([line], ["press-token-0123456789"]) == [f"test secret: {line}"]
    assert find_leaks(['{"message": "tocsin"}'], ["tocsin"]) == []


def test_timestamps_and_masked_values_are_not_leaks() -> None:
    lines = [
        '{"at": "2026-11-29T07:24:00.123456+00:00", "message": "ok"}',
        '{"message": "sent to +33 6•• •• •• 78 and a•••@example.org"}',
        '{"message": "delivery 12345678 of INC-2026-1129-01"}',
    ]
    assert find_leaks(lines) == []


def test_production_format_masks_arguments_and_exceptions() -> None:
    record = logging.LogRecord(
        "tocsin.worker",
        logging.ERROR,
        __file__,
        1,
        "sending to %s failed",
        ("+33612345678",),
        None,
    )
    try:
        raise RuntimeError("550 <a.martin@example.org>")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "sending to +33 6•• •• •• 78 failed"
    assert "a•••@example.org" in data["exception"]
    assert find_leaks([json.dumps(data, ensure_ascii=False)]) == []


def test_capture_leaves_the_record_to_other_handlers_untouched() -> None:
    handler = CaptureHandler()
    record = logging.LogRecord(
        "tocsin.sms", logging.INFO, __file__, 1, "reply from %s", ("+33612345678",), None
    )
    handler.emit(record)
    assert record.args == ("+33612345678",)
    (line,) = handler.lines
    assert json.loads(line)["message"] == "reply from +33 6•• •• •• 78"


async def test_http_client_errors_do_not_print_the_telegram_token() -> None:
    """aiohttp puts the request URL (with /bot<TOKEN>/) into its exception messages."""

    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({"ok": False}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_found)
    handler = CaptureHandler()
    logger = logging.getLogger("tocsin.test.telegram")
    logger.addHandler(handler)
    try:
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
            url = server.make_url(f"/bot{TELEGRAM_TOKEN}/getMe")
            try:
                async with session.get(url, raise_for_status=True):
                    pass
            except aiohttp.ClientResponseError:
                logger.exception("Telegram getMe failed")
    finally:
        logger.removeHandler(handler)
    (line,) = handler.lines
    assert "/bot<redacted>/getMe" in line
    assert TELEGRAM_TOKEN.split(":")[1] not in line
    assert find_leaks([line], [TELEGRAM_TOKEN]) == []
