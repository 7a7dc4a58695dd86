"""SWE tokenizer of GPTSAN: exact and fast encoder/decoder, vocabulary and emoji-table builders, command line.

The encoder reproduces the ids of the original ``SWEEncoder_ja`` for any vocabulary in the original format
(``../shared/spec/swe-tokenizer.md``): fixed pre-substitutions, emoji keys in file order, optional
``clean`` tags, then greedy tokenisation where the *lowest id* among the 1- to 3-character candidates wins
and special tags starting with ``<`` are matched longest first.

Files and compatibility:

* ``ja-swe36k.txt`` and ``emoji.json`` at the top of this repository are our own, built by this module
  (``build-vocab`` and ``build-emoji``).  Their ids differ from the original's.
* The released GPTSAN-2.8B weights need the ORIGINAL ``ja-swe36k.txt`` and ``emoji.json`` (from
  tanreinama/GPTSAN, MIT licence): the model loader prefers the files found in the model directory, and
  ``--vocabulary`` / ``--emoji`` override them.  Using our files with the released weights gives garbage.

Command line::

    python encode_swe.py encode [--vocabulary V] [--emoji E] [--clean] [--jsonl] [FILE...]
    python encode_swe.py decode [--vocabulary V] [--emoji E] [--jsonl] [FILE...]
    python encode_swe.py stats  [--vocabulary V] [--emoji E] [--clean] [FILE...]
    python encode_swe.py build-vocab --input FILE... --size N --output FILE
    python encode_swe.py build-emoji --output FILE
    python encode_swe.py records --input FILE... --output DIR --mode lm|mlm|hybrid [...]

This module must not import TensorFlow: it is imported by data tools that should start quickly.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import os
import re
import sys
import tempfile
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

REPO_DIR = Path(__file__).resolve().parent
DEFAULT_VOCABULARY = REPO_DIR / "ja-swe36k.txt"
DEFAULT_EMOJI = REPO_DIR / "emoji.json"

# ----------------------------------------------------------------------------------------------------------
# Special tokens (spec §3.4).  The tail of a GPTSAN vocabulary is exactly SPECIAL_TAIL, in this order, so
# that the end-relative ids V-7 ... V-1 used by GPTSAN's scripts hold.
# ----------------------------------------------------------------------------------------------------------
MARKER_TOKENS = ("<BR>", "<SP>", "<TAB>", "<URL>", "<EMAIL>", "<TEL>", "<DATE>", "<PRICE>", "<BLOCK>",
                 "<KIGOU>", "<U2000U2BFF>")
EMOJI_TAGS = tuple(f"<|emoji{n}|>" for n in range(1, 13))
BYTE_TAGS = tuple(f"<|byte{n}|>" for n in range(255))
GPTSAN_TAGS = ("<|startoftext|>", "<|inputmask|>", "<|separator|>", "<|nottoken|>", "<|bagoftoken|>",
               "<|segmenter|>", "<|endoftext|>")
SPECIAL_TAIL = MARKER_TOKENS + EMOJI_TAGS + BYTE_TAGS + GPTSAN_TAGS
REQUIRED_TOKENS = MARKER_TOKENS + BYTE_TAGS + ("<|endoftext|>",)

# Names for the special tokens, as used by the model and record code.
SPECIAL_NAMES = {
    "start": "<|startoftext|>", "mask": "<|inputmask|>", "separator": "<|separator|>",
    "not_token": "<|nottoken|>", "bag": "<|bagoftoken|>", "segmenter": "<|segmenter|>",
    "end_of_text": "<|endoftext|>", "newline": "<BR>", "space": "<SP>", "tab": "<TAB>",
}

# Always applied, in this order, by plain string replacement (spec §5.1).
PRE_SUBSTITUTIONS = ((" ", "<SP>"), ("\u3000", "<SP>"), ("\r\n", "<BR>"), ("\n", "<BR>"), ("\r", "<BR>"),
                     ("\t", "<TAB>"), ("\u2014", "\u30fc"), ("\u2212", "\u30fc"))

# Decoded forms of the marker tokens (spec §7); <BR> decodes to the `breakline` argument.
MARKER_TEXT = {"<SP>": " ", "<TAB>": "\t", "<BLOCK>": "\u2580", "<KIGOU>": "\u01c0", "<U2000U2BFF>": "\u2016"}

BYTE_TAG_RE = re.compile(r"<\|byte(\d{1,3})\|>")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_BYTE_RUN_RE = re.compile("[\udc00-\udd00]+")   # byte tokens (U+DC00 + byte) and empty pieces while decoding
_EMPTY_PIECE = "\udd00"                         # keeps byte runs apart across a token that decodes to ""
_WINDOW_CACHE_LIMIT = 2_000_000


class TokenizerError(ValueError):
    """Bad input (vocabulary, emoji table, text or ids), with a one-line message meant for the user."""


# ----------------------------------------------------------------------------------------------------------
# clean_text (spec §5.3): the regular expressions of the original, except PRICE, which is rewritten so that
# it cannot backtrack exponentially on long digit runs while matching exactly the same spans (see
# _price_pattern and the property test in tests/test_tokenizer_clean.py).  The leading lookaheads only state
# which character a match starts with, so the scan skips other positions quickly.
# ----------------------------------------------------------------------------------------------------------
_WEEKDAY_SUFFIX = r"(?:\d{1,2}|:|\d{1,2}時|\d{1,2}分|\(日\)|\(月\)|\(火\)|\(水\)|\(木\)|\(金\)|\(土\)|㈰|㈪|㈫|㈬|㈭|㈮|㈯)*"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_DAY = r"(?:0?[1-9]|[12][0-9]|3[01])"
CURRENCY_UNITS = ("千円", "万円", "千万円", "円", "千ドル", "万ドル", "千万ドル", "ドル", "千ユーロ", "万ユーロ",
                  "千万ユーロ", "ユーロ")
_TAX_SUFFIX = r"(?:\(税込\)|\(税抜\)|\+tax)"
URL_RE = re.compile(r"(?:https?|ftp)://[-_.!~*'()a-zA-Z0-9;/?:@&=+$,%#]+")
EMAIL_RE = re.compile(r"[A-Za-z0-9._+]*@[-_0-9A-Za-z]+(?:\.[A-Za-z]+)*")
TEL_RE = re.compile(r"(?=[(0-9])\(?[0-9]{2,4}[)\-(]?[0-9]{2,4}[)\-]?[0-9]{3,4}")
DATE_RE = re.compile(rf"(?=[0-9])(?:[12]\d{{3}}[/\-年])*{_MONTH}[/\-月](?:{_DAY}日?)*{_WEEKDAY_SUFFIX}")
ERA_DATE_RE = re.compile(rf"(?:明治|大正|昭和|平成|令和|㍾|㍽|㍼|㍻|\u32ff)\d{{1,2}}年{_MONTH}月{_DAY}日{_WEEKDAY_SUFFIX}")
BLOCK_CHARS = "".join(map(chr, range(0x2500, 0x25A0)))   # box drawing U+2500-257F and blocks U+2580-259F
BLOCK_TABLE = str.maketrans(dict.fromkeys(BLOCK_CHARS, "<BLOCK>"))
BLOCK_CHAR_RE = re.compile("[\u2500-\u259f]")
BLOCK_RUN_RE = re.compile(r"(?:<BLOCK>){2,}")


def _price_pattern() -> re.Pattern:
    """PRICE: ((N)*億)*((N)*万)*((N)*千)*(N)*(unit)+(tax)* with N = 0|[1-9]\\d*|[1-9]\\d{0,2}(,\\d{3})+.

    In the original every (N)* can only be followed by a non-digit, non-comma character, so it either takes
    the whole run of digits and commas in front of it (when the run is a concatenation of numbers) or fails;
    the groups before the unit never profit from backtracking.  The run is therefore taken possessively and
    checked by an unambiguous expression for "concatenation of numbers": without commas 0*([1-9]\\d*)?;
    with commas, a head ending in [1-9]\\d{0,2} before the first comma, then ,ddd groups, each optionally
    followed by another head, the last one by 0*([1-9]\\d*)?.
    """
    plain = r"0*+(?:[1-9]\d*+)?"
    head = r"0*+[1-9]\d*+(?:(?<=[1-9])|(?<=[1-9]\d)|(?<=[1-9]\d\d))"
    numbers = rf"(?:{plain}|{head}(?:,\d{{3}}(?:{head})?)*,\d{{3}}{plain})(?![\d,])"
    run = rf"(?={numbers})[\d,]*+"
    units = "|".join(CURRENCY_UNITS)
    return re.compile(rf"(?=[\d,億万千円ドユ])(?:{run}億)*+(?:{run}万)*+(?:{run}千)*+{run}(?:{units})++{_TAX_SUFFIX}*+")


PRICE_RE = _price_pattern()


def clean_text(text: str) -> str:
    """Replace URLs, e-mail addresses, phone numbers, dates, prices and box drawing by tags (spec §5.3)."""
    if "://" in text:
        text = URL_RE.sub("<URL>", text)
    if "@" in text:
        text = EMAIL_RE.sub("<EMAIL>", text)
    text = TEL_RE.sub("<TEL>", text)
    text = DATE_RE.sub("<DATE>", text)
    text = ERA_DATE_RE.sub("<DATE>", text)
    if "円" in text or "ドル" in text or "ユーロ" in text:
        text = PRICE_RE.sub("<PRICE>", text)
    if BLOCK_CHAR_RE.search(text):
        text = BLOCK_RUN_RE.sub("<BLOCK>", text.translate(BLOCK_TABLE))
    return text


# ----------------------------------------------------------------------------------------------------------
# Reading and checking the data files
# ----------------------------------------------------------------------------------------------------------
def decode_utf8(data: bytes, where: str) -> str:
    """Decode strictly, naming the file and byte offset of the first invalid byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TokenizerError(f"{where} is not valid UTF-8 (byte offset {error.start}); convert it to UTF-8"
                             ) from None


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """Read a whole UTF-8 file, turning I/O problems into one-line errors."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise TokenizerError(f"cannot read {what} {path}: {error.strerror}; check the path") from None
    return decode_utf8(data, f"{what} {path}")


def split_vocabulary_line(line: str) -> list[str]:
    """Variant spellings of one id; a line that is exactly one comma is the token for ','."""
    return [line] if line == "," else line.split(",")


def parse_vocabulary(text: str, where: str = "vocabulary") -> list[str]:
    """Split a vocabulary file into its lines (line number = id) and reject malformed files.

    Line ends are read like the original's text-mode open (CRLF and CR count as LF).
    """
    if not text:
        raise TokenizerError(f"{where} is empty; pass a vocabulary file such as ja-swe36k.txt")
    if text.startswith("\ufeff"):
        raise TokenizerError(f"{where} starts with a byte-order mark; save it as UTF-8 without BOM")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        raise TokenizerError(f"{where} ends with a newline, which would add an empty id {len(lines) - 1}; "
                             "remove the trailing newline")
    if "" in lines:
        raise TokenizerError(f"{where} has an empty line (id {lines.index('')}); remove it")
    return lines


def check_special_tokens(lines: Sequence[str], where: str = "vocabulary") -> None:
    """Every marker, byte tag and <|endoftext|> must be present, and no special token may repeat."""
    seen: dict[str, int] = {}
    specials = set(SPECIAL_TAIL)
    for token_id, line in enumerate(lines):
        if line in specials or BYTE_TAG_RE.fullmatch(line) or line.startswith("<|emoji"):
            if line in seen:
                raise TokenizerError(f"{where} repeats the special token {line} (ids {seen[line]} and "
                                     f"{token_id}); keep one")
            seen[line] = token_id
    for token in REQUIRED_TOKENS:
        if token not in seen:
            raise TokenizerError(f"{where} lacks the special token {token}; its special tail must be laid out "
                                 "as in the original (see build-vocab)")


def parse_emoji_table(table: object, where: str = "emoji table") -> dict[str, dict[str, str]]:
    """Check the shape {"emoji": {key: tag}, "emoji_inv": {tag: text}} of emoji.json."""
    if not isinstance(table, dict) or not isinstance(table.get("emoji"), dict) \
            or not isinstance(table.get("emoji_inv"), dict):
        raise TokenizerError(f"{where} must be a JSON object with the objects \"emoji\" and \"emoji_inv\"")
    for section in ("emoji", "emoji_inv"):
        for key, value in table[section].items():
            if not key or not isinstance(value, str):
                raise TokenizerError(f"{where}: \"{section}\" maps {key!r} to {value!r}; keys must be non-empty "
                                     "and values strings")
    for key, tag in table["emoji"].items():
        if tag not in table["emoji_inv"]:
            raise TokenizerError(f"{where}: key {key!r} maps to {tag}, which has no entry in \"emoji_inv\"")
    return {"emoji": dict(table["emoji"]), "emoji_inv": dict(table["emoji_inv"])}


def read_emoji_file(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Load and check an emoji.json file."""
    text = read_text_file(path, "emoji file")
    try:
        table = json.loads(text)
    except json.JSONDecodeError as error:
        raise TokenizerError(f"emoji file {path} is not JSON ({error.msg}, line {error.lineno}); "
                             "pass a file in the format of emoji.json") from None
    return parse_emoji_table(table, f"emoji file {path}")


