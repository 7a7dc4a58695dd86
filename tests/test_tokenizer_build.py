"""Vocabulary and emoji builders, the shipped files, and the encode_swe.py command line."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

from modeling import tokenizer, vocabulary
from modeling.tokenizer import SPECIAL_TAIL, SWEEncoder

REPO = Path(__file__).resolve().parents[1]
CORPUS = ("今日は良い天気ですね。明日も晴れるでしょうか。ファイルを開いてください。"
          "コンピューターのプログラムを実行しています。東京都千代田区に住んでいます。\n") * 40


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "encode_swe.py"), *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def emoji_table() -> dict:
    return vocabulary.build_emoji_table()


@pytest.fixture(scope="module")
def small_vocabulary(tmp_path_factory, emoji_table) -> list[str]:
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    singles, _ = vocabulary.single_characters(collections.Counter(CORPUS), 3, set(emoji_table["emoji"]))
    return vocabulary.build_vocabulary([corpus], len(singles) + len(SPECIAL_TAIL) + 60, emoji_table,
                                       progress=False)


def test_built_vocabulary_format_and_no_dead_ids(small_vocabulary, emoji_table):
    lines = small_vocabulary
    assert lines[-len(SPECIAL_TAIL):] == list(SPECIAL_TAIL)
    spellings = [s for line in lines for s in tokenizer.split_vocabulary_line(line)]
    assert len(spellings) == len(set(spellings)) and "" not in spellings
    encoder = SWEEncoder(lines, emoji_table)
    encoder.check_gptsan_layout()
    assert encoder.dead_ids() == []
    multi = [line.split(",")[0] for line in lines[:60]]
    for token in multi:
        if len(token) == 3 and token[:2] in multi:
            assert multi.index(token) < multi.index(token[:2])


def test_built_vocabulary_has_small_kana_and_voicing_variants(small_vocabulary, emoji_table):
    encoder = SWEEncoder(small_vocabulary, emoji_table)
    for text in ["ァ", "ぁ", "ヵ", "ゎ"]:
        assert len(encoder.encode(text)) == 1, text
    assert encoder.encode("か\u3099") == encoder.encode("が") == encoder.encode("か゛")
    assert encoder.encode("ｶﾞ") == encoder.encode("ガ")
    assert encoder.decode(encoder.encode("①㈱ｱ")) == "１株ア"


def test_emoji_table_layout(emoji_table):
    assert list(emoji_table["emoji_inv"]) == list(tokenizer.EMOJI_TAGS)
    assert set(emoji_table["emoji"].values()) == set(tokenizer.EMOJI_TAGS)
    keys = list(emoji_table["emoji"])
    assert [len(k) for k in keys] == sorted((len(k) for k in keys), reverse=True)
    for tag, representative in emoji_table["emoji_inv"].items():
        assert emoji_table["emoji"][representative] == tag
    assert not set("☆★♪→○●、。") & set(keys)


def test_shipped_files_are_our_builds():
    encoder = SWEEncoder.from_files()
    assert len(encoder) == 36000
    assert not (REPO / "ja-swe36k.txt").read_bytes().endswith(b"\n")
    encoder.check_gptsan_layout()
    assert encoder.dead_ids() == []
    assert (REPO / "emoji.json").read_text(encoding="ascii") == \
        vocabulary.emoji_table_json(vocabulary.build_emoji_table())


def test_cli_round_trip_jsonl_and_whole(tmp_path):
    lines = ["吾輩は猫である。", "ファイル 🐶 (^^)"]   # category representatives come back unchanged
    encoded = run_cli("encode", "--jsonl", stdin="".join(json.dumps(x) + "\n" for x in lines))
    assert encoded.returncode == 0, encoded.stderr
    decoded = run_cli("decode", "--jsonl", stdin=encoded.stdout)
    assert [json.loads(x) for x in decoded.stdout.splitlines()] == lines
    source = tmp_path / "in.txt"
    source.write_text("一行目\n二行目", encoding="utf-8")
    whole = run_cli("encode", str(source), "--output", str(tmp_path / "ids.json"))
    assert whole.returncode == 0 and whole.stdout == ""
    assert run_cli("decode", str(tmp_path / "ids.json")).stdout == "一行目\n二行目"


@pytest.mark.parametrize("make,args,message", [
    (lambda d: (d / "v.txt").write_text("a\n"), ["encode", "--vocabulary", "{d}/v.txt"], "ends with a newline"),
    (lambda d: (d / "e.json").write_text("[]"), ["encode", "--emoji", "{d}/e.json"], "JSON object"),
    (lambda d: (d / "ids.json").write_text("[1, 99999]"), ["decode", "{d}/ids.json"], "out of range"),
    (lambda d: (d / "bad.txt").write_bytes(b"abc\xff"), ["encode", "{d}/bad.txt"], "byte offset 3"),
    (lambda d: (d / "c.txt").write_bytes(b"ok\n\xe3\x81"),
     ["build-vocab", "--input", "{d}/c.txt", "--size", "99999", "-o", "{d}/v.txt"], "c.txt is not valid UTF-8 (byte offset 3)"),
    (lambda d: (d / "o.json").write_text("x"), ["encode", "-o", "{d}/o.json"], "--overwrite"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, make, args, message):
    make(tmp_path)
    result = run_cli(*[a.format(d=tmp_path) for a in args], stdin="テキスト")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
