"""run_languagemodel.py: [MASK] filling, scores, vectors, batch mode and bad input, on a tiny model.

The expected values come from the model's own logits and hidden states (fetched directly through the
runtime), so these tests check the script's bookkeeping: input layout, shifting, mask filling,
which position's vector is exported, and the JSON/JSONL files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import run_languagemodel
from encode_swe import SWEEncoder
from model_dirs import TINY, original_weights, write_model_dir
from modeling.cli import UserError
from modeling.mesh import make_mesh
from modeling.runtime import Runtime, open_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS = dict(TINY, num_contexts=40)
TEXT = "東京は[MASK]の首都で、[MASK]が多い。"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lm") / "model")
    write_model_dir(path, PARAMS, original_weights(PARAMS, seed=3))
    return path


@pytest.fixture(scope="module")
def lm_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lm") / "plain")
    params = dict(PARAMS, train_mode="lm")
    write_model_dir(path, params, original_weights(params, seed=3))
    return path


def run(argv: list[str]) -> None:
    run_languagemodel.main(run_languagemodel.build_parser().parse_args(argv))


def model_outputs(path: str, tokens: list[int], prefix: int) -> dict[str, np.ndarray]:
    model_dir = open_model_dir(path)
    runtime = Runtime(model_dir.config, make_mesh(""))
    forward = runtime.forward(1, len(tokens))
    runtime.restore(model_dir.checkpoint)
    out = runtime.run(forward, ["logits", "hidden"], np.array([tokens]), np.array([prefix]),
                      np.array([len(tokens)]))
    return {k: v[0] for k, v in out.items()}


def test_mask_filling_matches_the_model(model, tmp_path, capsys):
    out_file = str(tmp_path / "out.json")
    run(["--model", model, "--context", TEXT, "--output", out_file])
    stdout = capsys.readouterr().out
    for section in ("{OUTPUT TEXTS}", "{OUTPUT TOKENS}", "{OUTPUT SCORES}", "{OUTPUT VECTOR SHAPE}"):
        assert section in stdout
    result = json.load(open(out_file, encoding="utf-8"))

    encoder = SWEEncoder.from_files()
    sot, msk, seg = (encoder.special_id(n) for n in ("start", "mask", "segmenter"))
    pieces = [encoder.encode(p) for p in TEXT.split("[MASK]")]
    context = pieces[0] + [msk] + pieces[1] + [msk] + pieces[2]
    tokens = [sot] + context + [seg]
    assert result["input_tokens"] == tokens and result["input_text"] == TEXT

    ref = model_outputs(model, tokens, prefix=len(tokens) - 1)   # the whole context is the prefix
    logits = ref["logits"].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected_tokens, expected_scores, expected_logprobs = [], [], []
    for p in range(1, len(tokens) - 1):          # every context token, predicted at p - 1
        token = int(np.argmax(logits[p - 1])) if tokens[p] == msk else tokens[p]
        expected_tokens.append(token)
        expected_scores.append(logits[p - 1, tokens[p]])
        expected_logprobs.append(log_probs[p - 1, token])
    assert result["output_tokens"] == expected_tokens
    assert result["output_text"] == encoder.decode(expected_tokens)
    np.testing.assert_allclose(result["output_scores"], expected_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["output_logprobs"], expected_logprobs, rtol=1e-5, atol=1e-5)

    mask_positions = [p for p, t in enumerate(tokens) if t == msk]
    assert [m["position"] for m in result["masks"]] == mask_positions
    for mask in result["masks"]:
        top5 = np.argsort(-logits[mask["position"] - 1])[:5]
        assert [c["token"] for c in mask["candidates"]] == top5.tolist()
        np.testing.assert_allclose([c["logprob"] for c in mask["candidates"]],
                                   log_probs[mask["position"] - 1, top5], rtol=1e-5, atol=1e-5)
        assert mask["text"] == encoder.decode([mask["token"]])
    # default --pos_vector: the last position (the segmenter), all layers concatenated
    assert result["pos_vector"] == len(tokens) - 1
    np.testing.assert_allclose(result["output_vector"], ref["hidden"][:, -1, :].reshape(-1), rtol=1e-5, atol=1e-6)
    assert len(result["output_vector"]) == PARAMS["num_switch_layers"] * PARAMS["num_hidden"]


def test_pos_vector_picks_that_position(model, tmp_path):
    out_file = str(tmp_path / "out.json")
    run(["--model", model, "--context", "こんにちは", "--pos_vector", "1", "--output", out_file])
    result = json.load(open(out_file, encoding="utf-8"))
    ref = model_outputs(model, result["input_tokens"], prefix=len(result["input_tokens"]) - 1)
    np.testing.assert_allclose(result["output_vector"], ref["hidden"][:, 1, :].reshape(-1), rtol=1e-5, atol=1e-6)


def test_plain_lm_model_has_no_prefix_and_refuses_masks(lm_model, tmp_path):
    out_file = str(tmp_path / "out.json")
    run(["--model", lm_model, "--context", "今日は晴れ", "--output", out_file])
    result = json.load(open(out_file, encoding="utf-8"))
    encoder = SWEEncoder.from_files()
    tokens = result["input_tokens"]
    assert tokens[:2] == [encoder.special_id("start"), encoder.special_id("segmenter")]
    ref = model_outputs(lm_model, tokens, prefix=0)
    np.testing.assert_allclose(result["output_scores"], [ref["logits"][p - 1, tokens[p]] for p in range(2, len(tokens))],
                               rtol=1e-5, atol=1e-5)
    assert result["output_text"] == "今日は晴れ"
    with pytest.raises(UserError, match="plain LM"):
        run(["--model", lm_model, "--context", "今日は[MASK]"])


def test_batch_mode_equals_one_by_one(model, tmp_path):
    lines = ["東京は[MASK]です。", '{"context": "[MASK]が好き", "id": 7}', "", "長い文章の例です。[MASK]を埋めます。"]
    input_file = tmp_path / "in.txt"
    input_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    batched, single = str(tmp_path / "batched.jsonl"), str(tmp_path / "single.jsonl")
    run(["--model", model, "--input_file", str(input_file), "--batch_size", "3", "--output", batched])
    run(["--model", model, "--input_file", str(input_file), "--batch_size", "1", "--output", single])
    a = [json.loads(line) for line in open(batched, encoding="utf-8")]
    b = [json.loads(line) for line in open(single, encoding="utf-8")]
    assert len(a) == len(b) == 3
    assert [x["input_text"] for x in a] == ["東京は[MASK]です。", "[MASK]が好き", "長い文章の例です。[MASK]を埋めます。"]
    assert a[1]["id"] == 7
    for x, y in zip(a, b):
        assert x["output_tokens"] == y["output_tokens"]
        np.testing.assert_allclose(x["output_scores"], y["output_scores"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(x["output_vector"], y["output_vector"], rtol=1e-5, atol=1e-5)


def test_batches_group_similar_lengths_and_cover_every_input_once():
    """Padded lengths: multiples of 8 up to 64, then quarter-octave steps (at most 7 tokens or 25 %), never
    beyond num_contexts; windows are sorted by length, cut into full batches, and keep input order."""
    from modeling.languagemodel import Example, bucket_length, plan_batches

    assert [bucket_length(n, 1280) for n in (1, 8, 9, 33, 64, 65, 129, 1000, 1279)] == \
        [8, 8, 16, 40, 64, 80, 160, 1024, 1280]
    assert all(n <= bucket_length(n, 1280) <= max(n + 7, 1.25 * n) for n in range(1, 1281))
    assert len({bucket_length(n, 1280) for n in range(1, 1281)}) == 25
    assert bucket_length(30, 24) == 24
    rng = np.random.default_rng(0)
    examples = [Example("", [0] * int(n), 0, 1, 0) for n in rng.integers(1, 200, 100)]
    windows = list(plan_batches(examples, batch_size=4, num_contexts=256, window=5))
    assert len(windows) == 5                                 # 100 inputs / (5 x 4)
    seen = []
    for number, window in enumerate(windows):
        indices = [i for _, chunk in window for i in chunk]
        assert sorted(indices) == list(range(20 * number, 20 * number + 20))
        assert all(len(chunk) == 4 for _, chunk in window)
        for length, chunk in window:
            assert all(len(examples[i].tokens) <= length for i in chunk)
        seen += indices
    assert sorted(seen) == list(range(100))


@pytest.mark.parametrize("argv, message", [
    (["--context", "x", "--pos_vector", "99"], "--pos_vector 99"),
    (["--context", "長" * 60], "positions"),
    (["--context", "x", "--vocabulary", "{small_vocab}"], "tokens but the model has"),
])
def test_bad_input_is_one_clear_error(model, tmp_path, argv, message):
    small_vocab = tmp_path / "vocab.txt"
    small_vocab.write_text("\n".join(open(os.path.join(REPO, "ja-swe36k.txt"), encoding="utf-8")
                                     .read().split("\n")[100:]), encoding="utf-8")
    argv = [a.replace("{small_vocab}", str(small_vocab)) for a in argv]
    with pytest.raises(UserError, match=message):
        run(["--model", model] + argv)


def test_existing_output_is_kept_and_exit_status_is_2(model, tmp_path):
    out_file = tmp_path / "out.json"
    out_file.write_text("precious", encoding="utf-8")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run_languagemodel.py"), "--model", model,
                           "--context", "x", "--output", str(out_file)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert out_file.read_text(encoding="utf-8") == "precious"
    missing = subprocess.run([sys.executable, os.path.join(REPO, "run_languagemodel.py"), "--model",
                              str(tmp_path / "nope"), "--context", "x"], capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
