"""Phone numbers: E.164 normalisation and masking for display."""

from __future__ import annotations

import phonenumbers


def normalise_phone(raw: str, region: str = "FR") -> str:
    """``06 12 34 56 78`` (region FR) → ``+33612345678``; ValueError when not a valid number."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