# ----------------------------------------------------------------------------------------------------------
# Emoji step (spec §5.2): keys replaced in file order.  Only keys that occur in the text, plus the few keys
# that a replacement could create (they overlap a category tag), are looked at, which gives the same result
# as trying all 4,314 keys on every call.
# ----------------------------------------------------------------------------------------------------------
def _creatable_keys(keys: Sequence[str], tags: Iterable[str]) -> frozenset[int]:
    """Indices of keys that a replacement could create: an occurrence overlapping an inserted tag.

    Such a key lies inside a tag, contains one, starts with a tag's end (so contains '>') or ends with a
    tag's start (so contains '<').
    """
    tags = set(tags)
    inside = {tag[i:j] for tag in tags for i in range(len(tag)) for j in range(i + 1, len(tag) + 1)}
    heads = {tag[:i] for tag in tags for i in range(1, len(tag))}
    tails = {tag[i:] for tag in tags for i in range(1, len(tag))}

    def creatable(key: str) -> bool:
        if key in inside:
            return True
        return any(key[:i + 1] in tails for i, c in enumerate(key) if c == ">") or \
            any(key[i:] in heads or any(key.startswith(tag, i) for tag in tags) for i, c in enumerate(key) if c == "<")

    return frozenset(index for index, key in enumerate(keys) if creatable(key))


class EmojiReplacer:
    """Applies the emoji table exactly like the original loop over all keys, without scanning all keys."""

    def __init__(self, emoji: Mapping[str, str]):
        self.items = list(emoji.items())
        self.key_chars = [frozenset(key) for key, _tag in self.items]
        self.by_first: dict[str, list[int]] = collections.defaultdict(list)
        for index, (key, _tag) in enumerate(self.items):
            self.by_first[key[0]].append(index)
        self.first_chars = frozenset(self.by_first)
        self.created_by_replacement = _creatable_keys([key for key, _ in self.items], emoji.values())

    def keys_in(self, text: str) -> list[int]:
        """Indices of the keys occurring in `text` (only keys whose characters all occur are searched)."""
        chars = set(text)
        return [index for char in self.first_chars.intersection(chars) for index in self.by_first[char]
                if self.key_chars[index] <= chars and self.items[index][0] in text]

    def __call__(self, text: str) -> str:
        present = self.keys_in(text)
        if not present:
            return text
        for index in sorted(self.created_by_replacement.union(present)):
            key, tag = self.items[index]
            if key in text:
                text = text.replace(key, tag)
        return text


