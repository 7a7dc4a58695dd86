"""The Hugging Face hub layout (config.json + safetensors under the port's names, spec §17.2/§17.4) is
read as it is: the same logits and greedy tokens as the same weights in our layout.

``hub_layout.write_hub_dir`` writes the directories from random weights through its own copy of the
spec's name mapping. float16 directories are compared with our layout holding the float16-rounded
weights: both then compute from identical float32 values, so the results must agree to float32
summation noise (we allow 1e-6 relative to the largest logit; observed 0)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import run_generate
import run_languagemodel
from hub_layout import write_hub_dir
from model_dirs import TINY, original_weights, write_model_dir
from modeling.cli import UserError
from modeling.mesh import make_mesh
from modeling.runtime import Runtime, open_model_dir

PARAMS = dict(TINY, num_ext_layers=1)   # default capacity: config.json has no capacity factor
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VOCABULARY, EMOJI = os.path.join(ROOT, "ja-swe36k.txt"), os.path.join(ROOT, "emoji.json")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Our layout (float32 and float16-rounded weights) and hub layouts of the same weights."""
    root = tmp_path_factory.mktemp("hub")
    weights = original_weights(PARAMS, seed=7)
    rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}
    made = {"ours32": str(root / "ours32"), "ours16": str(root / "ours16")}
    write_model_dir(made["ours32"], PARAMS, weights)
    write_model_dir(made["ours16"], PARAMS, rounded)
    for name, dtype, shards in (("hub32", np.float32, 1), ("hub32_sharded", np.float32, 3), ("hub16", np.float16, 1)):
        made[name] = str(root / name)
        write_hub_dir(made[name], weights, PARAMS, dtype, shards, VOCABULARY, EMOJI)
    return made


def logits_of(path: str, spout: bool) -> np.ndarray:
    md = open_model_dir(path)
    runtime = Runtime(md.config, make_mesh(""))
    forward = runtime.forward(2, 9, spout=spout)
    runtime.restore(md.checkpoint)
    rng = np.random.RandomState(1)
    out = runtime.run(forward, ["logits"], rng.randint(0, 36000, (2, 9)).astype(np.int32), np.array([3, 0]),
                      np.array([9, 6]), rng.rand(2, 8).astype(np.float32) if spout else None)
    runtime.close()
    return out["logits"]


@pytest.mark.parametrize("hub, ours", [("hub32", "ours32"), ("hub32_sharded", "ours32"), ("hub16", "ours16")])
def test_hub_layout_gives_the_logits_of_our_layout(dirs, hub, ours):
    for spout in (False, True):
        expected = logits_of(dirs[ours], spout)
        got = logits_of(dirs[hub], spout)
        assert np.max(np.abs(got - expected)) <= 1e-6 * np.max(np.abs(expected))


def test_scripts_read_a_hub_directory_as_it_is(dirs, tmp_path, capsys):
    before = sorted(os.listdir(dirs["hub16"]))
    for model in ("hub16", "ours16"):
        run_languagemodel.main(run_languagemodel.build_parser().parse_args(
            ["--model", dirs[model], "--context", "武田信玄は[MASK]の武将", "--output", str(tmp_path / f"{model}.json")]))
        run_generate.main(run_generate.build_parser().parse_args(
            ["--model", dirs[model], "--context", "武田信玄は", "--top_k", "1", "--max_generate", "5", "--no_stream",
             "--output", str(tmp_path / f"{model}.jsonl")]))
    capsys.readouterr()
    hub = json.loads((tmp_path / "hub16.json").read_text())
    ours = json.loads((tmp_path / "ours16.json").read_text())
    assert hub["output_tokens"] == ours["output_tokens"]
    np.testing.assert_allclose(hub["output_logprobs"], ours["output_logprobs"], rtol=1e-6, atol=1e-6)
    assert [json.loads(x)["tokens"] for x in (tmp_path / "hub16.jsonl").read_text().splitlines()] == \
        [json.loads(x)["tokens"] for x in (tmp_path / "ours16.jsonl").read_text().splitlines()]
    assert sorted(os.listdir(dirs["hub16"])) == before   # nothing written into the hub directory


