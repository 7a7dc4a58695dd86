"""SWE tokenizer of GPTSAN: the exact and fast encoder/decoder, its errors, data files and defaults.

The encoder reproduces the ids of the original ``SWEEncoder_ja`` for any vocabulary in the original format
(``../shared/spec/swe-tokenizer.md``): fixed pre-substitutions, emoji keys in file order, optional
``clean`` tags, then greedy tokenisation where the *lowest id* among the 1- to 3-character candidates wins
and special tags starting with ``<`` are matched longest first.

Files and compatibility:

* ``ja-swe36k.txt`` and ``emoji.json`` at the top of this repository are our own, built by
  ``modeling/vocabulary.py`` (``encode_swe.py build-vocab`` and ``build-emoji``).  Their ids differ from
  the original's.
* The released GPTSAN-2.8B weights need the ORIGINAL ``ja-swe36k.txt`` and ``emoji.json`` (from
  tanreinama/GPTSAN, MIT licence): the model loader prefers the files found in the model directory, and
  ``--vocabulary`` / ``--emoji`` override them.  Using our files with the released weights gives garbage.

A library module: it imports nothing of the command-line scripts and no TensorFlow (data tools that
import it should start quickly).
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from modeling.tokenizer_arrays import TEXT_SEPARATOR, ArrayTokenizer

REPO_DIR = Path(__file__).resolve().parents[1]
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
_WINDOW_CACHE_LIMIT = 1_000_000
_LONG_TEXT = 5000          # emoji keys: a longer text is searched by its distinct characters (EmojiReplacer)
ARRAY_MIN_CHARS = 500       # shorter texts go through the Python loop (the arrays' fixed cost is about 50 µs)
_PLACEHOLDER_PLANE = 0xF0000   # private use: while tokenizing, each tag stands as one character of this plane
_RESERVED_RE = re.compile("([\U000f0000-\U0010ffff])")   # the placeholders and TEXT_SEPARATOR


class TokenizerError(ValueError):
    """Bad input (vocabulary, emoji table, text or ids), with a one-line message meant for the user."""


# ----------------------------------------------------------------------------------------------------------
# clean_text (spec §5.3): the regular expressions of the original, except PRICE, which is rewritten so that
# it cannot backtrack exponentially on long digit runs while matching exactly the same spans (see
# _price_pattern and the property tests in tests/test_tokenizer_clean.py).  TEL and DATE take their first
# character with a class (re then skips the positions where no match can start, fast) and read it again with
# lookbehinds, which keeps the original's alternatives in the original's order.  E-mail addresses and prices
# are only looked for around an '@' or a currency unit (_sub_near).
# ----------------------------------------------------------------------------------------------------------
_WEEKDAY_SUFFIX = r"(?:\d{1,2}|:|\d{1,2}時|\d{1,2}分|\(日\)|\(月\)|\(火\)|\(水\)|\(木\)|\(金\)|\(土\)|㈰|㈪|㈫|㈬|㈭|㈮|㈯)*"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_DAY = r"(?:0?[1-9]|[12][0-9]|3[01])"
CURRENCY_UNITS = ("千円", "万円", "千万円", "円", "千ドル", "万ドル", "千万ドル", "ドル", "千ユーロ", "万ユーロ",
                  "千万ユーロ", "ユーロ")
_TAX_SUFFIX = r"(?:\(税込\)|\(税抜\)|\+tax)"
URL_RE = re.compile(r"(?:https?|ftp)://[-_.!~*'()a-zA-Z0-9;/?:@&=+$,%#]+")
EMAIL_RE = re.compile(r"[A-Za-z0-9._+]*@[-_0-9A-Za-z]+(?:\.[A-Za-z]+)*")
TEL_RE = re.compile(r"[(0-9](?:(?<=\()[0-9]{2,4}|(?<=[0-9])[0-9]{1,3})[)\-(]?[0-9]{2,4}[)\-]?[0-9]{3,4}")
_MONTH_FROM_FIRST = r"(?:(?<=0)[1-9]|(?<=[1-9])|(?<=1)[0-2])"   # 0?[1-9]|1[0-2] when its first digit is taken
DATE_RE = re.compile(rf"[0-9](?:(?<=[12])\d{{3}}[/\-年](?:[12]\d{{3}}[/\-年])*{_MONTH}|{_MONTH_FROM_FIRST})[/\-月]"
                     rf"(?:{_DAY}日?)*{_WEEKDAY_SUFFIX}")
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
# What an e-mail address or a price can consume, and what each must contain: the runs _sub_near works on.
_EMAIL_RUN, _EMAIL_ANCHOR = re.compile(r"[-A-Za-z0-9._+@]*"), re.compile("@")
_PRICE_RUN, _PRICE_ANCHOR = re.compile(r"[\d,億万千円ドルユーロ(税込抜)+tax]*"), re.compile("円|ドル|ユーロ")


def _sub_near(pattern: re.Pattern, tag: str, text: str, anchor: re.Pattern, run: re.Pattern) -> str:
    """``pattern.sub(tag, text)``, computed only on the maximal runs of `run` characters around an `anchor`.

    Exact when every match contains an anchor, consists of `run` characters and looks at nothing outside
    them: then no match lies elsewhere, and each run is scanned as it would be within the whole text.
    """
    pieces, done = [], 0
    for found in anchor.finditer(text):
        if found.start() < done:
            continue
        start = found.start()
        while start > done and run.fullmatch(text, start - 1, start):
            start -= 1
        end = run.match(text, found.end()).end()
        pieces += (text[done:start], pattern.sub(tag, text[start:end]))
        done = end
    return "".join(pieces) + text[done:] if pieces else text


def clean_text(text: str) -> str:
    """Replace URLs, e-mail addresses, phone numbers, dates, prices and box drawing by tags (spec §5.3)."""
    if "://" in text:
        text = URL_RE.sub("<URL>", text)
    text = _sub_near(EMAIL_RE, "<EMAIL>", text, _EMAIL_ANCHOR, _EMAIL_RUN)
    text = TEL_RE.sub("<TEL>", text)
    text = DATE_RE.sub("<DATE>", text)
    text = ERA_DATE_RE.sub("<DATE>", text)
    text = _sub_near(PRICE_RE, "<PRICE>", text, _PRICE_ANCHOR, _PRICE_RUN)
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
    """Applies the emoji table exactly like the original loop over all keys, without scanning all keys.

    A short text is searched only for the keys whose anchor occurs in it: the character of the key least
    likely to be in a text (not common in Japanese text if possible, then the one in fewest keys).  A long
    text is searched only for the keys whose characters all occur in it; keys made only of uncommon
    characters (most emoji) are looked for in the few distinct runs of such characters, not in the whole text.
    """

    def __init__(self, emoji: Mapping[str, str]):
        self.items = list(emoji.items())
        keys = [key for key, _tag in self.items]
        shared = collections.Counter(char for key in keys for char in set(key))
        self.by_anchor: dict[str, list[int]] = collections.defaultdict(list)
        for index, key in enumerate(keys):
            self.by_anchor[min(key, key=lambda char: (_commonness(char), shared[char], char))].append(index)
        self.anchors = frozenset(self.by_anchor)
        self.anchor_re = _one_of(self.anchors)
        self.key_chars = [frozenset(key) for key in keys]
        self.uncommon_only = [not any(map(_is_common, key)) for key in keys]
        self.uncommon_runs = re.compile(_one_of(char for key in keys for char in key if not _is_common(char)).pattern
                                        + "+")
        self.created_by_replacement = _creatable_keys(keys, emoji.values())

    def keys_in(self, text: str) -> list[int]:
        """Indices of the keys occurring in `text`."""
        if len(text) < _LONG_TEXT:
            anchors = self.anchors.intersection(self.anchor_re.findall(text))
            return [index for anchor in anchors for index in self.by_anchor[anchor] if self.items[index][0] in text]
        chars = _distinct_characters(text)
        candidates = [index for anchor in self.anchors.intersection(chars) for index in self.by_anchor[anchor]
                      if self.key_chars[index] <= chars]
        runs = "\n".join(set(self.uncommon_runs.findall(text))) \
            if any(self.uncommon_only[index] for index in candidates) else ""
        return [index for index in candidates if self.items[index][0] in (runs if self.uncommon_only[index] else text)]

    def __call__(self, text: str) -> str:
        present = self.keys_in(text)
        if not present:
            return text
        for index in sorted(self.created_by_replacement.union(present)):
            key, tag = self.items[index]
            if key in text:
                text = text.replace(key, tag)
        return text


def _distinct_characters(text: str) -> set[str]:
    """The characters of a long text (a set() of the text would create one string per character)."""
    seen = np.zeros(0x110000, bool)
    seen[np.frombuffer(text.encode("utf-32-le"), np.uint32)] = True
    return set(map(chr, np.flatnonzero(seen).tolist()))


def _one_of(chars: Iterable[str]) -> re.Pattern:
    """A character class of `chars` and every astral character: a superset that matches fast (a bitmap and one
    range; listing astral characters one by one would make each test slow)."""
    bmp = "".join(sorted({re.escape(char) for char in chars if ord(char) <= 0xFFFF}))
    return re.compile(f"[{bmp}\U00010000-\U0010ffff]")


def _is_common(char: str) -> bool:
    """ASCII, CJK punctuation, kana, kanji and full-width forms: frequent in Japanese text."""
    return char.isascii() or "\u3000" <= char <= "\u30ff" or "\u4e00" <= char <= "\u9fff" \
        or "\uff00" <= char <= "\uffef"


_FREQUENT_ASCII = frozenset(string.ascii_letters + string.digits + " .,:-/()[]<>")   # "<>": the <SP>, <BR> tags


def _commonness(char: str) -> int:
    """How often a character is likely to occur in a text (0: rarely, 3: everywhere), for choosing anchors."""
    if not _is_common(char):
        return 0
    if char.isascii():
        return 3 if char in _FREQUENT_ASCII else 1
    return 2


def _tag_pattern(tags: Iterable[str]) -> re.Pattern:
    """Matches the longest of `tags` at a position (spec §5.5); written as a trie, so a miss costs one step."""
    trie: dict = {}
    for tag in tags:
        node = trie
        for char in tag:
            node = node.setdefault(char, {})
        node[""] = {}
    return re.compile(_trie_pattern(trie) or "(?!)")


def _trie_pattern(node: dict) -> str:
    """Alternatives by next character; an optional group where a tag may also end (greedy: longest first)."""
    branches = [re.escape(char) + _trie_pattern(child) for char, child in sorted(node.items()) if char]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
    return f"(?:{body})?" if "" in node else body


def _placeholders_work(swe: Mapping[str, int], emoji_keys: Iterable[str]) -> bool:
    """Whether tags may stand as one character each (and texts be joined by TEXT_SEPARATOR): every '<' of a
    text must start a token (no surface has '<' after its first character), and the reserved characters
    must occur in no surface and no emoji key."""
    surfaces = "\n".join(swe)
    return re.search("[^\n]<", surfaces) is None and not _RESERVED_RE.search(surfaces + "".join(emoji_keys))


def _check_surrogates(text: str) -> None:
    """A lone surrogate has no UTF-8 form, so the original fails on it; say where it is."""
    where = _SURROGATE_RE.search(text)
    if where:
        raise TokenizerError(f"the text contains a lone surrogate U+{ord(where.group()):04X} at character "
                             f"{where.start()}, which has no UTF-8 form; repair the text (e.g. decode it with "
                             "errors='replace')")


# ----------------------------------------------------------------------------------------------------------
# The encoder
# ----------------------------------------------------------------------------------------------------------
class SWEEncoder:
    """GPTSAN's SWE tokenizer: same ids as the original ``SWEEncoder_ja`` for the same files.

    While tokenizing, each tag stands as one private-use character (when the vocabulary allows it).  Long
    texts (and long batches of lines) are then tokenized on numpy arrays (``modeling/tokenizer_arrays.py``);
    short ones go through a Python loop that caches, for each 3-character window, the tokens it decides (a
    window decides its first token, and the single-character tokens after it), so ordinary text costs less
    than one dictionary lookup per token.
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
        tag_ids = {surface: token_id for surface, token_id in self.swe.items()
                   if surface.startswith("<") and len(surface) > 2}
        self._tags = _tag_pattern(tag_ids)
        usable = _placeholders_work(self.swe, self.emoji["emoji"])
        self._placeholders = {tag: chr(_PLACEHOLDER_PLANE + n) for n, tag in enumerate(tag_ids) if usable}
        self._placeholder_ids = {char: tag_ids[tag] for tag, char in self._placeholders.items()}
        self._plain_markers = [tag for tag in dict.fromkeys(new for _old, new in PRE_SUBSTITUTIONS)
                               if tag in self._placeholders and not any(t != tag and t.startswith(tag) for t in tag_ids)]
        self._window: dict[str, tuple[tuple[int, ...], int]] = {}   # window -> token ids, characters taken
        self._starts = frozenset(surface[0] for surface in self.swe if len(surface) > 1)
        self._fallback: dict[str, tuple[int, ...]] = {}
        self._decode_tables: dict[str, list[str]] = {}
        self.byte_ids = tuple(self.swe[tag] for tag in BYTE_TAGS)
        self._arrays = ArrayTokenizer(self.swe, self._placeholder_ids, self._fallback_ids) if usable else None

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
        _check_surrogates(text)
        return self._ids(self.prepare(text, clean))

    def encode_batch(self, texts: Iterable[str], clean: bool = False) -> list[list[int]]:
        """``encode`` for each text (e.g. one call per line, as GPTSAN's record writer does).

        A long batch is encoded in one pass of the arrays: the texts are joined by a character that no
        emoji key, clean pattern or token can match across, and the ids are cut there again.
        """
        texts = list(texts)
        joined = TEXT_SEPARATOR.join(texts)
        if self._arrays is None or len(joined) < ARRAY_MIN_CHARS or _SURROGATE_RE.search(joined) \
                or len(_RESERVED_RE.findall(joined)) != len(texts) - 1:
            return [self.encode(text, clean) for text in texts]
        return self._arrays.encode_batch(self._mark_tags(self.prepare(joined, clean)))

    def _ids(self, text: str, unknown: collections.Counter | None = None) -> list[int]:
        """Ids of a prepared text; out-of-vocabulary characters are counted into `unknown` if given.

        With placeholders, tags become one character each and long texts go to the arrays.  A reserved
        character of the text itself is in no token: the text is cut there and it falls back on its own.
        """
        if not self._placeholders:
            return self._tokenize(text, unknown)
        if not _RESERVED_RE.search(text):
            text = self._mark_tags(text)
            if unknown is None and len(text) >= ARRAY_MIN_CHARS:
                return self._arrays.encode(text)
            return self._tokenize(text, unknown)
        ids: list[int] = []
        for index, piece in enumerate(_RESERVED_RE.split(text)):
            if index % 2:
                ids += self._fallback_ids(piece)
                if unknown is not None:
                    unknown[piece] += 1
            else:
                ids += self._ids(piece, unknown)
        return ids

    def _mark_tags(self, text: str) -> str:
        """Each tag replaced by its placeholder character, longest tags first: the tags the loop reads (spec
        §5.5), since every '<' starts a token (_placeholders_work).

        The markers of the pre-substitutions, the most frequent tags, go first by plain replacement when no
        other tag starts with them; the pattern then only meets the other tags.
        """
        for tag in self._plain_markers:
            text = text.replace(tag, self._placeholders[tag])
        if "<" not in text:
            return text
        for tag in sorted(set(self._tags.findall(text)), key=len, reverse=True):
            text = text.replace(tag, self._placeholders[tag])
        return text

    def _tokenize(self, text: str, unknown: collections.Counter | None = None) -> list[int]:
        """The loop of spec §5.4 on a prepared text; counts out-of-vocabulary characters into `unknown`."""
        ids: list[int] = []
        extend = ids.extend
        lookup = self._window.get
        position, end = 0, len(text)
        while position < end:
            step = lookup(text[position:position + 3])
            if step is None:
                step = self._step(text, position, unknown)
            extend(step[0])
            position += step[1]
        return ids

    def _step(self, text: str, position: int, unknown: collections.Counter | None) -> tuple[tuple[int, ...], int]:
        """Token ids at `position` and the characters they take: a tag, an out-of-vocabulary character, or the
        tokens decided by an uncached window, which is then cached."""
        window = text[position:position + 3]
        if window[0] == "<":
            tag = self._tags.match(text, position)
            if tag is not None:
                return (self.swe[tag.group()],), tag.end() - position
        choice = self._choose(window)
        if choice is None:
            if unknown is not None:
                unknown[window[0]] += 1
            return self._fallback_ids(window[0]), 1
        step = self._window_tokens(window, *choice)
        if window[0] != "<":
            if len(self._window) >= _WINDOW_CACHE_LIMIT:
                self._window.clear()
            self._window[window] = step
        return step

    def _window_tokens(self, window: str, token_id: int, length: int) -> tuple[tuple[int, ...], int]:
        """The first token of `window`, and the characters after it that are a token on their own whatever
        follows (they start no longer surface): all decided by the window, so one lookup takes them all."""
        ids = [token_id]
        for char in window[length:]:
            choice = None if char in self._starts else self._choose(char)
            if choice is None:
                break
            ids.append(choice[0])
            length += 1
        return tuple(ids), length

    def _choose(self, window: str) -> tuple[int, int] | None:
        """Lowest id among the prefixes of `window` in the vocabulary (the longer one on equal ids); a tag's
        placeholder is that tag."""
        if window[0] in self._placeholder_ids:
            return self._placeholder_ids[window[0]], 1
        best = None
        for length in range(len(window), 0, -1):
            token_id = self.swe.get(window[:length])
            if token_id is not None and (best is None or token_id < best[0]):
                best = (token_id, length)
        return best

    def _fallback_ids(self, char: str) -> tuple[int, ...]:
        """<KIGOU>, <U2000U2BFF> or UTF-8 byte tokens for a character without candidates (spec §5.6)."""
        ids = self._fallback.get(char)
        if ids is None:
            code = ord(char)
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
        _check_surrogates(text)
        unknown: collections.Counter = collections.Counter()
        self._ids(self.prepare(text, clean), unknown)
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