# ----------------------------------------------------------------------------------------------------------
# The encoder
# ----------------------------------------------------------------------------------------------------------
class SWEEncoder:
    """GPTSAN's SWE tokenizer: same ids as the original ``SWEEncoder_ja`` for the same files.

    ``encode`` caches the decision taken for each 3-character window (it depends on nothing else unless
    the window starts with ``<``), so ordinary text costs about one dictionary lookup per token.
    """

    def __init__(self, vocabulary: Sequence[str], emoji: Mapping[str, Mapping[str, str]],
                 where: str = "vocabulary"):
        self.bpe = [split_vocabulary_line(line) for line in vocabulary]
        check_special_tokens(vocabulary, where)
        self.swe: dict[str, int] = {}
        for token_id, spellings in enumerate(self.bpe):
            for spelling in spellings:
                self.swe[spelling] = token_id
        self.maxlen = max(map(len, self.swe))
        self.emoji = {"emoji": dict(emoji["emoji"]), "emoji_inv": dict(emoji["emoji_inv"])}
        missing = [g[0] for g in self.bpe if _is_emoji_tag(g[0]) and g[0] not in self.emoji["emoji_inv"]]
        if missing:
            raise TokenizerError(f"the emoji table has no \"emoji_inv\" entry for {missing[0]} of the {where}; "
                                 "use the emoji.json that belongs to this vocabulary")
        self._replace_emoji = EmojiReplacer(self.emoji["emoji"])
        self._tags_by_prefix, self._short_tags = self._index_tags()
        self._window: dict[str, int] = {}      # window -> id * 4 + characters consumed
        self._fallback: dict[str, tuple[int, ...]] = {}
        self._decode_tables: dict[str, list[str]] = {}
        self.byte_ids = tuple(self.swe[tag] for tag in BYTE_TAGS)

    @classmethod
    def from_files(cls, vocabulary: str | os.PathLike | None = None,
                   emoji: str | os.PathLike | None = None) -> "SWEEncoder":
        """Load a vocabulary file and an emoji.json (defaults: the files at the top of this repository)."""
        vocabulary = DEFAULT_VOCABULARY if vocabulary is None else vocabulary
        emoji = DEFAULT_EMOJI if emoji is None else emoji
        where = f"vocabulary {vocabulary}"
        lines = parse_vocabulary(read_text_file(vocabulary, "vocabulary"), where)
        return cls(lines, read_emoji_file(emoji), where)

    # -- sizes and special tokens ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.bpe)

    @property
    def vocab_size(self) -> int:
        """Number of ids (lines of the vocabulary file)."""
        return len(self.bpe)

    def token_id(self, token: str) -> int:
        """Id of a token given by its text (e.g. ``<|segmenter|>``); the later line wins, as when encoding."""
        try:
            return self.swe[token]
        except KeyError:
            raise TokenizerError(f"the vocabulary has no token {token}") from None

    def special_id(self, name: str) -> int:
        """Id of a special token by name: start, mask, separator, not_token, bag, segmenter, end_of_text, ..."""
        if name not in SPECIAL_NAMES:
            raise KeyError(f"unknown special token name {name!r}; known: {', '.join(SPECIAL_NAMES)}")
        return self.token_id(SPECIAL_NAMES[name])

    @property
    def last_token_id(self) -> int:
        """GPTSAN's LAST_TOKEN: id of <|byte0|> minus one (<|emoji12|> in ja-swe36k)."""
        return self.byte_ids[0] - 1

    def check_gptsan_layout(self) -> None:
        """Raise unless the seven GPTSAN specials sit at V-7 ... V-1, where GPTSAN's code expects them."""
        size = len(self)
        for offset, token in enumerate(GPTSAN_TAGS, start=size - len(GPTSAN_TAGS)):
            if self.bpe[offset][0] != token:
                raise TokenizerError(f"the vocabulary does not end with the GPTSAN special tokens (id {offset} is "
                                     f"{self.bpe[offset][0]!r}, expected {token}); use a GPTSAN vocabulary")

    # -- encoding ----------------------------------------------------------------------------------------
    def prepare(self, text: str, clean: bool = False) -> str:
        """The text the tokenisation loop sees: pre-substitutions, emoji tags, optional clean tags."""
        for old, new in PRE_SUBSTITUTIONS:
            text = text.replace(old, new)
        text = self._replace_emoji(text)
        return clean_text(text) if clean else text

    def encode(self, text: str, clean: bool = False) -> list[int]:
        """Token ids of `text`; `clean` replaces URLs, dates, prices, ... by tags first."""
        return self._tokenize(self.prepare(text, clean), text)

    def encode_batch(self, texts: Iterable[str], clean: bool = False) -> list[list[int]]:
        """``encode`` for each text (e.g. one call per line, as GPTSAN's record writer does)."""
        return [self._tokenize(self.prepare(text, clean), text) for text in texts]

    def _tokenize(self, text: str, original: str, unknown: collections.Counter | None = None) -> list[int]:
        ids: list[int] = []
        append = ids.append
        lookup = self._window.get
        position, end = 0, len(text)
        while position < end:
            step = lookup(text[position:position + 3])
            if step is None:
                position = self._slow_step(text, position, ids, original, unknown)
            else:
                append(step >> 2)
                position += step & 3
        return ids

    def _slow_step(self, text: str, position: int, ids: list[int], original: str,
                   unknown: collections.Counter | None) -> int:
        """Tags, uncached windows and out-of-vocabulary characters; returns the next position."""
        window = text[position:position + 3]
        if window[0] == "<":
            tag = self._match_tag(text, position)
            if tag is not None:
                ids.append(self.swe[tag])
                return position + len(tag)
        choice = self._choose(window)
        if choice is None:
            char = window[0]
            ids.extend(self._fallback_ids(char, original))
            if unknown is not None:
                unknown[char] += 1
            return position + 1
        token_id, length = choice
        if window[0] != "<":
            if len(self._window) >= _WINDOW_CACHE_LIMIT:
                self._window.clear()
            self._window[window] = token_id * 4 + length
        ids.append(token_id)
        return position + length

    def _choose(self, window: str) -> tuple[int, int] | None:
        """Lowest id among the prefixes of `window` in the vocabulary (the longer one on equal ids)."""
        best = None
        for length in range(len(window), 0, -1):
            token_id = self.swe.get(window[:length])
            if token_id is not None and (best is None or token_id < best[0]):
                best = (token_id, length)
        return best

    def _index_tags(self) -> tuple[dict[str, tuple[int, ...]], frozenset[str]]:
        """Surfaces starting with '<' and longer than 2 characters, indexed by their first 4 characters."""
        lengths: dict[str, set[int]] = collections.defaultdict(set)
        short = set()
        for surface in self.swe:
            if surface.startswith("<") and len(surface) > 2:
                if len(surface) == 3:
                    short.add(surface)
                else:
                    lengths[surface[:4]].add(len(surface))
        return {prefix: tuple(sorted(ls, reverse=True)) for prefix, ls in lengths.items()}, frozenset(short)

    def _match_tag(self, text: str, position: int) -> str | None:
        """Longest special tag at `position` (spec §5.5)."""
        for length in self._tags_by_prefix.get(text[position:position + 4], ()):
            candidate = text[position:position + length]
            if len(candidate) == length and candidate in self.swe:
                return candidate
        candidate = text[position:position + 3]
        return candidate if candidate in self._short_tags else None

    def _fallback_ids(self, char: str, original: str) -> tuple[int, ...]:
        """<KIGOU>, <U2000U2BFF> or UTF-8 byte tokens for a character without candidates (spec §5.6)."""
        ids = self._fallback.get(char)
        if ids is None:
            code = ord(char)
            if 0xD800 <= code <= 0xDFFF:
                where = _SURROGATE_RE.search(original)
                at = f" at character {where.start()}" if where else ""
                raise TokenizerError(f"the text contains a lone surrogate U+{code:04X}{at}, which has no UTF-8 "
                                     "form; repair the text (e.g. decode it with errors='replace')")
            if 0xA1 <= code <= 0xBF or 0x1C0 <= code <= 0x1C3 or 0x2B9 <= code <= 0x362:
                ids = (self.swe["<KIGOU>"],)
            elif 0x2000 <= code <= 0x2BFF:
                ids = (self.swe["<U2000U2BFF>"],)
            else:
                ids = tuple(self.byte_ids[byte] for byte in char.encode("utf-8"))   # never 0xFF
            self._fallback[char] = ids
        return ids

    # -- decoding ----------------------------------------------------------------------------------------
    def _decode_table(self, breakline: str) -> list[str]:
        table = self._decode_tables.get(breakline)
        if table is None:
            table = []
            for spellings in self.bpe:
                word = spellings[0]
                byte = BYTE_TAG_RE.fullmatch(word)
                if byte and int(byte.group(1)) <= 255:
                    piece = chr(0xDC00 + int(byte.group(1)))
                elif _is_emoji_tag(word):
                    piece = self.emoji["emoji_inv"][word]
                elif word == "<BR>":
                    piece = breakline
                else:
                    piece = MARKER_TEXT.get(word, word)
                table.append(piece or _EMPTY_PIECE)
            self._decode_tables[breakline] = table
        return table

    def decode(self, ids: Sequence[int], breakline: str = "\n") -> str:
        """Text of `ids`: canonical spellings, byte tokens reassembled as UTF-8 (invalid bytes -> U+FFFD)."""
        if len(ids) and (min(ids) < 0 or max(ids) >= len(self.bpe)):
            index, bad = next((i, t) for i, t in enumerate(ids) if not 0 <= t < len(self.bpe))
            raise TokenizerError(f"token id {bad} at position {index} is out of range 0..{len(self.bpe) - 1}; "
                                 "use the vocabulary the ids were made with")
        text = "".join(map(self._decode_table(breakline).__getitem__, ids))
        if _BYTE_RUN_RE.search(text):
            text = _BYTE_RUN_RE.sub(_decode_byte_run, text)
        return text

    def decode_batch(self, batch: Iterable[Sequence[int]], breakline: str = "\n") -> list[str]:
        """``decode`` for each id sequence."""
        return [self.decode(ids, breakline) for ids in batch]

    # -- inspection ----------------------------------------------------------------------------------------
    def unknown_characters(self, text: str, clean: bool = False) -> collections.Counter:
        """Characters of `text` that fall back to <KIGOU>, <U2000U2BFF> or byte tokens, with counts."""
        unknown: collections.Counter = collections.Counter()
        self._tokenize(self.prepare(text, clean), text, unknown)
        return unknown

    def dead_ids(self) -> list[int]:
        """Ids that no text produces: no spelling of the id encodes, on its own, to exactly that id (spec §6)."""
        return [token_id for token_id, spellings in enumerate(self.bpe)
                if not any(self.encode(spelling) == [token_id] for spelling in spellings)]


