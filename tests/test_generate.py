"""Generation: the KV cache gives the same greedy tokens as re-running the whole window, sampling
filters are right (top-p keeps the crossing token), beam search is exact where exhaustive search is
possible, batching does not change results, the script's seed/JSONL/bad-input behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest

import run_generate
from encode_swe import SWEEncoder
from model_dirs import TINY, original_weights, write_model_dir
from modeling import decode, generation as G
from modeling.cli import UserError
from modeling.mesh import make_mesh
from modeling.mtf_compat import tf
from modeling.runtime import Runtime, open_model_dir
from reference_gptsan import reference_forward

V = 36000
IDS = {"start": V - 7, "segmenter": V - 2, "not_token": V - 4, "separator": V - 5, "end_of_text": V - 1,
       "bag": V - 3}


def special_ids(vocab: int) -> dict[str, int]:
    return {name: vocab - (V - value) for name, value in IDS.items()}


PARAMS = dict(TINY, num_contexts=32, capacity_factor_eval=100.0)   # the capacity drops nothing (so
WEIGHTS = dict(seed=5, scale=1.0)                                   # full-window and cached runs route alike)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random model (PARAMS, WEIGHTS)."""
    path = str(tmp_path_factory.mktemp("gen") / "model")
    write_model_dir(path, PARAMS, original_weights(PARAMS, **WEIGHTS))
    return path


def prompts_for(rng, spout: bool) -> list[G.Prompt]:
    prompts = [G.Prompt([], list(rng.randint(0, 30000, 5))), G.Prompt(list(rng.randint(0, 30000, 3)), [7, 8]),
               G.Prompt([], [])]
    for p in prompts:
        p.spout = rng.rand(8).astype(np.float32) if spout else None
    return prompts


def full_window_greedy(runtime: Runtime, prompt: G.Prompt, steps: int, spout: bool, ids, fed=None) -> list[int]:
    """Greedy decoding that re-runs the whole window for every token (the original's way), right-padded
    to the model's positions so one graph serves every step; ``fed`` maps a generated token to the one
    appended to the window."""
    window = runtime.config.num_contexts - int(spout)
    key = ("full window", spout)
    if key not in WINDOWS:
        WINDOWS[key] = runtime.forward(1, window, spout=spout)
    tokens, out = prompt.tokens(ids["start"], ids["segmenter"]), []
    for _ in range(steps):
        logits = runtime.run(WINDOWS[key], ["next_logits"], np.array([tokens + [0] * (window - len(tokens))]),
                             np.array([len(prompt.prefix) + 1]), np.array([len(tokens)]),
                             prompt.spout[None] if spout else None)["next_logits"][0]
        logits[[ids["not_token"], ids["separator"]]] = -np.inf
        out.append(int(np.argmax(logits)))
        tokens = tokens + [(fed or {}).get(out[-1], out[-1])]
        if out[-1] == ids["end_of_text"]:
            break
    return out


WINDOWS: dict = {}   # full-window graphs of the current runtime


@pytest.mark.parametrize("spout", [False, True])
def test_cached_greedy_equals_full_window_greedy_and_batching_changes_nothing(model, spout):
    md = open_model_dir(model)
    prompts = prompts_for(np.random.RandomState(1), spout)
    runtime = Runtime(md.config, make_mesh(""))
    WINDOWS.clear()
    length = max(len(p.tokens(0, 0)) for p in prompts)
    batched = G.Generator(runtime, 3, length, spout)
    single = G.Generator(runtime, 1, length, spout)
    runtime.restore(md.checkpoint)
    greedy = G.Sampling(top_k=1, max_generate=6)
    together = G.generate(batched, prompts, greedy, IDS, np.random.default_rng(0))
    for prompt, seq in zip(prompts, together):
        alone = G.generate(single, [prompt], greedy, IDS, np.random.default_rng(0))[0]
        assert seq.tokens == alone.tokens
        assert seq.tokens == full_window_greedy(runtime, prompt, len(seq.tokens), spout, IDS)
        np.testing.assert_allclose(seq.logprobs, alone.logprobs, rtol=1e-5, atol=1e-5)
    assert len({tuple(s.tokens) for s in together}) > 1   # the prompts really lead to different outputs
    # a model trained on our records is fed <|separator|> where it generated punctuation: here every
    # token it generates is fed back as that separator, and the cache must still match the full window
    fed = dict.fromkeys(range(V), IDS["separator"])
    for prompt, seq in zip(prompts, G.generate(batched, prompts, greedy, IDS, np.random.default_rng(0), fed=fed)):
        assert seq.tokens == full_window_greedy(runtime, prompt, len(seq.tokens), spout, IDS, fed)


