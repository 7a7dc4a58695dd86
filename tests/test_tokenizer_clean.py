"""clean_text: the rewritten PRICE expression matches exactly the spans of the original one, but fast."""

from __future__ import annotations

import random
import time

import pytest

from modeling.tokenizer import PRICE_RE, clean_text
from test_tokenizer_reference import ORIGINAL_PRICE

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


def test_long_digit_runs_stay_fast():
    text = ("1" * 5000 + "x ") * 3 + "100円"
    start = time.perf_counter()
    assert clean_text(text).endswith("<PRICE>")
    assert time.perf_counter() - start < 2.0