def _is_emoji_tag(word: str) -> bool:
    """How the original's decoder recognises an emoji category token."""
    return word.startswith("<|emoji") and word.endswith("|>")


def _decode_byte_run(match: re.Match) -> str:
    """UTF-8 decoding of consecutive byte tokens, as the original's byte buffer (errors -> U+FFFD)."""
    parts = match.group().split(_EMPTY_PIECE)
    return "".join(bytes(ord(c) - 0xDC00 for c in part).decode("utf-8", "replace") for part in parts)


# ----------------------------------------------------------------------------------------------------------
# Building an emoji table (build-emoji): 12 categories in the layout of the original emoji.json, derived
# from Unicode character names, plus kaomoji written for this project.  Keys are stored longest first so
# that, applied in file order, a sequence (skin tone, keycap, flag, VS16 form) wins over its parts.
# ----------------------------------------------------------------------------------------------------------
EMOJI_BLOCKS = ((0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F7E0, 0x1F7EB),
                (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF), (0x1F191, 0x1F19A))
# Emoji among the older symbol blocks; text symbols used in Japanese prose (☆★♪→○…) are deliberately absent.
EMOJI_SYMBOLS = ("☀☁☂☃☄☎☔☕☘☝☠☢☣☦☪☮☯☸☹☺♈♉♊♋♌♍♎♏♐♑♒♓♠♣♥♦♨♻♿⚓⚔⚕⚖⚗⚙⚛⚜⚠⚡⚰⚱⚽⚾⛄⛅⛈⛎⛏⛑⛓⛔⛩⛪⛰⛱"
                 "⛲⛳⛴⛵⛷⛸⛹⛺⛽✂✅✈✉✊✋✌✍✏✒✔✖✝✡✨✳✴❄❇❌❎❓❔❕❗❣❤➕➖➗➡➰➿⤴⤵⬅⬆⬇⬛⬜⭐⭕")
SKIN_TONES = tuple(map(chr, range(0x1F3FB, 0x1F400)))
FLAG_COUNTRIES = ("JP US GB FR DE IT ES PT NL BE CH AT SE NO DK FI IS IE PL CZ HU GR TR RU UA CN KR TW HK MO "
                  "SG MY TH VN PH ID IN PK BD LK NP MN AU NZ CA MX BR AR CL PE CO VE CU ZA EG NG KE MA SA AE "
                  "QA IL IR IQ").split()
KAOMOJI = ("(^_^)", "(^^)", "(^o^)", "(^-^)", "(*^_^*)", "(*^^*)", "(^_^)v", "(^_-)", "(^_^;)", "(^^;",
           "(^^;)", "(-_-)", "(-_-;)", "(-_-)zzz", "(T_T)", "(T-T)", "(;_;)", "(;o;)", "(>_<)", "(>_<;)",
           "(*_*)", "(@_@)", "(+_+)", "(=_=)", "(~_~)", "(o^^o)", "(^▽^)", "(≧▽≦)", "(・∀・)", "(´・ω・`)",
           "(´；ω；`)", "(*´ω`*)", "(｀・ω・´)", "(´∀｀)", "(´ー`)", "(￣▽￣)", "(￣ー￣)", "(・_・;)", "(゜o゜)",
           "(=^・^=)", "ヽ(^o^)丿", "\\(^o^)/", "m(__)m", "(^ω^)", "(*'▽')")
EMOJI_REPRESENTATIVES = ("😊", "😡", "🎉", "🐶", "🇯🇵", "🍣", "👕", "👍", "💕", "🆗", "🌸", "(^^)")
_PEOPLE_WORDS = frozenset(
    "HAND HANDS FINGER FINGERS THUMBS FIST PERSON MAN WOMAN MEN WOMEN BOY GIRL BABY CHILD ADULT OLDER PRINCE "
    "PRINCESS FAMILY COUPLE GUARDSMAN DETECTIVE WORKER POLICE ANGEL SANTA MERPERSON MERMAID MERMAN ELF FAIRY "
    "VAMPIRE ZOMBIE GENIE MAGE SUPERHERO SUPERVILLAIN NINJA PEOPLE RUNNER PEDESTRIAN DANCER DANCING MUSCLE "
    "FOOT EYE TONGUE MOUTH LIPS BRAIN NAIL SELFIE CLAPPING WAVING PREGNANT BREAST-FEEDING "
    "BRIDE GROOM TUXEDO CROWN".split())