@pytest.mark.parametrize("spout, ext", [(False, 0), (True, 2)])
def test_one_row_steps_match_reference(tmp_path, spout, ext):
    """A one-row generator's steps run ``modeling.decode`` (numpy): fed a known continuation, every
    step's logits equal the float64 reference's at that position within 1e-5 of the largest logit
    (with and without a spout and extra dense layers)."""
    params = dict(PARAMS, num_ext_layers=ext)
    write_model_dir(str(tmp_path), params, original_weights(params, **WEIGHTS))
    md = open_model_dir(str(tmp_path))
    rng = np.random.RandomState(7)
    prompt = G.Prompt(list(rng.randint(0, 30000, 3)), list(rng.randint(0, 30000, 4)),
                      rng.rand(8).astype(np.float32) if spout else None)
    continuation = list(rng.randint(0, 30000, 6))
    row = prompt.tokens(IDS["start"], IDS["segmenter"])
    runtime = Runtime(md.config, make_mesh(""))
    generator = G.Generator(runtime, 1, len(row), spout)
    assert isinstance(generator.cache, decode.NumpyCache)
    runtime.restore(md.checkpoint)
    generator.start()
    prefix = len(prompt.prefix) + 1
    logits = [generator.encode([row], [prefix], prompt.spout[None] if spout else None)[0]]
    for i, token in enumerate(continuation[:-1]):
        position = np.array([len(row) + i])
        logits.append(generator.next(np.array([token]), position, np.array([prefix]), np.array([1]))[0])
    runtime.close()
    sequence = row + continuation[:-1]
    ref = reference_forward(original_weights(params, **WEIGHTS), params, np.array([sequence]), [prefix],
                            [len(sequence)], prompt.spout[None] if spout else None)
    expected = ref["logits"][0, len(row) - 1:]
    error = np.max(np.abs(np.array(logits, np.float64) - expected)) / np.max(np.abs(expected))
    assert error <= 1e-5 and ref["margin"] > 1e-5, (error, ref["margin"])


def sampled_distribution(logits, banned=(), grid: int = 4000, **sampling) -> np.ndarray:
    """The probability of each token under the sampler: the share of ``grid`` evenly spaced uniform
    draws that pick it (exact up to 1/grid, since the sampler is an inverse CDF). ``logits`` [V] or
    [R, V]: R different rows sampled in one batch (then one distribution per row)."""
    logits = np.atleast_2d(np.asarray(logits, np.float32))
    rows, vocab = logits.shape
    uniform = np.tile((np.arange(grid) + 0.5) / grid, rows)
    batch = np.repeat(logits, grid, axis=0)
    tokens, logprobs = G.sample(batch, uniform, G.Sampling(**sampling), list(banned))
    np.testing.assert_allclose(logprobs, np.log(np.exp(batch) / np.exp(batch).sum(1, keepdims=True))[
        np.arange(len(batch)), tokens], rtol=1e-5)   # the model's own log-probability, whatever the filters
    counts = [np.bincount(row, minlength=vocab) / grid for row in tokens.reshape(rows, grid)]
    return counts[0] if rows == 1 else np.array(counts)


