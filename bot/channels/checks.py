"""What a channel's ``check()`` reports: the provider accepted our credentials, or why not.

``tocsin check`` calls each configured channel's cheapest authenticated request (none sends a
message) before an incident needs it. A reason names the provider's answer (an error code, an
HTTP status, an exception's class), never a credential, an address or a URL with a secret.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    """One line of ``tocsin check``: what was checked, whether it passed, and why."""

    name: str
    ok: bool
    reason: str


def failure_reason(exc: BaseException) -> str:
    """A short reason for a transport failure: the exception's class, never its text (an
    aiohttp error may quote the URL, and a Telegram URL holds the token)."""
    if isinstance(exc, TimeoutError):
        return "no answer (timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"cannot reach the provider ({type(exc).__name__})"
