"""clean_text: the rewritten PRICE expression matches exactly the spans of the original one, but fast."""

from __future__ import annotations

import random
import re
import time

import pytest

from modeling.tokenizer import DATE_RE, PRICE_RE, SPECIAL_TAIL, TEL_RE, clean_text
from test_tokenizer_reference import ORIGINAL_PRICE, ReferenceSWE

PRICE_ALPHABET = list("0123456789１０,,,億万千円円ドルユーロ(税込抜)+taxx") + ["ドル", "ユーロ", "(税込)", "+tax", "千円"]


def test_price_matches_original_on_random_strings():
    rng = random.Random(11)
    for _ in range(20000):
        text = "".join(rng.choice(PRICE_ALPHABET) for _ in range(rng.randrange(1, 14)))
        assert PRICE_RE.sub("<PRICE>", text) == ORIGINAL_PRICE.sub("<PRICE>", text), text


@pytest.mark.parametrize("text", ["1,000円", "12,345,678円", "1,0000円", "0１5円", "x1億２万円", "3億5000万円(税込)",
                                  "1千万円", "千千円", "1,234,56円", "1234,567円", "円高", "１０００円", "100ドル+tax"])
def test_price_examples_match_original(text):
    assert PRICE_RE.sub("<PRICE>", text) == ORIGINAL_PRICE.sub("<PRICE>", text)


DATE_ALPHABET = list("0123456789/-()年月日時分:㈰㈯x") + ["(土)", "(日)", "12", "2022", "1999年", "03-"]


def test_tel_and_date_match_original_on_random_strings():
    """TEL and DATE take their first character with a class and re-read it; the spans are the original's."""
    reference = ReferenceSWE(list(SPECIAL_TAIL), {"emoji": {}, "emoji_inv": {}})
    (tel, _), (date, _) = reference.clean_patterns[2:4]
    rng = random.Random(13)
    for _ in range(20000):
        text = "".join(rng.choice(DATE_ALPHABET) for _ in range(rng.randrange(1, 16)))
        assert TEL_RE.sub("<TEL>", text) == tel.sub("<TEL>", text), text
        assert DATE_RE.sub("<DATE>", text) == date.sub("<DATE>", text), text


CLEAN_PIECES = PRICE_ALPHABET + list("@.-_abcXYZ/:年月日時分 ") + [
    "http://a.jp/x?y=1", "a.b+c@mail.example.jp", "@tanreinama", "<SP>", "<BR>", "03-1234-5678", "2022年1月15日(土)",
    "平成30年1月2日", "3/4", "┏━┓", "█", "ドル(税抜)", "日本"]


def test_clean_text_matches_original_on_random_texts():
    """All rules together, on long texts (e-mail and price are only looked for near '@' and a currency unit)."""
    reference = ReferenceSWE(list(SPECIAL_TAIL), {"emoji": {}, "emoji_inv": {}})
    rng = random.Random(12)
    for _ in range(300):
        text = "".join(rng.choice(CLEAN_PIECES) for _ in range(rng.randrange(1, 80)))
        text = re.sub(r"([\d,]{8})(?=[\d,])", r"\1x", text)   # the original PRICE expression is exponential
        assert clean_text(text) == reference.clean_text(text), text


def test_long_digit_runs_stay_fast():
    text = ("1" * 5000 + "x ") * 3 + "100円"
    start = time.perf_counter()
    assert clean_text(text).endswith("<PRICE>")
    assert time.perf_counter() - start < 2.0