def test_sampler_filters_temperature_top_k_and_top_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)

    def close(got, expected):
        np.testing.assert_allclose(got, expected, atol=1.0 / 4000 + 1e-9)

    close(sampled_distribution(logits, top_k=0), probs)
    close(sampled_distribution(logits, top_k=0, top_p=0.6), [0.5 / 0.8, 0.3 / 0.8, 0, 0])  # token 1 crosses 0.6
    close(sampled_distribution(logits, top_k=0, top_p=0.5), [1, 0, 0, 0])    # token 0 alone reaches 0.5
    close(sampled_distribution(logits, top_k=0, top_p=0.81), np.r_[probs[:3] / 0.95, 0])
    close(sampled_distribution(logits, top_k=2, banned=[0]), [0, 0.3 / 0.45, 0.15 / 0.45, 0])
    close(sampled_distribution(logits, top_k=1, banned=[0]), [0, 1, 0, 0])   # greedy
    # temperature sharpens before top-p: at T=0.5 token 0 has 0.5^2/(sum of squares) = 0.68 > 0.6
    close(sampled_distribution(logits, top_k=0, top_p=0.6, temperature=0.5), [1, 0, 0, 0])
    squared = probs ** 2 / np.sum(probs ** 2)
    close(sampled_distribution(logits, top_k=3, temperature=0.5), np.r_[squared[:3] / squared[:3].sum(), 0])


