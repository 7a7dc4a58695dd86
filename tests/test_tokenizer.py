"""modeling.tokenizer.SWEEncoder gives exactly the original's ids and text (compared with the in-test reference)."""

from __future__ import annotations

import random
import re

import pytest

from modeling import tokenizer
from modeling.tokenizer import SPECIAL_TAIL, SWEEncoder, TokenizerError
from test_tokenizer_reference import WORKED_EXAMPLES, ReferenceSWE, read_reference_files, reference_encoder  # noqa: F401


@pytest.fixture(scope="session")
def original() -> SWEEncoder:
    """Our encoder on the original ja-swe36k.txt and emoji.json."""
    lines, emoji = read_reference_files()
    return SWEEncoder(lines, emoji)


def tiny(body: list[str], emoji: dict[str, str] | None = None) -> tuple[SWEEncoder, ReferenceSWE]:
    """Our encoder and the reference on a hand-made vocabulary `body` + the original special tail."""
    lines = body + list(SPECIAL_TAIL)
    table = {"emoji": emoji or {"😀": "<|emoji1|>"},
             "emoji_inv": {tag: f"E{n}" for n, tag in enumerate(tokenizer.EMOJI_TAGS, start=1)}}
    return SWEEncoder(lines, table), ReferenceSWE(lines, table)


def ids_of(encoder: SWEEncoder, *tokens: str) -> list[int]:
    return [encoder.token_id(token) for token in tokens]


# -- the reference vocabulary -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,ids", WORKED_EXAMPLES)
def test_worked_examples(original, text, ids):
    assert original.encode(text) == ids


def test_conformance_counts(original):
    assert len(original) == original.vocab_size == 36000 and original.maxlen == 15
    assert sum(len(group) > 1 for group in original.bpe) == 15836
    assert len(original.swe) == 181625
    assert len(original.emoji["emoji"]) == 4314


def test_dead_ids_of_the_original(original):
    dead = original.dead_ids()
    assert len(dead) == 12372
    assert {30400, 30514, 35173, 30775, 35707, 35708} <= set(dead)


def test_special_ids_by_name(original):
    names = ["start", "mask", "separator", "not_token", "bag", "segmenter", "end_of_text"]
    assert [original.special_id(name) for name in names] == list(range(35993, 36000))
    assert original.special_id("newline") == 35715 and original.last_token_id == 35737
    assert original.byte_ids[0] == 35738 and original.byte_ids[-1] == 35992
    original.check_gptsan_layout()
    with pytest.raises(KeyError):
        original.special_id("unk")


def test_decoding_canonical_forms(original):
    assert original.decode(original.encode("會社㈱①⒜ｶヶ〇")) == "会社株１ａカ箇０"
    assert original.decode(original.encode("a b\tc\r\nd")) == "a b\tc\nd"
    assert original.decode(original.encode("x\ny"), breakline="<br>") == "x<br>y"
    assert original.decode(original.encode("🐯(^_^)┃")) == "🐯(^_^)‖"
    assert original.decode(original.encode("┃", clean=True)) == "▀"


def test_decoding_reassembles_byte_tokens(original):
    ids = original.encode("ァ🏻x")
    assert original.decode(ids) == "ァ🏻x"
    broken = original.byte_ids[0xE3], original.byte_ids[0x82], original.token_id("a"), original.byte_ids[0xA1]
    assert original.decode(list(broken)) == "\ufffda\ufffd"


def test_decode_rejects_ids_out_of_range(original):
    for bad in (36000, -1):
        with pytest.raises(TokenizerError, match="out of range"):
            original.decode([1, bad])


def test_lone_surrogate_is_a_clear_error(original):
    with pytest.raises(TokenizerError, match="surrogate U\\+D800 at character 2"):
        original.encode("ab\ud800c")


# -- each rule on hand-made vocabularies ---------------------------------------------------------------------

def test_lowest_id_wins_not_longest():
    ours, ref = tiny(["こん", "こんに", "にちは", "ばんは", "世界,㔺界", "、", "。"])
    text = "こんにちは、世界。\u3000こんばんは、㔺界。"
    assert ours.encode(text) == ref.encode(text) == [0, 2, 5, 4, 6, 7 + 1, 0, 3, 5, 4, 6]


def test_equal_ids_take_the_longer_spelling():
    ours, ref = tiny(["ab,a", "b", "c"])
    assert ours.encode("abc") == ref.encode("abc") == [0, 2]


def test_special_tags_longest_first_and_literal():
    ours, ref = tiny(["<a>", "<a>b", "a", "b", "<"])
    for text in ["<a>b", "<a>", "<a", "<<SP>", "<|emoji12|>", "<|emoji1|>2|>", "<|byte254|>"]:
        assert ours.encode(text) == ref.encode(text), text
    assert ours.encode("<a>b<a>") == [1, 0]


def test_single_comma_line_and_variant_groups():
    ours, ref = tiny([",", "x,y", "z"])
    assert ours.encode("x,y,z") == ref.encode("x,y,z") == [1, 0, 1, 0, 2]
    assert ours.decode([1, 0, 1]) == "x,x"