_ANIMAL_WORDS = frozenset(
    "CAT DOG MOUSE RAT COW OX TIGER RABBIT DRAGON SNAKE HORSE SHEEP RAM GOAT MONKEY ROOSTER CHICKEN BIRD "
    "CHICK PENGUIN FROG BEAR PANDA KOALA PIG BOAR WHALE DOLPHIN FISH OCTOPUS SNAIL BUG ANT HONEYBEE BEETLE "
    "SPIDER SCORPION TURTLE LIZARD CROCODILE LEOPARD ELEPHANT CAMEL GIRAFFE ZEBRA DEER BAT WOLF FOX LION "
    "UNICORN EAGLE DUCK OWL SHARK BUTTERFLY CRAB SHRIMP SQUID LOBSTER HEDGEHOG HIPPOPOTAMUS RHINOCEROS "
    "GORILLA ORANGUTAN SLOTH OTTER SKUNK KANGAROO BADGER SWAN PEACOCK PARROT FLAMINGO MOSQUITO MICROBE DODO "
    "MAMMOTH BISON BEAVER SEAL FLY WORM COCKROACH POODLE LLAMA RACCOON SAUROPOD T-REX CRICKET TURKEY DOVE "
    "PAW".split())
_SMILE_WORDS = frozenset("SMILING SMILE GRINNING GRIN LAUGHING JOY WINKING SMIRKING STAR-STRUCK HALO "
                         "UPSIDE-DOWN ROLLING SAVOURING".split())
_SICK_WORDS = frozenset("ANGRY POUTING SYMBOLS THERMOMETER BANDAGE NAUSEATED VOMITING SNEEZING HOT COLD WOOZY "
                        "DIZZY EXPLODING MASK STEAM SKULL IMP OGRE GOBLIN CURSING".split())
_LOVE_WORDS = frozenset("HEART HEARTS KISS KISSING LOVE".split())
_EVENT_WORDS = frozenset(
    "BALL TROPHY MEDAL PARTY CONFETTI FIREWORKS SPARKLER BALLOON WRAPPED RIBBON TICKET TICKETS CHRISTMAS "
    "JACK-O-LANTERN BOWLING GOLF TENNIS SKI SKIER SNOWBOARDER SURFER SWIMMER FENCER WRESTLERS JUGGLING "
    "BADMINTON HOCKEY BOXING MARTIAL GOAL DART YO-YO KITE PINATA GAME DIE TANABATA DECORATION CHEQUERED "
    "FISHING SPORTS CAROUSEL CIRCUS PERFORMING CLAPPER".split())
_PLACE_WORDS = frozenset(
    "GLOBE EARTH MOUNTAIN VOLCANO BEACH DESERT ISLAND BUILDING HOUSE CASTLE TOWER STATION CAR AUTOMOBILE BUS "
    "TRAIN RAILWAY TRAM AIRPLANE SHIP BOAT ROCKET SUN MOON STAR CLOUD RAIN SNOWFLAKE SNOWMAN TREE FLOWER "
    "BLOSSOM LEAF LEAVES RAINBOW WATER WAVE FIRE DROPLET TORNADO FOG UMBRELLA CYCLONE BRIDGE CITYSCAPE "
    "SUNRISE SUNSET NIGHT HOTEL OFFICE HOSPITAL BANK SCHOOL CHURCH MOSQUE TEMPLE SHRINE FOUNTAIN TENT "
    "BICYCLE MOTORCYCLE TAXI TRUCK HELICOPTER SAILBOAT CANOE ANCHOR FUEL SEEDLING HERB CACTUS PALM TULIP "
    "ROSE SUNFLOWER HIBISCUS MUSHROOM COMET ZAP".split())
_SIGN_WORDS = frozenset("SYMBOL SIGN ARROW ARROWS SQUARED SQUARE CIRCLE BUTTON KEYCAP MARK NEGATIVE "
                        "DIAMOND TRIANGLE".split())


def _emoji_category(char: str) -> int:
    """Category 1-11 of one emoji code point, from its Unicode name (12 is kaomoji)."""
    code = ord(char)
    words = set(unicodedata.name(char, "").replace(" WITH ", " ").split())
    food = 0x1F32D <= code <= 0x1F32F or 0x1F345 <= code <= 0x1F37F or 0x1F950 <= code <= 0x1F96F \
        or 0x1F9C0 <= code <= 0x1F9CB or 0x1FAD0 <= code <= 0x1FADF or char == "☕"
    if "FACE" in words and not words & _ANIMAL_WORDS and "CLOCK" not in words:
        return 1 if words & _SMILE_WORDS else 2 if words & _SICK_WORDS else 9
    rules = ((food, 6), (words & _ANIMAL_WORDS, 4), ("FLAG" in words and "MAILBOX" not in words, 5),
             (words & _PEOPLE_WORDS, 8), (words & _LOVE_WORDS, 9), (words & _SICK_WORDS, 2),
             (words & _EVENT_WORDS, 3), (words & _PLACE_WORDS, 11),
             (words & _SIGN_WORDS or 0x1F7E0 <= code <= 0x1F7EB, 10))
    return next((category for matched, category in rules if matched), 7)


def build_emoji_table() -> dict[str, dict[str, str]]:
    """Our emoji.json: {"emoji": {key: "<|emojiN|>"}, "emoji_inv": {"<|emojiN|>": representative}}."""
    chars = [chr(c) for low, high in EMOJI_BLOCKS for c in range(low, high + 1)
             if unicodedata.name(chr(c), None) and not 0x1F3FB <= c <= 0x1F3FF]
    chars += EMOJI_SYMBOLS
    category = {char: _emoji_category(char) for char in chars}
    keys = dict(category)
    for char, cat in category.items():
        keys[char + "\ufe0f"] = cat
        if cat == 8:
            keys.update((char + tone, cat) for tone in SKIN_TONES)
    keys.update((c + "\ufe0f\u20e3", 10) for c in "0123456789#*")
    keys.update((c + "\u20e3", 10) for c in "0123456789#*")
    keys.update(("".join(chr(0x1F1E6 + ord(letter) - ord("A")) for letter in country), 5)
                for country in FLAG_COUNTRIES)
    keys.update((kaomoji, 12) for kaomoji in KAOMOJI)
    ordered = sorted(keys, key=lambda key: (-len(key), key))
    emoji = {key: EMOJI_TAGS[keys[key] - 1] for key in ordered}
    inverse = {}
    for tag, representative in zip(EMOJI_TAGS, EMOJI_REPRESENTATIVES):
        members = [key for key in ordered if emoji[key] == tag]
        inverse[tag] = representative if representative in members else min(members, key=len)
    return {"emoji": emoji, "emoji_inv": inverse}


def emoji_table_json(table: Mapping) -> str:
    """ASCII-escaped JSON, as the original emoji.json."""
    return json.dumps(table, ensure_ascii=True)


