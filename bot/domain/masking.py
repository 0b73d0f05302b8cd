"""Masking of personal data (phone numbers, e-mail addresses) wherever it is shown or logged.

Phone numbers are found with libphonenumber's matcher, so that every way a number is written
is caught, not only E.164: ``+33 6 12 34 56 78``, the national ``06 12 34 56 78`` or
``0612345678`` (read in the organisation's region), ``0033612345678``, and the URL-encoded
``%2B33612345678`` of a query string. Webhook URLs are shown as ``https://host/…``: their
path is the secret.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import phonenumbers

from bot.domain.channel_facts import facts_for
from bot.domain.models import ChannelName

_EMAIL = re.compile(r"(?<![\w.+-])([\w.+-])[\w.+-]*@([\w-]+(?:\.[\w-]+)+)")
# A run that may hold a number: digits with the separators people and URLs use.
# Not inside a word or an identifier (``press-token-0123456789``, ``INC-…``).
_CANDIDATE = re.compile(r"(?<![\w\-+%])(?:\+|%2[Bb])?\d(?:[\d \-.()/]|%2[0Bb]){6,24}\d(?![\w\-])")
_URL = re.compile(r"\b(https?)://([^/\s?#]+)[^\s\"'<>]*")
_DIGITS = re.compile(r"\d")

# The region national numbers are read in (the organisation's; set once at start-up).
_REGION = {"value": "FR"}


def set_region(region: str) -> None:
    """Read national numbers (``06 12 34 56 78``) as numbers of ``region`` from now on."""
    _REGION["value"] = region.upper()


def mask_email(address: str) -> str:
    """``a.martin@example.org`` → ``a•••@example.org``."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}•••@{domain}" if domain else "•••"


def _masked(number: phonenumbers.PhoneNumber) -> str:
    national = str(number.national_number)
    if number.country_code == 33 and len(national) == 9:
        return f"+33 {national[0]}•• •• •• {national[-2:]}"
    if len(national) < 4:
        return f"+{number.country_code} •••"
    return f"+{number.country_code} {national[0]}{'•' * (len(national) - 3)} {national[-2:]}"


def mask_phone(number: str, region: str | None = None) -> str:
    """``+33612345678`` → ``+33 6•• •• •• 78``: country code (whatever its length), first
    digit and last two of the national number kept; parsed, so ``06…`` and ``0033…`` too."""
    try:
        parsed = phonenumbers.parse(unquote(number), region or _REGION["value"])
    except phonenumbers.NumberParseException:
        return "•••"
    return _masked(parsed)


def mask_url(url: str) -> str:
    """``https://hooks.example.org/services/T0/B0/secret`` → ``https://hooks.example.org/…``."""
    found = _URL.match(url.strip())
    if found is None:
        return "•••"
    return f"{found.group(1)}://{found.group(2).rpartition('@')[2]}/…"


def mask_address(channel: ChannelName | str, address: str, *, personal: bool) -> str:
    """Mask an address as its channel declares: a member's phone or e-mail, and every webhook
    URL; list addresses, chat and channel ids are shown as is. An address of a channel no
    longer registered is not shown."""
    try:
        facts = facts_for(channel)
    except LookupError:
        return "•••"
    if facts.mask is None or not (personal or facts.mask_always):
        return address
    return facts.mask(address)


def _mask_phones(text: str, region: str) -> str:
    def one(candidate: re.Match[str]) -> str:
        raw = candidate.group(0)
        if len(_DIGITS.findall(raw)) < 8:
            return raw
        decoded = unquote(raw)
        pieces: list[str] = []
        last = 0
        for match in phonenumbers.PhoneNumberMatcher(
            decoded, region, leniency=phonenumbers.Leniency.POSSIBLE
        ):
            pieces += [decoded[last : match.start], _masked(match.number)]
            last = match.end
        if not pieces:
            return raw
        return "".join([*pieces, decoded[last:]])

    return _CANDIDATE.sub(one, text)


def scrub(text: str, region: str | None = None) -> str:
    """Mask every e-mail address and phone number (any format) in free text (for logs)."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}•••@{m.group(2)}", text)
    return _mask_phones(text, region or _REGION["value"])


def scrub_provider_error(text: str) -> str:
    """A provider's error text as it may be stored and shown to viewers: phone numbers and
    e-mail addresses masked, URLs cut to their host."""
    return scrub(_URL.sub(lambda m: mask_url(m.group(0)), text))