def test_duplicate_spelling_later_id_wins():
    ours, ref = tiny(["ゐ,い", "ゐ"])
    assert ours.encode("ゐい") == ref.encode("ゐい") == [1, 0]


def test_emoji_keys_apply_in_file_order_even_inside_tags():
    emoji = {"👋": "<|emoji8|>", "👋🏻": "<|emoji3|>", "😀": "<|emoji1|>", ">x": "<|emoji2|>", "1|": "<|emoji4|>"}
    ours, ref = tiny(["x"], emoji)
    for text in ["👋🏻", "😀x", "😀1|", "a>x"]:
        assert ours.encode(text) == ref.encode(text), text


def test_out_of_vocabulary_ranges():
    ours, ref = tiny(["a"])
    kigou, wide = ours.token_id("<KIGOU>"), ours.token_id("<U2000U2BFF>")
    inside = "\u00a1\u00bf\u01c0\u01c3\u02b9\u02ff\u0300\u0362"
    for char in inside:
        assert ours.encode(char) == ref.encode(char) == [kigou], hex(ord(char))
    for char in "\u2000\u2bff\u201c\u200d":
        assert ours.encode(char) == ref.encode(char) == [wide], hex(ord(char))
    for char in "\u00a0\u00c0\u01bf\u01c4\u02b8\u0363\u1fff\u2c00\x00\x7f🏻":
        expected = [ours.byte_ids[b] for b in char.encode("utf-8")]
        assert ours.encode(char) == ref.encode(char) == expected, hex(ord(char))


def test_whitespace_forms():
    ours, ref = tiny(["a", "ー"])
    text = "a a\u3000a\r\na\ra\na\ta\u2014a\u2212"
    expected = ids_of(ours, "a", "<SP>", "a", "<SP>", "a", "<BR>", "a", "<BR>", "a", "<BR>", "a", "<TAB>", "a",
                      "ー", "a", "ー")
    assert ours.encode(text) == ref.encode(text) == expected


@pytest.mark.parametrize("text,prepared", [
    ("http://example.com/a?b=1 です", "<URL><SP>です"),
    ("@tanreinama と a.b+c@mail.example.jp", "<EMAIL><SP>と<SP><EMAIL>"),
    ("20220115", "<TEL>"), ("03-1234-5678", "<TEL>"),
    ("3/4", "<DATE>"), ("2022年1月15日(土)12時30分", "<DATE>時30分"), ("平成30年1月2日", "平成30年<DATE>"),
    ("円高", "<PRICE>高"), ("1,000円(税込)", "<PRICE>"), ("１０００円", "１０００<PRICE>"),
    ("3億5000万円", "<PRICE>"), ("┏━━┓█", "<BLOCK>"),
])
def test_clean_tags(text, prepared, original, reference_encoder):
    assert original.prepare(text, clean=True) == prepared
    assert original.encode(text, clean=True) == reference_encoder.encode(text, clean=True)


# -- long mixed text and random strings against the reference -----------------------------------------------

def mixed_text(seed: int, pieces: int, reference: ReferenceSWE) -> str:
    """Random mixture of vocabulary spellings, emoji keys, tags and odd characters, in random order."""
    rng = random.Random(seed)
    spellings = sorted(reference.swe)
    emoji_keys = list(reference.emoji["emoji"])
    odd = list("ぁァィゥェォヵㇰ〆㉑㋿㌔㎡αβЖéÿŪ€“”‘’…\u200d\u00a0\u3000\t\r\n \x00\x1b\x7f©®™♂♀♪☆★←→┃┏━█▀")
    plain = ["2022年1月15日(土)12時30分", "平成30年1月2日", "1,234円", "3億5000万円(税抜)", "http://a.jp/x?y=1",
             "foo@bar.com", "03-1234-5678", "ｶﾞｷﾞｸﾞ", "ﾋﾟｬ", "か゛", "<SP>", "<|endoftext|>", "<|byte12|>", "<",
             "<|emoji1", "a<b", "(^_^)", "ヽ(> <)ノ", "👋🏻", "🇯🇵🇺🇸", "1️⃣", "　", ",", "x,y"]
    chunks = []
    for _ in range(pieces):
        kind = rng.random()
        if kind < 0.55:
            chunks.append(rng.choice(spellings))
        elif kind < 0.65:
            chunks.append(rng.choice(emoji_keys))
        elif kind < 0.8:
            chunks.append(rng.choice(odd))
        elif kind < 0.9:
            chunks.append(rng.choice(plain))
        else:
            chunks.append(chr(rng.randrange(0x20, 0x3000)))
    text = "".join(chunks)
    text = _SURROGATES.sub("?", text)
    return re.sub(r"([\d,]{8})(?=[\d,])", r"\1x", text)   # the original PRICE expression is exponential


_SURROGATES = re.compile("[\ud800-\udfff]")