# ----------------------------------------------------------------------------------------------------------
# Building a vocabulary (build-vocab).  Layout as the original: multi-character tokens, single characters,
# then SPECIAL_TAIL.  A 3-character token is always placed before its 2-character prefix, so no id is dead.
# ----------------------------------------------------------------------------------------------------------
KANJI_CLASS = "々〆〇\u3400-\u4dbf\u4e00-\u9fff\U00020000-\U0003134f"
HIRAGANA_CLASS = "\u3041-\u3096\u309d\u309e"
KATAKANA_CLASS = "\u30a1-\u30fa\u30fc-\u30fe\u31f0-\u31ff"
SCRIPT_RUN_RES = ((re.compile(f"[{KANJI_CLASS}]{{2,}}"), (2,)),
                  (re.compile(f"[{HIRAGANA_CLASS}]{{2,}}"), (2, 3)),
                  (re.compile(f"[{KATAKANA_CLASS}]{{2,}}"), (2, 3)))
NOT_TOKENS = frozenset(" \u3000\t\n\r\u2014\u2212\ufeff")   # removed by the pre-substitutions
MAX_COUNTED_NGRAMS = 8_000_000


def count_corpus(paths: Sequence[str | os.PathLike], progress: bool | None = None
                 ) -> tuple[collections.Counter, collections.Counter]:
    """Streaming counts of script-bounded 2/3-grams and of characters over UTF-8 files.

    Memory stays bounded: when the n-gram table grows past MAX_COUNTED_NGRAMS, the rarest entries are
    dropped (they could not have been selected anyway on a corpus that large).
    """
    from tqdm import tqdm

    ngrams: collections.Counter = collections.Counter()
    chars: collections.Counter = collections.Counter()
    sizes = []
    for path in paths:
        try:
            sizes.append(os.path.getsize(path))
        except OSError as error:
            raise TokenizerError(f"cannot read corpus file {path}: {error.strerror}; check the path") from None
    disable = None if progress is None else not progress   # None: a bar only on a terminal
    with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="counting", disable=disable) as bar:
        for path in paths:
            for line in _read_lines(path):
                chars.update(line)
                for pattern, lengths in SCRIPT_RUN_RES:
                    for run in pattern.findall(line):
                        for length in lengths:
                            ngrams.update(run[i:i + length] for i in range(len(run) - length + 1))
                bar.update(len(line.encode("utf-8")))
                if len(ngrams) > MAX_COUNTED_NGRAMS:
                    _drop_rarest(ngrams)
    return ngrams, chars


def _read_lines(path: str | os.PathLike) -> Iterator[str]:
    """Lines of a UTF-8 file; an invalid byte is reported with the file name and byte offset."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise TokenizerError(f"corpus file {path} is not valid UTF-8 (byte offset "
                                     f"{offset + error.start}); convert it to UTF-8") from None
            offset += len(raw)


def _drop_rarest(counts: collections.Counter) -> None:
    """Keep the most frequent half of the entries."""
    threshold = heapq.nlargest(len(counts) // 2, counts.values())[-1]
    for key in [key for key, count in counts.items() if count <= threshold]:
        del counts[key]


def _jis_characters() -> list[str]:
    """Every character of JIS X 0208 and JIS X 0213 (planes 1 and 2), from Python's Shift_JIS-2004 codec."""
    chars = []
    for lead in [*range(0x81, 0xA0), *range(0xE0, 0xFD)]:
        for trail in [*range(0x40, 0x7F), *range(0x80, 0xFD)]:
            try:
                text = bytes((lead, trail)).decode("shift_jis_2004")
            except UnicodeDecodeError:
                continue
            if len(text) == 1:
                chars.append(text)
    return chars


def _is_kanji(char: str) -> bool:
    return unicodedata.name(char, "").startswith("CJK UNIFIED IDEOGRAPH") or char in "々〆〇"


ENCLOSED_ALPHANUMERICS = ((0x2460, 0x24FF), (0x2776, 0x2793), (0x1F100, 0x1F1E5))
VARIANT_SOURCES = ENCLOSED_ALPHANUMERICS + ((0x2E80, 0x2FDF), (0x3200, 0x33FF), (0xF900, 0xFAFF),
                                            (0xFF61, 0xFFEF), (0x1F200, 0x1F2FF), (0x2F800, 0x2FA1F))


def _variant_of(char: str) -> str | None:
    """The character `char` is a variant of, derived from Unicode compatibility mappings (NFKC).

    Circled, parenthesised and full-stop digits and letters stand for the full-width character (as in the
    original); compatibility ideographs, radicals, half-width kana and enclosed ideographs for their
    one-character NFKC form.  Full-width ASCII keeps its own id, as in the original.
    """
    folded = unicodedata.normalize("NFKC", char)
    if folded == char or 0xFF01 <= ord(char) <= 0xFF5E:
        return None
    if any(low <= ord(char) <= high for low, high in ENCLOSED_ALPHANUMERICS):
        folded = folded.strip("().,")
        return chr(ord(folded) + 0xFEE0) if len(folded) == 1 and folded.isascii() and folded.isalnum() else None
    folded = folded.strip("()") if len(folded) == 3 else folded
    if len(folded) == 1 and not folded.isascii() and unicodedata.category(folded)[0] in "LNPS":
        return folded
    return None


def _kana_spellings(kana: str) -> list[str]:
    """Other spellings of a kana string: half-width katakana, decomposed and spacing voicing marks."""
    spellings = [unicodedata.normalize("NFD", kana)]
    spellings.append(spellings[0].replace("\u3099", "\u309b").replace("\u309a", "\u309c"))
    if all("\u30a0" <= c <= "\u30ff" for c in kana):
        spellings.append("".join(_HALF_WIDTH.get(c, c) for c in spellings[0]))
    return [s for s in spellings if s != kana and len(s) <= 3]


_HALF_WIDTH = {unicodedata.normalize("NFKC", chr(c)): chr(c) for c in range(0xFF66, 0xFFA0)}
_HALF_WIDTH.update({"\u3099": "\uff9e", "\u309a": "\uff9f"})


class VocabularyLayout:
    """Collects lines and their variant spellings, never using one spelling twice."""

    def __init__(self, forbidden: Iterable[str]):
        self.lines: list[list[str]] = []
        self.used: set[str] = set(forbidden)

    def add(self, canonical: str, variants: Iterable[str] = ()) -> bool:
        if canonical in self.used:
            return False
        self.used.add(canonical)
        members = [canonical]
        for variant in variants:
            if variant not in self.used and "," not in variant:
                self.used.add(variant)
                members.append(variant)
        self.lines.append(members)
        return True


def _is_single_token(char: str, emoji_keys: set[str]) -> bool:
    """A character that may have its own line: printable, not removed by pre-substitution, not an emoji."""
    return unicodedata.category(char)[0] not in "CZM" and char not in NOT_TOKENS and char not in emoji_keys


def single_characters(char_counts: Mapping[str, int], min_count: int, emoji_keys: set[str]
                      ) -> tuple[list[str], dict[str, list[str]]]:
    """Single-character lines in id order, and the variant spellings of each.

    JIS X 0208/0213 characters, ASCII, full-width forms, all kana and corpus characters seen `min_count`
    times; voiced kana come first so that spellings with a separate voicing mark (か゛, ｶﾞ, か + U+3099)
    beat the unvoiced character and reach their id.
    """
    candidates = set(_jis_characters()) | {c for c, n in char_counts.items() if n >= min_count}
    candidates.update(map(chr, [*range(0x21, 0x7F), *range(0xFF01, 0xFF5F), *range(0x3041, 0x3097),
                                *range(0x30A1, 0x30FB), *range(0x31F0, 0x3200)]))
    candidates.update(chr(c) for low, high in VARIANT_SOURCES for c in range(low, high + 1))
    variants: dict[str, list[str]] = collections.defaultdict(list)
    singles = set()
    for char in sorted(candidates):
        target = _variant_of(char)
        if target is not None and _is_single_token(target, emoji_keys):
            variants[target].append(char)
            singles.add(target)
        elif target is None and unicodedata.name(char, None) and _is_single_token(char, emoji_keys):
            singles.add(char)
    singles -= {v for members in variants.values() for v in members}
    voiced = sorted(c for c in singles if not _is_kanji(c) and unicodedata.normalize("NFD", c) != c
                    and unicodedata.normalize("NFD", c)[-1] in "\u3099\u309a")
    others = sorted(singles.difference(voiced), key=lambda c: (not _is_kanji(c), -char_counts.get(c, 0), c))
    for char in voiced:
        variants[char] += _kana_spellings(char)
    return voiced + others, variants


