"""Masking of personal data (phone numbers, e-mail addresses) wherever it is shown or logged."""

from __future__ import annotations

import re

from bot.domain.models import ChannelName

_EMAIL = re.compile(r"(?<![\w.+-])([\w.+-])[\w.+-]*@([\w-]+(?:\.[\w-]+)+)")
_PHONE = re.compile(r"(?<![\w/])\+\d[\d \-.]{7,16}\d")


def mask_email(address: str) -> str:
    """``a.martin@example.org`` → ``a•••@example.org``."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}•••@{domain}" if domain else "•••"


def mask_phone(number: str) -> str:
    """``+33612345678`` → ``+33 6•• •• •• 78`` (country code, first digit and last two kept)."""
    digits = re.sub(r"\D", "", number)
    if number.startswith("+33") and len(digits) == 11:
        return f"+33 {digits[2]}•• •• •• {digits[-2:]}"
    if len(digits) < 6:
        return "•••"
    return f"+{digits[:2]} {digits[2]}{'•' * (len(digits) - 5)} {digits[-2:]}"


def mask_address(channel: ChannelName | str, address: str, *, personal: bool) -> str:
    """Mask a member's phone or e-mail; list addresses, chat and channel ids are shown as is."""
    if not personal:
        return address
    if channel == ChannelName.SMS:
        return mask_phone(address)
    if channel == ChannelName.EMAIL:
        return mask_email(address)
    return address


def scrub(text: str) -> str:
    """Mask every e-mail address and international phone number in free text (for logs)."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}•••@{m.group(2)}", text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)
