"""A slow, obviously literal implementation of the original SWE algorithm, written from the spec.

`ReferenceSWE` follows ../shared/spec/swe-tokenizer.md step by step (§2.4 loading, §5 encoding, §7
decoding) with no caching or shortcuts; the tests compare modeling.tokenizer.SWEEncoder with it and the benchmark
measures against it.  The tests in this file check the reference itself on the spec's worked examples.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO.parent / "shared" / "reference"

# Spec §5.7 and §15: input -> ids with ja-swe36k.txt, clean=False.
WORKED_EXAMPLES = [
    ("今日は日曜焼き肉定食をたべる", [668, 30647, 4281, 31395, 30628, 32520, 12771, 30691, 18147, 30659]),
    ("吾輩は猫である🐯。", [34347, 31459, 30647, 31448, 25, 30659, 35729, 35676]),
    ("実は慶応(慶應)大学出身", [32417, 30647, 17750, 35589, 17750, 35590, 321, 1281]),
    ("武田信玄は", [8640, 25948, 30647]),
    ("織田信長は、", [10382, 9868, 30647, 35675]),
    ("甲斐なら武田と言うほど", [10923, 101, 8640, 30641, 32175, 7106, 30676]),
    ("ｱｲｳｴ", [30698, 30699, 30700, 30701]),
    ("こんにちは、世界。 \nこんばんは、㔺界。😀",
     [469, 1957, 30647, 35675, 271, 35676, 35716, 35715, 469, 2867, 30647, 35675, 271, 35676, 35726]),
    ("日本の東京", [77, 30646, 188]),
    ("きぃ キィ", [30405, 35716, 30519]),
    ("€ÿ", [35725, 35933, 35929]),
    ("a,b\tc\u3000d\u2014e\u2212f", [35645, 35593, 35646, 35717, 35647, 35716, 35648, 30769, 35649, 30769, 35650]),
    ("武田信玄は、<|inputmask|>時代ファンならぜひ押さえ<|inputmask|>きたい名将の一人。",
     [8640, 25948, 30647, 35675, 35994, 480, 30725, 35965, 35868, 35899, 30768, 101, 1857, 31832, 2843, 35994,
      237, 30623, 32916, 30830, 30646, 1187, 35676]),
    ("ファイル", [30725, 35965, 35868, 35899, 192]),
    ("〇", [35502]),
    ("ゐ", [34692]), ("ゑ", [33314]), ("ヴ", [34997]),
    ("ァ", [35965, 35868, 35899]),
    ("👨\u200d👩\u200d👧", [35733, 35725, 35733, 35725, 35733]),
    ("♂", [35735]), ("©", [35735]),
    ("している", [0, 9]),
    ("東京都千代田区", [188, 4090, 3582, 32562]),
    ("a<b", [35645, 35609, 35646]),
    ("<SP><|endoftext|>", [35716, 35999]),
]


def reference_dir() -> Path:
    """The shared reference data, or skip the calling test."""
    if not (REFERENCE_DIR / "ja-swe36k.txt").is_file():
        pytest.skip(f"reference vocabularies not found in {REFERENCE_DIR}")
    return REFERENCE_DIR


def read_reference_files(vocabulary: str = "ja-swe36k.txt") -> tuple[list[str], dict]:
    """Vocabulary lines and emoji table, read the way the original does."""
    folder = reference_dir()
    with open(folder / vocabulary, encoding="utf-8") as f:
        lines = f.read().split("\n")
    with open(folder / "emoji.json", encoding="utf-8") as f:
        emoji = json.load(f)
    return lines, emoji


NUMBER = r"(0|[1-9]\d*|[1-9]\d{0,2}(,\d{3})+)"
SUFFIX = r"(\d{1,2}|:|\d{1,2}時|\d{1,2}分|\(日\)|\(月\)|\(火\)|\(水\)|\(木\)|\(金\)|\(土\)|㈰|㈪|㈫|㈬|㈭|㈮|㈯)*"
ORIGINAL_PRICE = re.compile(
    rf"({NUMBER}*億)*({NUMBER}*万)*({NUMBER}*千)*{NUMBER}*"
    r"(千円|万円|千万円|円|千ドル|万ドル|千万ドル|ドル|千ユーロ|万ユーロ|千万ユーロ|ユーロ)+(\(税込\)|\(税抜\)|\+tax)*")


class ReferenceSWE:
    """The original algorithm, literally: no caches, every emoji key tried on every call."""

    def __init__(self, lines: list[str], emoji: dict):
        self.bpe = [[line] if line == "," else line.split(",") for line in lines]
        self.swe = {}
        for token_id, spellings in enumerate(self.bpe):
            for spelling in spellings:
                self.swe[spelling] = token_id
        self.maxlen = max(len(spelling) for spelling in self.swe)
        self.emoji = emoji
        self.clean_patterns = [
            (re.compile(r"(https?|ftp)(://[-_.!~*'()a-zA-Z0-9;/?:@&=+$,%#]+)"), "<URL>"),
            (re.compile(r"[A-Za-z0-9._+]*@[-_0-9A-Za-z]+(\.[A-Za-z]+)*"), "<EMAIL>"),
            (re.compile(r"[(]{0,1}[0-9]{2,4}[)\-(]{0,1}[0-9]{2,4}[)\-]{0,1}[0-9]{3,4}"), "<TEL>"),
            (re.compile(rf"([12]\d{{3}}[/\-年])*(0?[1-9]|1[0-2])[/\-月]((0?[1-9]|[12][0-9]|3[01])日?)*{SUFFIX}"),
             "<DATE>"),
            (re.compile(rf"(明治|大正|昭和|平成|令和|㍾|㍽|㍼|㍻|\u32ff)\d{{1,2}}年(0?[1-9]|1[0-2])月"
                        rf"(0?[1-9]|[12][0-9]|3[01])日{SUFFIX}"), "<DATE>"),
            (ORIGINAL_PRICE, "<PRICE>"),
        ]
        self.block_table = str.maketrans({chr(c): "<BLOCK>" for c in range(0x2500, 0x25A0)})

    def __len__(self) -> int:
        return len(self.bpe)

    def clean_text(self, text: str) -> str:
        for pattern, tag in self.clean_patterns:
            text = pattern.sub(tag, text)
        text = text.translate(self.block_table)
        while "<BLOCK><BLOCK>" in text:
            text = text.replace("<BLOCK><BLOCK>", "<BLOCK>")
        return text

    def encode(self, text: str, clean: bool = False) -> list[int]:
        text = text.replace(" ", "<SP>").replace("\u3000", "<SP>")
        text = text.replace("\r\n", "<BR>").replace("\n", "<BR>").replace("\r", "<BR>")
        text = text.replace("\t", "<TAB>").replace("\u2014", "ー").replace("\u2212", "ー")
        for key, tag in self.emoji["emoji"].items():
            if key in text:
                text = text.replace(key, tag)
        if clean:
            text = self.clean_text(text)
        result = []
        pos = 0
        while pos < len(text):
            end = min(len(text), pos + self.maxlen + 1) if text[pos] == "<" else pos + 3
            candidates = []
            for stop in range(end, pos, -1):
                word = text[pos:stop]
                if word in self.swe:
                    if word[0] == "<" and len(word) > 2:
                        candidates = [(self.swe[word], stop)]
                        break
                    candidates.append((self.swe[word], stop))
            if candidates:
                token_id, pos = min(candidates, key=lambda c: c[0])   # first minimum: longer on equal ids
                result.append(token_id)
                continue
            utf8 = text[pos].encode("utf-8")
            number = int.from_bytes(utf8, "big")
            if len(utf8) == 2 and (0xC2A1 <= number <= 0xC2BF or 0xC780 <= number <= 0xC783
                                   or 0xCAB9 <= number <= 0xCBBF or 0xCC80 <= number <= 0xCDA2):
                result.append(self.swe["<KIGOU>"])
            elif len(utf8) == 3 and 0xE28080 <= number <= 0xE2B07F:
                result.append(self.swe["<U2000U2BFF>"])
            else:
                result.extend(self.swe["<|byte%d|>" % byte] for byte in utf8)
            pos += 1
        return result

    def decode(self, ids: list[int], breakline: str = "\n") -> str:
        words, buffer = [], []
        for token_id in ids:
            word = self.bpe[token_id][0]
            if word[:6] == "<|byte" and word[-2:] == "|>":
                buffer.append(int(word[6:-2]))
                continue
            if buffer:
                words.append(bytearray(buffer).decode("utf-8", errors="replace"))
                buffer = []
            if word[:7] == "<|emoji" and word[-2:] == "|>":
                words.append(self.emoji["emoji_inv"][word])
            else:
                words.append({"<SP>": " ", "<BR>": breakline, "<TAB>": "\t", "<BLOCK>": "▀", "<KIGOU>": "ǀ",
                              "<U2000U2BFF>": "‖"}.get(word, word))
        if buffer:
            words.append(bytearray(buffer).decode("utf-8", errors="replace"))
        return "".join(words)


@pytest.fixture(scope="session")
def reference_encoder() -> ReferenceSWE:
    return ReferenceSWE(*read_reference_files())


@pytest.mark.parametrize("text,ids", WORKED_EXAMPLES)
def test_reference_reproduces_worked_examples(reference_encoder, text, ids):
    assert reference_encoder.encode(text) == ids


def test_reference_counts_match_spec(reference_encoder):
    assert len(reference_encoder) == 36000 and reference_encoder.maxlen == 15
    assert sum(len(group) for group in reference_encoder.bpe) == 181631
    assert len(reference_encoder.swe) == 181625
    assert reference_encoder.decode([35965, 35868, 35899, 35502]) == "ァ０"