def rank_multi_character_tokens(ngrams: Mapping[str, int], count: int) -> list[str]:
    """The `count` most useful n-grams, ordered by frequency but each 3-character token before its prefix.

    Usefulness is occurrences x characters saved; placing abc before ab makes the lowest-id rule act as a
    longest match, so every selected token can be produced.
    """
    useful = [(n * (len(gram) - 1), gram) for gram, n in ngrams.items()]
    chosen = [gram for _score, gram in heapq.nlargest(count, useful)]
    score = {gram: ngrams[gram] for gram in chosen}
    key = dict(score)
    for gram in chosen:
        if len(gram) == 3 and gram[:2] in key:
            key[gram[:2]] = min(key[gram[:2]], score[gram])
    return sorted(chosen, key=lambda gram: (-key[gram], -len(gram), gram))


def build_vocabulary(paths: Sequence[str | os.PathLike], size: int, emoji: Mapping[str, Mapping[str, str]],
                     min_count: int = 3, progress: bool | None = None) -> list[str]:
    """Vocabulary lines (id = line number) from a UTF-8 corpus, in the original's format and layout."""
    ngrams, char_counts = count_corpus(paths, progress)
    emoji_keys = set(emoji["emoji"])
    singles, variants = single_characters(char_counts, min_count, emoji_keys)
    budget = size - len(singles) - len(SPECIAL_TAIL)
    if budget < 0:
        raise TokenizerError(f"--size {size} is too small: the single characters and special tokens alone need "
                             f"{len(singles) + len(SPECIAL_TAIL)} ids")
    usable = {gram: n for gram, n in ngrams.items() if not emoji_keys.intersection(gram)}
    multi = rank_multi_character_tokens(usable, budget)
    if len(multi) < budget:
        raise TokenizerError(f"the corpus yields only {len(multi)} multi-character tokens but --size {size} "
                             f"needs {budget}; use a larger corpus or a smaller --size")
    layout = VocabularyLayout(forbidden=SPECIAL_TAIL)
    for gram in multi:
        layout.add(gram, _token_spellings(gram, variants))
    for char in singles:
        layout.add(char, variants.get(char, ()) if char != "," else ())
    return [",".join(members) for members in layout.lines] + list(SPECIAL_TAIL)


