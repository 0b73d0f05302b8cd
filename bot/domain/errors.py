"""Domain errors. Interfaces map them to exit codes and HTTP statuses."""

from __future__ import annotations

from typing import Any


class TocsinError(Exception):
    """Base of every error Tocsin raises on purpose."""


class InvalidInput(TocsinError):
    """Bad input from a user: nothing was changed (exit 2, HTTP 422)."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.detail = detail


class NotFound(TocsinError):
    """No such incident, statement or delivery (HTTP 404)."""


class Forbidden(TocsinError):
    """The actor lacks the role, or the four-eyes rule forbids it (HTTP 403)."""


class Conflict(TocsinError):
    """The change clashes with the current state (HTTP 409)."""


class DuplicateRequest(Conflict):
    """A request with an ``Idempotency-Key`` already used: nothing was changed again."""


class ChannelError(TocsinError):
    """A channel could not send; ``code`` is the provider's answer when there is one."""

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TransientError(ChannelError):
    """Worth retrying later: timeouts, resets, 5xx, rate limits.

    ``retry_after`` (seconds) is the provider's own wait when it gave one; ``scope`` says which
    rate-limit bucket it concerns: ``"destination"`` (this chat/channel only) or ``"provider"``.
    """

    def __init__(
        self,
        reason: str,
        code: str | None = None,
        retry_after: float | None = None,
        scope: str = "provider",
    ) -> None:
        super().__init__(reason, code)
        self.retry_after = retry_after
        self.scope = scope


class PermanentError(ChannelError):
    """Will never work as it is (unknown chat, bad number, auth refused): fail and fail over."""


class UnknownOutcome(ChannelError):
    """The provider may or may not have accepted the message (timeout on a non-idempotent API)."""