def test_sampler_top_p_over_a_large_vocabulary():
    """600 tokens in one batch, a flat row (the 0.9 nucleus holds 529 tokens) and a peaked row (10
    tokens): the sampled distributions are the nucleus found by sorting, renormalised, row by row."""
    rng = np.random.RandomState(3)
    logits = np.stack([rng.randn(600) * 0.1, rng.randn(600) * 3.0])
    expected = []
    for row in logits:
        p = np.exp(row - row.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        inside = order[np.cumsum(p[order]) - p[order] < 0.9]
        kept = np.zeros_like(p)
        kept[inside] = p[inside] / p[inside].sum()
        expected.append(kept)
    assert np.count_nonzero(expected[0]) > 300 and np.count_nonzero(expected[1]) == 10   # 10 over ~128 bins
    grid = 4000   # 2/grid = 5e-4 is below every kept token's probability (>= 1.6e-3): a token wrongly kept or
    np.testing.assert_allclose(sampled_distribution(logits, grid=grid, top_k=0, top_p=0.9), expected,
                               atol=2.0 / grid)   # dropped fails the comparison


def test_nucleus_equals_sorting_the_whole_row():
    """The top-p threshold found among the top 1,024 tokens (all of them when those hold less than top_p)
    gives the set found by sorting all 20,000, for nuclei of under and over 1,024 tokens, normalised or
    not (the sampler passes exp(z - max z) and top_p times its sum); ties of the crossing token are kept."""
    rng = np.random.RandomState(5)
    sizes = []
    for scale, top_p in ((4.0, 0.5), (0.5, 0.3), (0.01, 0.95)):
        p = np.exp(rng.randn(20000) * scale)
        p /= p.sum()
        ranked = np.sort(p)[::-1]
        expected = np.flatnonzero(p >= ranked[np.searchsorted(np.cumsum(ranked), top_p)])
        np.testing.assert_array_equal(np.flatnonzero(p >= G.nucleus(p, top_p)), expected)
        unnormalised = p / p.max()
        mass = top_p * unnormalised.sum(dtype=np.float64)
        np.testing.assert_array_equal(np.flatnonzero(unnormalised >= G.nucleus(unnormalised, mass)), expected)
        sizes.append(len(expected))
    assert sizes[0] < 1024 < sizes[1] < sizes[2], sizes
    assert G.nucleus(np.array([0.3, 0.2, 0.2, 0.2, 0.1]), 0.4) == 0.2   # all three 0.2s are kept


def test_first_reaching_equals_a_running_sum():
    """The blockwise search for the index where a running sum reaches a target equals searching the
    full running sum: across blocks, next to a block's end, over zeros, at 0 and past the total (the
    two sum in different orders, so a target within rounding of a partial sum may go either way)."""
    rng = np.random.RandomState(9)
    values = rng.rand(5000) * (rng.rand(5000) < 0.7)          # 30 % zeros: flat steps of the sum
    running = np.cumsum(values)
    near_ends = [running[i] + delta for i in (1023, 2047) for delta in (-1e-9, 1e-9)]
    targets = list(rng.rand(200) * running[-1]) + near_ends + [0.0, running[-1] + 1.0]
    for target in targets:
        for strictly, side in ((False, "left"), (True, "right")):
            expected = min(np.searchsorted(running, target, side), len(values) - 1)
            assert G.first_reaching(values, target, strictly) == expected, (target, strictly)


def test_beam_search_finds_the_best_sequence_of_an_exhaustive_search(tmp_path):
    vocab = 12
    params = dict(TINY, num_vocabulary=vocab, num_contexts=16, num_spout=0)
    write_model_dir(str(tmp_path), params, original_weights(params, seed=2, scale=2.0))
    md = open_model_dir(str(tmp_path))
    ids = special_ids(vocab)
    prompt = G.Prompt([], [1, 2])
    runtime = Runtime(md.config, make_mesh(""))
    width = vocab - 2                      # every allowed first token survives: the search is exhaustive
    generator = G.Generator(runtime, width, len(prompt.tokens(0, 0)), False)
    runtime.restore(md.checkpoint)
    found = G.beam_search(generator, prompt, G.Sampling(max_generate=2, beam_width=width), ids)

    allowed = [t for t in range(vocab) if t not in (ids["not_token"], ids["separator"])]
    base = prompt.tokens(ids["start"], ids["segmenter"])

    def logp(tokens):   # log-probabilities of the next token after `tokens`
        forward = runtime.forward(1, len(tokens))
        logits = runtime.run(forward, ["logits"], np.array([tokens]), np.array([1]), np.array([len(tokens)]))
        return G.log_softmax(logits["logits"][0, -1])

    first = logp(base)
    candidates = []
    for a in allowed:
        if a == ids["end_of_text"]:
            candidates.append(((a,), first[a]))
            continue
        second = logp(base + [a])
        candidates += [((a, b), (first[a] + second[b]) / 2) for b in allowed]
    best = max(candidates, key=lambda c: c[1])
    assert tuple(found[0].tokens) == best[0]
    assert found[0].score == pytest.approx(best[1], abs=1e-5)
    assert [s.score for s in found] == sorted((s.score for s in found), reverse=True)


def test_output_ids_expand_the_bag_and_keep_byte_tokens():
    encoder = SWEEncoder.from_files()
    ids = {n: encoder.special_id(n) for n in ("start", "bag")}
    text = "ア\U0001d11e"          # a character the vocabulary spells with byte-fallback tokens
    tokens = encoder.encode(text)
    assert any(t in encoder.byte_ids for t in tokens)
    a = encoder.encode("あ")
    assert G.output_ids(a + [ids["bag"]], ids) == a * 3
    assert encoder.decode(G.output_ids(tokens + [encoder.special_id("end_of_text")], ids)) == text


def run(argv):
    run_generate.main(run_generate.build_parser().parse_args(argv))


def test_same_seed_same_samples_and_jsonl(model, tmp_path, capsys):
    outputs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        out = str(tmp_path / f"{name}.jsonl")
        run(["--model", model, "--context", "今日は", "--num_generate", "2", "--max_generate", "8", "--seed", seed,
             "--output", out, "--no_stream"])
        outputs.append([json.loads(line) for line in open(out, encoding="utf-8")])
    assert [r["tokens"] for r in outputs[0]] == [r["tokens"] for r in outputs[1]]
    assert [r["tokens"] for r in outputs[0]] != [r["tokens"] for r in outputs[2]]
    record = outputs[0][0]
    assert {"context", "prefix", "text", "tokens", "finish_reason", "logprobs", "seconds"} <= set(record)
    assert record["finish_reason"] in ("end_of_text", "length") and len(record["logprobs"]) == len(record["tokens"])


@pytest.mark.parametrize("argv, message", [
    (["--spout", "8"], "outside the spout"),
    (["--spout", "{npy}"], "has shape"),
    (["--output", "{existing}"], "already exists"),
])
def test_bad_input(model, tmp_path, argv, message):
    """(Flag ranges are refused by the parser: tests/test_bad_input.py.)"""
    npy, existing = tmp_path / "v.npy", tmp_path / "out.jsonl"
    np.save(npy, np.zeros(5))
    existing.write_text("keep")
    argv = [a.replace("{npy}", str(npy)).replace("{existing}", str(existing)) for a in argv]
    with pytest.raises(UserError, match=message):
        run(["--model", model, "--context", "x"] + argv)
    assert existing.read_text() == "keep"


def test_long_context_keeps_its_end_with_a_warning(model, capsys):
    run(["--model", model, "--context", "長い文章です。" * 20, "--max_generate", "3", "--top_k", "1", "--no_stream"])
    assert "keeping its last" in capsys.readouterr().err


def test_context_file_lines_and_jsonl(model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('今日は\n\n{"context": "明日は", "prefix": "天気"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    run(["--model", model, "--context_file", str(prompts), "--max_generate", "3", "--top_k", "1",
         "--batch_size", "2", "--output", str(out), "--no_stream"])
    records = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert [(r["context"], r["prefix"]) for r in records] == [("今日は", ""), ("明日は", "天気")]
    assert all(len(r["tokens"]) == 3 or r["finish_reason"] == "end_of_text" for r in records)


def test_multi_device_generation_equals_one_device(model):
    """The mesh path (heads and experts split over 'model', the cache read whole) gives the tokens
    and log-probabilities of the single-device path."""
    md = open_model_dir(model)
    prompts = prompts_for(np.random.RandomState(4), spout=True)
    length = max(len(p.tokens(0, 0)) for p in prompts)
    results = []
    for mesh in ("", "batch:1;model:2"):
        runtime = Runtime(md.config, make_mesh(mesh))
        generator = G.Generator(runtime, 3, length, True)
        runtime.restore(md.checkpoint)
        results.append(G.generate(generator, prompts, G.Sampling(top_k=1, max_generate=6), IDS,
                                  np.random.default_rng(0)))
        runtime.close()
    for one, split in zip(*results):
        assert one.tokens == split.tokens
        np.testing.assert_allclose(one.logprobs, split.logprobs, rtol=1e-5, atol=1e-5)


def test_weights_are_read_densely_so_steps_never_copy_them(model):
    """A gather straight from a weight variable (``ResourceGather``) switches it to copy-on-read, after
    which every dense read copies it: for the 36k-row ``wte`` that halved generation speed once. Only the
    key/value cache may be gathered from."""
    runtime = Runtime(open_model_dir(model).config, make_mesh(""))
    G.Generator(runtime, 2, 6, True)
    G.Generator(runtime, 1, 6, True)   # one row: modeling.decode's step
    gathered = {op.inputs[0].op.name for op in runtime.graph.get_operations() if op.type == "ResourceGather"}
    assert gathered and all(name.startswith("cache") for name in gathered), gathered


def test_one_row_steps_read_the_variables_in_place(model):
    """A one-row generator's numpy steps use views of the variables' buffers, taken anew by every
    ``start``: taken twice (the first ones still held), they are the same memory. Copies would put the
    model in memory twice and never see a later restore."""
    md = open_model_dir(model)
    runtime = Runtime(md.config, make_mesh(""))
    generator = G.Generator(runtime, 1, 6, False)
    runtime.restore(md.checkpoint)
    generator.start()
    first = dict(generator.cache.weights)
    generator.start()
    assert set(first) == {name for name in runtime.variable_shapes() if name.startswith("model/")}
    assert {k: v.ctypes.data for k, v in first.items()} == {k: v.ctypes.data for k, v in generator.cache.weights.items()}
    runtime.close()