def _token_spellings(gram: str, variants: Mapping[str, list[str]], limit: int = 16) -> list[str]:
    """Variant spellings of a multi-character token: kana forms, and ideograph variants per character."""
    if not _is_kanji(gram[0]):
        return _kana_spellings(gram)
    options = [[c] + [v for v in variants.get(c, ()) if len(v) == 1] for c in gram]
    spellings = [a + b for a in options[0] for b in options[1]] if len(gram) == 2 else []
    return spellings[1:limit]


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def write_output(path: str | None, text: str, overwrite: bool) -> None:
    """Write to stdout, or atomically to `path` (temporary file, then rename); never replace silently."""
    if path is None:
        sys.stdout.write(text)
        return
    check_output_path(path, overwrite)
    target = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_output_path(path: str, overwrite: bool) -> None:
    """Fail early, before any work, if the output exists or its folder does not."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise TokenizerError(f"output file {path} already exists; pass --overwrite to replace it")
    if not target.resolve().parent.is_dir():
        raise TokenizerError(f"the folder of output file {path} does not exist; create it first")


def read_inputs(files: Sequence[str]) -> list[tuple[str, str]]:
    """(name, text) of each input file, or of stdin when no file is given."""
    if not files:
        return [("<stdin>", decode_utf8(sys.stdin.buffer.read(), "standard input"))]
    return [(name, read_text_file(name, "input file")) for name in files]


def json_lines(inputs: Sequence[tuple[str, str]], expected: type, what: str) -> Iterator[object]:
    """Values of JSON-lines inputs, each checked to be of type `expected`; blank lines are skipped."""
    for name, text in inputs:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise TokenizerError(f"{name} line {number} is not JSON ({error.msg}); each line must be {what}"
                                     ) from None
            if not isinstance(value, expected):
                raise TokenizerError(f"{name} line {number} is not {what}")
            yield value


def id_list(value: object, where: str) -> list[int]:
    """Check a decoded JSON value is a list of integers."""
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise TokenizerError(f"{where} is not a JSON list of integer token ids")
    return value


def load_encoder(args: argparse.Namespace) -> SWEEncoder:
    return SWEEncoder.from_files(args.vocabulary, args.emoji)


def command_encode(args: argparse.Namespace) -> None:
    """encode: one JSON id list for the whole input, or one per JSON-string line with --jsonl."""
    if args.output:
        check_output_path(args.output, args.overwrite)
    encoder, inputs = load_encoder(args), read_inputs(args.files)
    if args.jsonl:
        texts = json_lines(inputs, str, "a JSON string")
        out = "".join(json.dumps(encoder.encode(text, args.clean)) + "\n" for text in texts)
    else:
        out = json.dumps(encoder.encode("".join(text for _name, text in inputs), args.clean)) + "\n"
    write_output(args.output, out, args.overwrite)


def command_decode(args: argparse.Namespace) -> None:
    """decode: a JSON id list to text, or JSON id-list lines to JSON-string lines with --jsonl."""
    if args.output:
        check_output_path(args.output, args.overwrite)
    encoder, inputs = load_encoder(args), read_inputs(args.files)
    if args.jsonl:
        batches = json_lines(inputs, list, "a JSON list of token ids")
        out = "".join(json.dumps(encoder.decode(id_list(ids, "a line")), ensure_ascii=False) + "\n"
                      for ids in batches)
    else:
        ids: list[int] = []
        for name, text in inputs:
            try:
                ids += id_list(json.loads(text), name)
            except json.JSONDecodeError as error:
                raise TokenizerError(f"{name} is not JSON ({error.msg}, line {error.lineno}); pass the output "
                                     "of 'encode'") from None
        out = encoder.decode(ids)
    write_output(args.output, out, args.overwrite)


def command_stats(args: argparse.Namespace) -> None:
    """stats: characters per token, byte-fallback rate and unknown characters of the input."""
    encoder, inputs = load_encoder(args), read_inputs(args.files)
    text = "".join(text for _name, text in inputs)
    ids = encoder.encode(text, args.clean)
    unknown = encoder.unknown_characters(text, args.clean)
    byte_ids = set(encoder.byte_ids)
    byte_tokens = sum(1 for token_id in ids if token_id in byte_ids)
    print(f"characters        {len(text)}")
    print(f"tokens            {len(ids)}")
    print(f"chars per token   {len(text) / max(len(ids), 1):.3f}")
    print(f"byte tokens       {byte_tokens} ({100 * byte_tokens / max(len(ids), 1):.2f} %)")
    print(f"unknown chars     {sum(unknown.values())} ({len(unknown)} distinct)")
    for char, count in unknown.most_common(args.top):
        print(f"  U+{ord(char):04X} {char!r:8} {count}")


def command_build_vocab(args: argparse.Namespace) -> None:
    """build-vocab: a vocabulary in the original format from a UTF-8 corpus; reports dead ids."""
    check_output_path(args.output, args.overwrite)
    emoji = read_emoji_file(args.emoji)
    lines = build_vocabulary(args.input, args.size, emoji, min_count=args.min_count)
    encoder = SWEEncoder(lines, emoji, where=f"built vocabulary {args.output}")
    dead = encoder.dead_ids()
    if dead:
        raise TokenizerError(f"{len(dead)} dead ids (first: {dead[:5]}); this is a bug in build-vocab")
    write_output(args.output, "\n".join(lines), args.overwrite)
    spellings = sum(len(split_vocabulary_line(line)) for line in lines)
    print(f"wrote {args.output}: {len(lines)} ids, {spellings} spellings, 0 dead ids", file=sys.stderr)


def command_build_emoji(args: argparse.Namespace) -> None:
    """build-emoji: our emoji.json, derived from Unicode names plus our kaomoji."""
    check_output_path(args.output, args.overwrite)
    table = build_emoji_table()
    write_output(args.output, emoji_table_json(table), args.overwrite)
    print(f"wrote {args.output}: {len(table['emoji'])} keys in {len(table['emoji_inv'])} categories",
          file=sys.stderr)


def command_records(args: argparse.Namespace) -> None:
    """records: text files (or a filename,fileid CSV) -> sharded TFRecord training files (modeling/records.py)."""
    from modeling import records  # noqa: PLC0415  (imports TensorFlow only when it touches files)
    from modeling.cli import UserError  # noqa: PLC0415

    options = records.RecordOptions(mode=args.mode, num_context=args.num_context, hybrid_rate=args.hybrid_rate,
                                    num_mask=args.num_mask, max_mask=args.max_mask, seed=args.seed,
                                    clean=args.clean)
    try:
        records.make_records(args.input, args.output, options, vocabulary=args.vocabulary, emoji=args.emoji,
                             num_process=args.num_process, num_shards=args.num_shards, overwrite=args.overwrite)
    except (records.TokenizerError, UserError) as error:   # run as a script, records' encode_swe is a 2nd copy
        raise TokenizerError(str(error)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """One subparser per command; a new command only needs an entry here and a command_* function."""
    parser = argparse.ArgumentParser(
        prog="encode_swe.py", description="GPTSAN's SWE tokenizer: encode, decode, statistics, builders.",
        epilog="The released GPTSAN-2.8B weights need the original ja-swe36k.txt and emoji.json "
               "(pass them with --vocabulary/--emoji); the files in this repository are our own.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_files(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--vocabulary", default=str(DEFAULT_VOCABULARY),
                         help="vocabulary file (default: %(default)s)")
        sub.add_argument("--emoji", default=str(DEFAULT_EMOJI), help="emoji table (default: %(default)s)")
        sub.add_argument("files", nargs="*", metavar="FILE", help="input files (default: standard input)")
        return sub

    def with_output(sub: argparse.ArgumentParser, required: bool = False) -> argparse.ArgumentParser:
        sub.add_argument("--output", "-o", required=required, help="output file (default: standard output)"
                         if not required else "output file")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        return sub

    encode = with_output(with_files(commands.add_parser("encode", help="text -> JSON token ids")))
    encode.add_argument("--clean", action="store_true", help="replace URLs, e-mails, dates, prices by tags")
    encode.add_argument("--jsonl", action="store_true", help="one JSON string per input line")
    encode.set_defaults(run=command_encode)

    decode = with_output(with_files(commands.add_parser("decode", help="JSON token ids -> text")))
    decode.add_argument("--jsonl", action="store_true", help="one JSON id list per line, JSON strings out")
    decode.set_defaults(run=command_decode)

    stats = with_files(commands.add_parser("stats", help="characters per token, byte fallback, unknowns"))
    stats.add_argument("--clean", action="store_true", help="encode with clean tags")
    stats.add_argument("--top", type=_positive, default=20, help="unknown characters to list (default: 20)")
    stats.set_defaults(run=command_stats)

    build = with_output(commands.add_parser("build-vocab", help="build a vocabulary from a UTF-8 corpus"),
                        required=True)
    build.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 corpus files")
    build.add_argument("--size", type=_positive, required=True, help="number of ids, e.g. 36000")
    build.add_argument("--emoji", default=str(DEFAULT_EMOJI),
                       help="emoji table the vocabulary will be used with (default: %(default)s)")
    build.add_argument("--min-count", type=_positive, default=3,
                       help="corpus characters seen this often get their own id (default: 3)")
    build.set_defaults(run=command_build_vocab)

    emoji = with_output(commands.add_parser("build-emoji", help="build our emoji.json from Unicode data"),
                        required=True)
    emoji.set_defaults(run=command_build_emoji)

    from modeling import records as rec  # noqa: PLC0415  (no TensorFlow at import)

    records = commands.add_parser(
        "records", help="text -> sharded TFRecord training files (lm, mlm, hybrid)",
        description="Build GPTSAN training records (features x, y, i, num_input; spec 8 with D10 fixed) as "
                    "<mode>_NNNN.tfrecord shards plus records.json in --output. Same --seed and inputs give "
                    "byte-identical files whatever --num_process.")
    records.add_argument("--input", nargs="+", required=True, metavar="FILE",
                         help="UTF-8 text files or globs (documents separated by blank lines), or a CSV whose "
                              "first line is exactly 'filename,fileid' (rows: file,class id; the class id "
                              "becomes feature i; relative names resolve against the CSV's folder)")
    records.add_argument("--output", "-o", required=True, metavar="DIR", help="output directory (gs:// allowed)")
    records.add_argument("--overwrite", action="store_true", help="replace records already in --output")
    records.add_argument("--mode", choices=rec.MODES, required=True,
                         help="lm: packed causal records; mlm: almost all prefix with shifted MLM; hybrid: "
                              "prefix-LM records with probability --hybrid_rate, packed LM otherwise")
    records.add_argument("--num_context", type=_positive, default=rec.DEFAULT_NUM_CONTEXT,
                         help="record length C (default: %(default)s)")
    records.add_argument("--hybrid_rate", type=float, default=rec.DEFAULT_HYBRID_RATE,
                         help="hybrid mode: probability that a record is a prefix-LM record (0.08 is the "
                              "release's setting; the original script's default was 1.0; default: %(default)s)")
    records.add_argument("--num_mask", type=float, default=rec.DEFAULT_NUM_MASK,
                         help="fraction of prefix tokens masked, shifted MLM (default: %(default)s)")
    records.add_argument("--max_mask", type=int, default=rec.DEFAULT_MAX_MASK,
                         help="cap on masks per record (default: %(default)s)")
    records.add_argument("--seed", type=int, default=0,
                         help="seed of document order, record kinds and masks (default: %(default)s)")
    records.add_argument("--num_process", type=_positive, default=rec.default_num_process(),
                         help="tokenizer worker processes; does not change the output (default: min(8, CPUs) "
                              "= %(default)s)")
    records.add_argument("--num_shards", type=_positive, default=rec.DEFAULT_NUM_SHARDS,
                         help="output files; record n goes to shard n mod num_shards (default: %(default)s)")
    records.add_argument("--clean", action="store_true",
                         help="encode the causal part with clean tags (URL, e-mail, date, price...) as the "
                              "original did; the prefix part is never cleaned")
    records.add_argument("--vocabulary", default=str(DEFAULT_VOCABULARY),
                         help="vocabulary file (default: %(default)s)")
    records.add_argument("--emoji", default=str(DEFAULT_EMOJI), help="emoji table (default: %(default)s)")
    records.set_defaults(run=command_records)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except TokenizerError as error:
        print(f"encode_swe.py {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
