"""SMS text encoding: GSM 03.38 (7-bit) when every character fits, UCS-2 otherwise, and the
exact number of segments a text costs. Nothing here ever truncates a text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# The GSM 03.38 default alphabet in code order, 0x00 to 0x7F. 0x1B is the escape to the
# extension table, not a character a text may contain, so it is left out of the set below.
GSM_BASIC_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_BASIC = frozenset(GSM_BASIC_TABLE) - {"\x1b"}
# Characters of the extension table: each is sent as ESC + code, two septets.
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")

SINGLE_GSM7 = 160
PART_GSM7 = 153
SINGLE_UCS2 = 70
PART_UCS2 = 67

# Typographic punctuation that word processors and phones substitute for plain ASCII. One such
# character would push a whole French text from GSM-7 to UCS-2, more than doubling its cost,
# for no gain in meaning.
_PLAIN_PUNCTUATION = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u2026": "...",
        "\u00a0": " ",
        "\u202f": " ",
        "\u2009": " ",
        "\u2022": "-",
        "\u00b7": "-",
    }
)


@dataclass(frozen=True)
class SmsEncoding:
    """How a text goes over SMS: its encoding, its length in that encoding's units (septets for
    GSM-7, UTF-16 code units for UCS-2) and how many segments it is billed and sent as."""

    encoding: Literal["gsm7", "ucs2"]
    units: int
    segments: int


def sms_encoding(text: str) -> SmsEncoding:
    """Encoding, length and segment count of ``text`` as an SMS.

    Concatenated parts hold 153 septets or 67 UCS-2 units (the user data header takes the rest),
    and a part never splits an extension character's escape pair or a UTF-16 surrogate pair, so
    the count is exact where ``ceil(units / 153)`` can be one short. An empty text still costs
    one segment.
    """
    if all(char in _BASIC or char in GSM_EXTENSION for char in text):
        costs = [2 if char in GSM_EXTENSION else 1 for char in text]
        return SmsEncoding("gsm7", sum(costs), _segments(costs, SINGLE_GSM7, PART_GSM7))
    costs = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return SmsEncoding("ucs2", sum(costs), _segments(costs, SINGLE_UCS2, PART_UCS2))


def _segments(costs: Iterable[int], single: int, part: int) -> int:
    costs = list(costs)
    if sum(costs) <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part:
            parts, used = parts + 1, 0
        used += cost
    return parts


def plain_punctuation(text: str) -> str:
    """Replace typographic quotes, dashes, ellipses and non-breaking spaces with their plain
    equivalents, so that a text whose letters fit GSM-7 is not sent as UCS-2 because of them.
    Letters, accented or not, are left alone."""
    return text.translate(_PLAIN_PUNCTUATION)