def edited(source: str, target, change) -> str:
    """A copy of hub directory ``source`` with ``change(path)`` applied to it."""
    import shutil

    shutil.copytree(source, target)
    change(str(target))
    return str(target)


def rewrite_tensors(path: str, change) -> None:
    from safetensors.numpy import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file)


def set_config(path: str, **fields) -> None:
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config.update(fields)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def truncate(path: str) -> None:
    file = os.path.join(path, "model.safetensors")
    os.truncate(file, os.path.getsize(file) // 2)


def drop_vocabulary_lines(path: str, count: int) -> None:
    file = os.path.join(path, "vocab.txt")
    with open(file, encoding="utf-8") as f:
        lines = f.read().split("\n")
    with open(file, "w", encoding="utf-8") as f:
        f.write("\n".join(lines[count:]))


def only_torch_pickle(path: str) -> None:
    os.rename(os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin"))


BAD = {
    "other model type": (lambda p: set_config(p, model_type="t5"), "model_type 't5'"),
    "missing tensor": (lambda p: rewrite_tensors(p, lambda t: t.pop("model.blocks.1.feed_forward.norm.bias")),
                       "lack model.blocks.1.feed_forward.norm.bias"),
    "wrong shape": (lambda p: rewrite_tensors(p, lambda t: t.update({"model.last_project.bias": np.zeros(5, np.float16)})),
                    "model.last_project.bias has shape [5], config.json implies [32]"),
    "truncated": (truncate, "truncated"),
    "torch pickle only": (only_torch_pickle, "safetensors revision"),
    "config vocab_size": (lambda p: set_config(p, vocab_size=35000), "config.json implies [35000, 32]"),
    "vocab.txt size": (lambda p: drop_vocabulary_lines(p, 10), "vocab.txt"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_hub_directory_is_one_clear_error(dirs, tmp_path, case):
    change, message = BAD[case]
    path = edited(dirs["hub16"], tmp_path / "bad", change)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        md = open_model_dir(path)
        from modeling.runtime import load_tokenizer
        load_tokenizer(md)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_then_import_gives_back_every_weight(dirs, tmp_path, dtype, monkeypatch):
    """run_pretrain.py --export_format hf from our layout (extra layer, ete, spout), read back by the
    hub reader: every variable bitwise (float16: bitwise the float16-rounded value)."""
    import run_pretrain
    from modeling import hub
    from modeling.mtf_compat import tf

    monkeypatch.setattr(hub, "SHARD_BYTES", 1 << 20)   # several shards and an index, as for the 2.8B
    out = str(tmp_path / "exported")
    run_pretrain.main(run_pretrain.build_parser().parse_args(
        ["--model_dir", dirs["ours32"], "--export", out, "--export_format", "hf", "--export_dtype", dtype]))
    assert {"config.json", "vocab.txt", "emoji.json", "model.safetensors.index.json"} <= set(os.listdir(out))
    config = json.load(open(os.path.join(out, "config.json")))
    assert (config["model_type"], config["num_ext_layers"], config["d_spout"], config["torch_dtype"]) == \
        ("gptsan-japanese", 1, 8, dtype)
    ours = tf.train.load_checkpoint(open_model_dir(dirs["ours32"]).checkpoint)
    back = hub.HubWeights(out, open_model_dir(out).config)
    names = back.get_variable_to_shape_map()
    assert set(names) == {n for n in ours.get_variable_to_shape_map() if n.startswith(("model/", "pasts/"))}
    for name in names:
        expected = ours.get_tensor(name)
        if dtype == "float16":
            expected = expected.astype(np.float16).astype(np.float32)
        assert np.array_equal(back.get_tensor(name), expected), name


def test_bad_hub_directory_from_the_shell_is_one_line_and_exit_2(dirs, tmp_path):
    import subprocess
    import sys

    path = edited(dirs["hub16"], tmp_path / "pickle", only_torch_pickle)
    before = sorted(os.listdir(path))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "run_languagemodel.py"), "--model", path,
                             "--context", "x", "--output", str(tmp_path / "out.json")], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "safetensors revision" in result.stderr
    assert sorted(os.listdir(path)) == before and not (tmp_path / "out.json").exists()
