"""Training records (modeling/records.py, `encode_swe.py records`): layout, alignment, masking, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modeling import records as R
from modeling.tokenizer import SWEEncoder, TokenizerError

REPO = Path(__file__).resolve().parents[1]
CORPUS = sorted(str(path) for path in (REPO / "examples" / "corpus").glob("*.txt"))


@pytest.fixture(scope="module")
def encoder() -> SWEEncoder:
    return SWEEncoder.from_files()


@pytest.fixture(scope="module")
def ids(encoder) -> R.SpecialIds:
    return R.SpecialIds.of(encoder)


def plain_stream(encoder, ids, text: str) -> list[int]:
    """Prefix encoding of one document: each line encoded, then <BR>."""
    return [t for line in text.split("\n") for t in encoder.encode(line) + [ids.newline]]


def causal_stream(encoder, ids, text: str) -> list[int]:
    """Causal target encoding of one document: each line encoded, bag-compressed, then <BR>."""
    return [t for line in text.split("\n") for t in R.bag_compress(encoder.encode(line), ids) + [ids.newline]]


def sep(ids, tokens):
    return [ids.separator if t in ids.punctuation else t for t in tokens]


def check_padding(record, ids, size):
    assert len(record.x) == len(record.y) == size
    assert record.x[record.length:] == [ids.not_token] * (size - record.length)
    assert record.y[record.length:] == [-1] * (size - record.length)
    assert ids.not_token not in record.x[:record.length]


DOCS = ["桜川町は１２日、新しい遊歩道を整備すると発表した。\n全長はおよそ２．４キロだ。",
        "今日は晴れ。明日は雨？",
        "気象台によると、明日は低気圧が日本海を東へ進む影響で、北部を中心に広い範囲で雨となる見込みだ。"
        "山沿いでは雷を伴い、激しい雨が降るおそれがある。\n最高気温は平年より２度ほど低い。"]


# -- plain LM: packing and alignment ------------------------------------------------------------------------

def test_lm_records_pack_documents_with_eot_targets(encoder, ids):
    size = 32
    records = R.records_from_texts(encoder, DOCS, R.RecordOptions(mode="lm", num_context=size))
    target = [t for doc in DOCS for t in causal_stream(encoder, ids, doc) + [ids.end_of_text]]
    position = 0
    for number, record in enumerate(records):
        check_padding(record, ids, size)
        assert record.x[:2] == [ids.start, ids.segmenter] and record.num_input == 1 and record.kind == "lm"
        assert record.i == number and record.y[0] == -1
        if target[position] == ids.end_of_text:     # consumed as the previous record's last target
            position += 1
        n = record.length - 2
        chunk = target[position:position + n]
        assert record.x[2:record.length] == sep(ids, chunk)
        expected_y = chunk + [-1 if chunk[-1] == ids.end_of_text else target[position + n]]
        assert record.y[1:record.length] == expected_y
        position += n
    assert position == len(target)
    assert all(r.length == size for r in records[:-1])            # only the last record is padded
    inner = [(r, t) for r in records for t in range(2, r.length - 1) if r.x[t] == ids.end_of_text]
    assert inner                                                    # an EOT between two packed documents
    for record, t in inner:
        assert record.y[t - 1] == ids.end_of_text                   # D10 fixed: token before EOT predicts EOT
        assert record.y[t] == record.x[t + 1] != ids.end_of_text   # EOT predicts the next document's start
    last = records[-1]
    assert last.x[last.length - 1] == ids.end_of_text and last.y[last.length - 1] == -1
    text = encoder.decode([t for r in records for t in r.y[1:r.length - 1] if 0 <= t < ids.start])
    assert text == "".join(doc + "\n" for doc in DOCS)


def test_long_document_continues_in_next_record(encoder, ids):
    long_doc = "。".join(["東京都千代田区に住んでいます"] * 12)
    records = R.records_from_texts(encoder, [long_doc], R.RecordOptions(mode="lm", num_context=16))
    assert len(records) > 3
    assert all(r.x[:2] == [ids.start, ids.segmenter] for r in records)
    assert all(ids.end_of_text not in r.x for r in records[:-1])
    assert records[-1].x[records[-1].length - 1] == ids.end_of_text


def test_separator_in_input_not_in_target(encoder, ids):
    record = R.records_from_texts(encoder, ["今日は晴れ。明日は雨？そうですね！"], R.RecordOptions(mode="lm"))[0]
    maru, question = encoder.encode("。")[0], encoder.encode("？")[0]
    x, y = record.x[:record.length], record.y[:record.length]
    assert maru not in x and question not in x and x.count(ids.separator) == 3
    assert maru in y and question in y and ids.separator not in y
    for t in range(1, record.length - 1):
        if x[t + 1] == ids.separator:
            assert y[t] in ids.punctuation


def test_bag_compression_in_input_and_target(encoder, ids):
    dash = encoder.encode("ー")
    assert encoder.encode("ーーーーー") == dash * 5
    assert R.bag_compress([1, 2, 2, 2, 2, 3, 3, 4, 4, 4], ids) == [1, 2, ids.bag, 3, 3, 4, ids.bag]
    high = ids.last_token + 1                           # byte tokens are not compressed
    assert R.bag_compress([high] * 4, ids) == [high] * 4
    record = R.records_from_texts(encoder, ["すごーーーーーい"], R.RecordOptions(mode="lm"))[0]
    x, y = record.x[:record.length], record.y[:record.length]
    assert x.count(ids.bag) == 1 and y.count(ids.bag) == 1
    at = x.index(ids.bag)
    assert x[at - 1] == dash[0] and x[at - 2] != dash[0] and y[at - 1] == ids.bag
    assert encoder.decode([t for t in y if 0 <= t < ids.start]) == "すごーい\n"


# -- MLM and hybrid ------------------------------------------------------------------------------------------

def check_prefix_record(record, ids, plain, size, num_mask=0.08, max_mask=100):
    """A one-document prefix record: SOT prefix SEG causal EOT, with shifted MLM targets in the prefix."""
    check_padding(record, ids, size)
    n = record.num_input - 1
    assert record.kind == "prefix" and record.x[0] == ids.start and record.x[n + 1] == ids.segmenter
    targets = {p for p in range(1, n + 1) if record.y[p - 1] >= 0}
    assert len(targets) == record.masked == min(int(num_mask * n + 1e-9), max_mask)
    for p in targets:
        assert record.y[p - 1] == plain[p - 1]                      # y_{p-1} = original x_p
        assert record.x[p] in (ids.mask, plain[p - 1]) or record.x[p] < ids.last_token
    for p in range(1, n + 1):
        if p not in targets:
            assert record.x[p] == plain[p - 1]
    assert record.y[n] == -1                                        # the last prefix position: no target
    end = record.length - 1
    assert record.x[n + 2:end] == sep(ids, plain[n:]) and record.x[end] == ids.end_of_text
    assert record.y[n + 1:end] == plain[n:] + [ids.end_of_text] and record.y[end] == -1


def test_mlm_record_layout_and_masking(encoder, ids):
    size = 256
    records = R.records_from_texts(encoder, DOCS, R.RecordOptions(mode="mlm", num_context=size))
    assert len(records) == len(DOCS)
    for record, doc in zip(records, DOCS):
        plain = plain_stream(encoder, ids, doc)
        assert record.num_input == len(plain) + 1                  # the whole short document is prefix
        check_prefix_record(record, ids, plain, size)
        assert record.y[record.num_input] == ids.end_of_text       # SEG predicts the end
        assert record.i == records.index(record)


def test_mlm_long_document_chunks_and_mask_mix(encoder, ids):
    size, doc = 64, "\n".join(DOCS * 6)
    options = R.RecordOptions(mode="mlm", num_context=size, num_mask=0.5, max_mask=20, seed=3)
    records = R.records_from_texts(encoder, [doc], options)
    plain = plain_stream(encoder, ids, doc)
    assert len(records) > 5
    first = records[0]
    assert first.num_input == size - 2 and first.length == size     # SOT + C-3 prefix + SEG + one causal token
    assert first.y[size - 2] == first.x[size - 1] == plain[size - 3]
    assert first.y[size - 1] == plain[size - 2]                     # the next token of the stream
    for record in records:
        assert record.masked == min(int(0.5 * (record.num_input - 1)), 20)
    # 80 % mask token, 10 % random, 10 % unchanged over all masked positions
    kinds = {"mask": 0, "other": 0}
    for record in records:
        for p in range(1, record.num_input):
            if record.y[p - 1] >= 0:
                kinds["mask" if record.x[p] == ids.mask else "other"] += 1
    total = sum(kinds.values())
    assert total > 150 and 0.7 < kinds["mask"] / total < 0.9


def test_hybrid_prefix_lm_records(encoder, ids):
    size = 256
    options = R.RecordOptions(mode="hybrid", num_context=size, hybrid_rate=1.0, seed=5)
    records = R.records_from_texts(encoder, DOCS * 4, options)
    assert len(records) == len(DOCS) * 4
    lengths = set()
    for record, doc in zip(records, DOCS * 4):
        plain = plain_stream(encoder, ids, doc)
        assert 0 <= record.num_input - 1 <= len(plain)
        check_prefix_record(record, ids, plain, size)
        lengths.add(record.num_input)
    assert len(lengths) > 4                                          # n_p drawn per record
    only_lm = R.records_from_texts(encoder, DOCS * 4, R.RecordOptions(mode="hybrid", num_context=size,
                                                                       hybrid_rate=0.0))
    assert {r.kind for r in only_lm} == {"lm"} and all(r.num_input == 1 for r in only_lm)


def test_hybrid_rate_is_per_record(encoder, ids):
    texts = [Path(path).read_text(encoding="utf-8") for path in CORPUS]
    records = R.records_from_texts(encoder, texts, R.RecordOptions(mode="hybrid", num_context=128,
                                                                   hybrid_rate=0.25, seed=1), shuffle=True)
    prefix = sum(r.kind == "prefix" for r in records)
    assert 0.15 < prefix / len(records) < 0.35
    assert all(r.x[r.num_input] == ids.segmenter for r in records)


def test_options_are_checked():
    with pytest.raises(TokenizerError, match="hybrid_rate"):
        R.RecordOptions(mode="hybrid", hybrid_rate=1.5).check()
    with pytest.raises(TokenizerError, match="mode"):
        R.RecordOptions(mode="t5").check()


# -- files, CSV, determinism, CLI -----------------------------------------------------------------------------

def make(tmp_path, inputs, name="out", **kwargs):
    options = kwargs.pop("options", None) or R.RecordOptions(mode=kwargs.pop("mode", "lm"),
                                                            num_context=kwargs.pop("num_context", 256),
                                                            **{k: kwargs.pop(k) for k in list(kwargs)
                                                               if k in ("hybrid_rate", "seed")})
    kwargs.setdefault("num_process", 1)
    kwargs.setdefault("progress", False)
    output = tmp_path / name
    summary = R.make_records([str(p) for p in inputs], str(output), options, **kwargs)
    return output, summary


def test_fill_ratio_on_sample_corpus_and_summary(tmp_path, capsys, ids):
    output, summary = make(tmp_path, CORPUS, mode="lm", num_context=256)
    assert summary["fill_ratio"] >= 0.95
    on_disk = json.loads((output / "records.json").read_text())
    assert on_disk == summary and on_disk["vocabulary_size"] == 36000 and on_disk["mode"] == "lm"
    assert "fill ratio" in capsys.readouterr().err
    files = sorted(p.name for p in output.iterdir())
    assert files == [f"lm_{k:04d}.tfrecord" for k in range(8)] + ["records.json"]
    read = [r for k in range(8) for r in R.read_records(str(output / f"lm_{k:04d}.tfrecord"))]
    assert len(read) == summary["records"] == sum(s["records"] for s in summary["shards"])
    real = sum(sum(1 for t in r["x"] if t != ids.not_token) for r in read)
    assert real / (len(read) * 256) == pytest.approx(summary["fill_ratio"], abs=1e-5)
    assert sorted(r["i"][0] for r in read) == list(range(len(read)))


def test_parse_record_with_feature_spec(tmp_path):
    from modeling.mtf_compat import tf
    output, _ = make(tmp_path, CORPUS[:1], mode="mlm", num_context=64, num_shards=1)
    data = next(iter(tf.compat.v1.io.tf_record_iterator(str(output / "mlm_0000.tfrecord"))))
    parsed = tf.io.parse_single_example(data, R.feature_spec(64))
    assert {k: v.shape.as_list() for k, v in parsed.items()} == {"x": [64], "y": [64], "i": [1], "num_input": [1]}
    assert R.parse_record(data, 64)["num_input"].numpy()[0] > 1


def test_same_seed_same_bytes_whatever_num_process(tmp_path):
    options = R.RecordOptions(mode="hybrid", num_context=128, hybrid_rate=0.3, seed=11)
    one, _ = make(tmp_path, CORPUS[:2], "one", options=options, num_process=1, num_shards=3)
    two, _ = make(tmp_path, CORPUS[:2], "two", options=options, num_process=2, num_shards=3)
    other, _ = make(tmp_path, CORPUS[:2], "other", options=R.RecordOptions(mode="hybrid", num_context=128,
                                                                          hybrid_rate=0.3, seed=12), num_shards=3)
    for k in range(3):
        name = f"hybrid_{k:04d}.tfrecord"
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert (one / "hybrid_0000.tfrecord").read_bytes() != (other / "hybrid_0000.tfrecord").read_bytes()


def test_csv_class_ids(tmp_path, encoder, ids):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "dogs.txt").write_text("犬が走る。\n\n犬が吠える。\n\n犬が眠る。\n", encoding="utf-8")
    (tmp_path / "cats.txt").write_text("猫が寝る。\n\n猫が鳴く。\n", encoding="utf-8")
    listing = tmp_path / "texts" / "list.csv"
    listing.write_text("filename,fileid\ndogs.txt,7\n../cats.txt,9\n\n", encoding="utf-8")
    for mode in ("lm", "hybrid"):
        output, summary = make(tmp_path, [listing], f"csv_{mode}", mode=mode, num_context=32, hybrid_rate=0.5)
        assert summary["class_ids"] == "csv"
        read = [r for k in range(8) for r in R.read_records(str(output / f"{mode}_{k:04d}.tfrecord"))]
        assert {r["i"][0] for r in read} == {7, 9}
        for r in read:                                   # packing never mixes classes
            text = encoder.decode([t for t in r["y"] if 0 <= t < ids.start])
            assert ("猫" not in text) if r["i"][0] == 7 else ("犬" not in text)


def test_whole_documents_start_every_record_with_a_document(encoder, ids):
    """--whole_documents: a plain LM record holds whole documents, the first right after SOT SEG (where a
    prompt is at generation), padded; a document longer than a record fills records and continues. Packed
    across boundaries (the default), records rarely start with a document."""
    size = 32
    docs = DOCS[:2] + ["。".join(["東京都千代田区に住んでいます"] * 6)] + ["猫が寝る。", "犬が走る。", "鳥が鳴く。"]
    options = R.RecordOptions(mode="lm", num_context=size, whole_documents=True)
    records = R.records_from_texts(encoder, docs + ["雨が降る。"], options, class_ids=[3] * len(docs) + [5])
    assert [r.i for r in records].count(5) == 1
    mine = [r for r in records if r.i == 3]
    chunks = [r.y[1:r.length - 1] for r in mine]                     # y = -1, chunk, next target
    for record, chunk in zip(mine, chunks):
        check_padding(record, ids, size)
        assert record.x[:2] == [ids.start, ids.segmenter] and record.x[2:record.length] == sep(ids, chunk)
        # whole documents, or one piece of a document longer than a record (which fills it)
        assert chunk[-1] == ids.end_of_text or (ids.end_of_text not in chunk and record.length == size)
    assert [t for chunk in chunks for t in chunk] == [t for doc in docs for t in causal_stream(encoder, ids, doc)
                                                      + [ids.end_of_text]]
    assert any(chunk.count(ids.end_of_text) >= 2 for chunk in chunks)   # short documents are still packed
    assert sum(ids.end_of_text not in chunk for chunk in chunks) >= 2    # the long one took several records
    packed = R.records_from_texts(encoder, docs, R.RecordOptions(mode="lm", num_context=size),
                                  class_ids=[3] * len(docs))
    assert any(r.y[r.length - 1] not in (-1, ids.end_of_text) and ids.end_of_text in r.x for r in packed)


def test_malformed_csv_row_names_the_line(tmp_path):
    (tmp_path / "a.txt").write_text("本文。\n", encoding="utf-8")
    listing = tmp_path / "list.csv"
    listing.write_text("filename,fileid\na.txt,1\na.txt,one\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"list\.csv line 3: expected 'filename,fileid'"):
        make(tmp_path, [listing])
    listing.write_text("filename,fileid\nmissing.txt,1\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"line 2: listed file .*missing\.txt does not exist"):
        make(tmp_path, [listing])
    listing.write_text("name,id\na.txt,1\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="does not start with the line 'filename,fileid'"):
        make(tmp_path, [listing])


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="empty.txt is empty"):
        make(tmp_path, [tmp_path / "empty.txt"])
    with pytest.raises(TokenizerError, match="no input file matches"):
        make(tmp_path, [tmp_path / "nothing*.txt"])
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_records(tmp_path):
    source = CORPUS[:1]
    output, _ = make(tmp_path, source, num_context=64, num_shards=3)
    before = (output / "lm_0000.tfrecord").read_bytes()
    with pytest.raises(TokenizerError, match="already has records .*--overwrite"):
        make(tmp_path, source, num_context=64, num_shards=2)
    assert (output / "lm_0000.tfrecord").read_bytes() == before
    make(tmp_path, source, num_context=64, num_shards=2, overwrite=True)
    assert sorted(p.name for p in output.iterdir()) == ["lm_0000.tfrecord", "lm_0001.tfrecord", "records.json"]


def test_cli_missing_input_is_one_line_exit_2(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "encode_swe.py"), "records", "--input",
                             str(tmp_path / "missing.txt"), "--output", str(tmp_path / "out"), "--mode", "lm"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.txt does not exist" in lines[0]
    assert lines[0].startswith("encode_swe.py records: error:")


def test_clean_applies_to_the_causal_part_only(encoder, ids):
    doc = "詳細は https://example.com/a を参照。"
    url = encoder.token_id("<URL>")
    lm = R.records_from_texts(encoder, [doc], R.RecordOptions(mode="lm", clean=True))[0]
    assert url in lm.x and url in lm.y
    assert url not in R.records_from_texts(encoder, [doc], R.RecordOptions(mode="lm"))[0].x
    mlm = R.records_from_texts(encoder, [doc], R.RecordOptions(mode="mlm", clean=True, num_mask=0))[0]
    assert url not in mlm.x and mlm.x[1:mlm.num_input] == plain_stream(encoder, ids, doc)
