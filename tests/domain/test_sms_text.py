"""SMS encoding and segment counts, checked against GSM 03.38 and the concatenation rules."""

from __future__ import annotations

import pytest

from bot.domain.sms_text import GSM_BASIC_TABLE, SmsEncoding, plain_punctuation, sms_encoding

EMOJI = "\U0001f6a8"  # 🚨, outside the BMP: a UTF-16 surrogate pair


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", SmsEncoding("gsm7", 0, 1), id="empty still costs one"),
        pytest.param("Orbis est en panne", SmsEncoding("gsm7", 18, 1), id="ascii"),
        # extension table: ESC + code, two septets each
        pytest.param("€", SmsEncoding("gsm7", 2, 1), id="euro"),
        pytest.param("[]{}^~|\\\f€", SmsEncoding("gsm7", 20, 1), id="every extension char"),
        pytest.param("a" * 159 + "€", SmsEncoding("gsm7", 161, 2), id="extension pushes past 160"),
        # French: é è à ù Ç are in the basic set; ê â î ô û ë ï œ and lowercase ç are not
        pytest.param(
            "Procédures dégradées à appliquer, Ça continue",
            SmsEncoding("gsm7", 45, 1),
            id="french in the basic set",
        ),
        pytest.param("Il faut être prêt", SmsEncoding("ucs2", 17, 1), id="french with ê"),
        pytest.param("à l'hôpital", SmsEncoding("ucs2", 11, 1), id="french with ô"),
        pytest.param("ça marche", SmsEncoding("ucs2", 9, 1), id="lowercase ç is not GSM"),
        pytest.param("cœur", SmsEncoding("ucs2", 4, 1), id="œ"),
        pytest.param("l\u2019AP-HP", SmsEncoding("ucs2", 7, 1), id="typographic apostrophe"),
        # emoji: two UTF-16 units each
        pytest.param(EMOJI, SmsEncoding("ucs2", 2, 1), id="one emoji"),
        pytest.param(EMOJI * 35, SmsEncoding("ucs2", 70, 1), id="35 emoji fill one part"),
        pytest.param(EMOJI * 36, SmsEncoding("ucs2", 72, 2), id="36 emoji need two"),
        # boundaries: 160 / 153 septets, 70 / 67 units
        pytest.param("a" * 160, SmsEncoding("gsm7", 160, 1), id="gsm 160"),
        pytest.param("a" * 161, SmsEncoding("gsm7", 161, 2), id="gsm 161"),
        pytest.param("a" * 306, SmsEncoding("gsm7", 306, 2), id="gsm 306"),
        pytest.param("a" * 307, SmsEncoding("gsm7", 307, 3), id="gsm 307"),
        pytest.param("ê" * 70, SmsEncoding("ucs2", 70, 1), id="ucs2 70"),
        pytest.param("ê" * 71, SmsEncoding("ucs2", 71, 2), id="ucs2 71"),
        pytest.param("ê" * 134, SmsEncoding("ucs2", 134, 2), id="ucs2 134"),
        pytest.param("ê" * 135, SmsEncoding("ucs2", 135, 3), id="ucs2 135"),
        # a part never splits an escape pair or a surrogate pair: 306 septets, yet 3 parts
        pytest.param(
            "a" * 152 + "€" + "a" * 152, SmsEncoding("gsm7", 306, 3), id="escape pair not split"
        ),
        pytest.param(
            "ê" * 66 + EMOJI + "ê" * 66, SmsEncoding("ucs2", 134, 3), id="surrogate pair not split"
        ),
    ],
)
def test_sms_encoding(text: str, expected: SmsEncoding) -> None:
    assert sms_encoding(text) == expected


def test_every_basic_character_is_one_septet() -> None:
    assert len(GSM_BASIC_TABLE) == 128
    basic = GSM_BASIC_TABLE.replace("\x1b", "")
    assert sms_encoding(basic) == SmsEncoding("gsm7", 127, 1)


def test_escape_character_itself_is_not_gsm_text() -> None:
    assert sms_encoding("\x1b").encoding == "ucs2"


def test_plain_punctuation_keeps_a_french_text_in_gsm7() -> None:
    typed = "L\u2019AP-HP \u2014 \u00ab Orbis \u00bb indisponible\u2026\u00a0OK"

    plain = plain_punctuation(typed)

    assert plain == 'L\'AP-HP - " Orbis " indisponible... OK'
    assert sms_encoding(typed).encoding == "ucs2"
    assert sms_encoding(plain).encoding == "gsm7"


def test_plain_punctuation_leaves_letters_alone() -> None:
    assert plain_punctuation("être à l'hôpital, ça va") == "être à l'hôpital, ça va"