@pytest.mark.parametrize("clean", [False, True])
def test_long_mixed_text_matches_reference(original, reference_encoder, clean):
    text = mixed_text(seed=1, pieces=6000, reference=reference_encoder)
    ids = original.encode(text, clean)
    assert ids == reference_encoder.encode(text, clean)
    assert original.decode(ids) == reference_encoder.decode(ids)
    lines = text.split("\n")
    assert original.encode_batch(lines, clean) == [reference_encoder.encode(line, clean) for line in lines]


def test_random_unicode_strings_match_reference(original, reference_encoder):
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0x20, 0x3100)] + list("<>|SPBRemoji12byte") * 20 + \
        list(reference_encoder.emoji["emoji"])[:300]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        text = _SURROGATES.sub("", text)
        assert original.encode(text) == reference_encoder.encode(text), text
        assert original.encode(text, clean=True) == reference_encoder.encode(text, clean=True), text
    ids = [rng.randrange(36000) for _ in range(5000)]
    assert original.decode(ids) == reference_encoder.decode(ids)


@pytest.mark.parametrize("vocabulary", ["ja-swe32k.txt", "ja-swe32kfix.txt", "ja-sce.txt"])
def test_other_original_vocabularies(vocabulary):
    lines, emoji = read_reference_files(vocabulary)
    ours, ref = SWEEncoder(lines, emoji), ReferenceSWE(lines, emoji)
    text = mixed_text(seed=3, pieces=2500, reference=ref)
    assert ours.encode(text) == ref.encode(text)
    assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text))


# -- long texts (numpy arrays), batches, reserved characters ---------------------------------------------------

def random_lines(seed: int, alphabet: list[str], count: int, longest: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(longest))) for _ in range(count)]


TINY_BODY = ["dxy", "ab", "abc", "bc,ｂｃ", "cab", "ca", "a", "b", "c", "d", "<x>", "<x>y", "<", "x", "y", "ddd", "dd"]
TINY_ALPHABET = list("abcdxyｂｃ<>|") + ["<x>", "<x>y", "<SP>", "<|emoji1|>", " ", "\n", "😀", "é", "ァ", "€"]


@pytest.mark.parametrize("clean", [False, True])
def test_batches_and_long_texts_on_a_hand_made_vocabulary(clean):
    ours, ref = tiny(TINY_BODY)
    lines = random_lines(5, TINY_ALPHABET, 600, 12)
    assert ours.encode_batch(lines, clean) == [ref.encode(line, clean) for line in lines]
    text = "".join(lines)
    assert ours.encode(text, clean) == ref.encode(text, clean)


def test_reserved_characters_of_the_text_fall_back(original, reference_encoder):
    pieces = ["\U000f0000", "\U000f0001", "\U0010fffd", "\U0010ffff", "<SP>", "<|endoftext|>", " ", "日本", "a"]
    lines = random_lines(9, pieces, 300, 8)
    assert original.encode_batch(lines) == [reference_encoder.encode(line) for line in lines]
    text = "".join(lines)
    assert original.encode(text) == reference_encoder.encode(text)
    assert original.unknown_characters("a\U000f0000b") == {"\U000f0000": 1}


def test_a_vocabulary_with_an_inner_angle_bracket_keeps_tags_as_text():
    ours, ref = tiny(["a<", "<x>", "a", "x", "<", ">"])
    lines = random_lines(4, ["a", "<", "x", ">", "<x>", "a<x>", " "], 300, 8)
    assert ours.encode_batch(lines) == [ref.encode(line) for line in lines]
    text = "".join(lines)
    assert ours.encode(text) == ref.encode(text)


def test_batch_lines_with_surrogates_report_the_line_position(original):
    with pytest.raises(TokenizerError, match="at character 1,"):
        original.encode_batch(["x" * 600, "a\ud800"])


# -- bad files -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("", "is empty"),
    ("a\n" + "\n".join(SPECIAL_TAIL) + "\n", "ends with a newline"),
    ("a\n\n" + "\n".join(SPECIAL_TAIL), "empty line"),
    ("\ufeffa\n" + "\n".join(SPECIAL_TAIL), "byte-order mark"),
])
def test_malformed_vocabulary_text(text, message):
    with pytest.raises(TokenizerError, match=message):
        tokenizer.parse_vocabulary(text)


@pytest.mark.parametrize("lines,message", [
    (["a"] + [t for t in SPECIAL_TAIL if t != "<|byte7|>"], "lacks the special token <\\|byte7\\|>"),
    (["a", "<SP>"] + list(SPECIAL_TAIL), "repeats the special token <SP>"),
])
def test_bad_special_tail(lines, message):
    with pytest.raises(TokenizerError, match=message):
        SWEEncoder(lines, {"emoji": {}, "emoji_inv": {t: "x" for t in tokenizer.EMOJI_TAGS}})


@pytest.mark.parametrize("table", [[], {"emoji": {}}, {"emoji": {"x": 1}, "emoji_inv": {}},
                                   {"emoji": {"x": "<|emoji1|>"}, "emoji_inv": {}}])
def test_bad_emoji_table(table):
    with pytest.raises(TokenizerError):
        tokenizer.parse_emoji_table(table)
