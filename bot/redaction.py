"""Secrets that must never reach a log or a stored error: bot tokens and bearer credentials.

One set of patterns for the log filter (``bot.logs``) and the adapters that quote provider
errors (aiohttp's errors quote the URL, and Telegram's URLs carry the bot token).
"""

from __future__ import annotations

import re

# Telegram's /bot<TOKEN>/method: everything after /bot up to the next path separator.
_TOKEN_IN_URL = re.compile(r"/bot[^/\s'\"]+")
# Slack tokens (xoxb-…, xoxp-…) and HTTP bearer credentials.
_SECRETS = re.compile(r"(xox[abpr]-[\w-]+|(?i:bearer)\s+[\w.~+/-]+=*)")

REDACTED = "<redacted>"


def redact_secrets(text: str) -> str:
    """``text`` with bot tokens in URLs, Slack tokens and bearer credentials masked."""
    text = _TOKEN_IN_URL.sub("/bot" + REDACTED, text)
    return _SECRETS.sub(REDACTED, text)
