"""run_finetune.py on tiny models: the output directory is built from the base as the original converter
did (without its defects), only the added layers and the spout train, the frozen weights stay bitwise
equal, reruns resume, and other bases are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import run_finetune
import run_generate
from model_dirs import TINY, original_shapes, original_weights, write_model_dir
from modeling.cli import UserError
from modeling.mtf_compat import tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = 32
BASE = dict(TINY, num_contexts=C, num_spout=8)
MARKERS = ("りんご", "みかん")   # the two classes' marker words
# With their newline and EOT these are 6 and 5 tokens, so a record (C - 2 = 30 tokens, one class each) holds
# whole documents and starts with one, whose first word only the spout can tell.
DOCUMENTS = ("りんご。", "みかんです。")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random base model and records of two classes whose texts each repeat their own marker word."""
    root = tmp_path_factory.mktemp("finetune")
    write_model_dir(str(root / "base"), BASE, original_weights(BASE, seed=4))
    for cls, document in enumerate(DOCUMENTS):
        (root / f"class{cls}.txt").write_text("\n\n".join([document] * 60) + "\n", encoding="utf-8")
    (root / "classes.csv").write_text("filename,fileid\nclass0.txt,0\nclass1.txt,1\n", encoding="utf-8")
    encode(root / "classes.csv", root / "records")
    return root


def encode(source, output):
    subprocess.run([sys.executable, os.path.join(REPO, "encode_swe.py"), "records", "--input", str(source),
                    "--output", str(output), "--mode", "lm", "--num_context", str(C), "--num_shards", "1",
                    "--num_process", "1"], check=True)


def finetune(setup, output, *extra):
    args = ["--base_model", str(setup / "base"), "--output", str(output), "--input_files",
            str(setup / "records" / "*.tfrecord"), "--no_progress", "--log_every", "1", "--batch_size", "4", *extra]
    run_finetune.main(run_finetune.build_parser().parse_args(args))


def checkpoint(directory):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(directory)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("model/", "pasts/", "global_step"))}   # not the input position


def test_only_added_layers_and_spout_train_and_frozen_weights_are_bitwise_equal(setup, tmp_path):
    out = tmp_path / "ft"
    finetune(setup, out, "--add_layers", "2", "--max_steps", "20", "--learning_rate", "1e-2",
             "--warmup_steps", "2", "--spout_vector", "onehot")
    base, tuned = checkpoint(setup / "base"), checkpoint(out)
    frozen = json.load(open(out / "ignore-params.json"))
    assert frozen and not any(n.startswith("pasts/") and "/mlp" not in n for n in frozen)   # the spout MLP is fixed
    for name in frozen:
        if name.startswith("pasts/"):   # the base's MLP (original init) was replaced by a fixed orthogonal one
            np.testing.assert_allclose(tuned[name] @ tuned[name].T, np.eye(8), atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(base[name], tuned[name], err_msg=name)
    slotted = {n[:-len("/adam_m")] for n in tuned if n.endswith("/adam_m")}
    trained = {n for n in tuned if n.startswith(("model/", "pasts/")) and "/adam_" not in n} - set(frozen)
    assert slotted == trained
    assert {"model/ete", "model/mlp3/p2/bias", "pasts/out/kernel"} <= slotted and "pasts/mlp0/kernel" not in slotted
    assert tuned["pasts/out/kernel"].shape == (8, 4 * 2 * 32)
    params = json.load(open(out / "parameters.json"))["model_params"]
    assert params["num_ext_layers"] == 2 and params["num_switch_layers"] == 2
    lm = [json.loads(line)["lm_loss"] for line in open(out / "train_log.jsonl")]
    assert np.mean(lm[-3:]) < np.mean(lm[:3])
    # rerunning the same command resumes (here: already at --max_steps)
    finetune(setup, out, "--add_layers", "2", "--max_steps", "20")
    assert int(checkpoint(out)["global_step"]) == 20


def test_same_fine_tuning_on_one_device_and_on_model2(setup, tmp_path):
    """With heads and experts split over 2 devices the frozen weights stay bitwise the base's and the
    losses equal one device's. (A split batch axis would also split the routing groups of these small
    batches, as in the original, and change which tokens overflow: see README.)"""
    common = ("--add_layers", "2", "--max_steps", "4", "--learning_rate", "1e-2", "--warmup_steps", "1",
              "--spout_vector", "onehot")
    finetune(setup, tmp_path / "one", *common)
    finetune(setup, tmp_path / "two", *common, "--mesh_shape", "batch:1;model:2")
    base, one, two = checkpoint(setup / "base"), checkpoint(tmp_path / "one"), checkpoint(tmp_path / "two")
    for name in json.load(open(tmp_path / "two" / "ignore-params.json")):   # the spout MLP: re-initialised
        np.testing.assert_array_equal(one[name] if name.startswith("pasts/") else base[name], two[name], err_msg=name)
    losses = [[json.loads(line)["loss"] for line in open(tmp_path / run / "train_log.jsonl")] for run in ("one", "two")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    # One device runs the frozen layers as the inference network and back-propagates to the spout by
    # tf.gradients; its gradients (the spout projection's among them) match the mesh model's, compared
    # through Adam's first moments, which sum them (the weights would not do: Adam's steps, near
    # lr·sign(g), amplify rounding).
    moments = [n for n in one if n.endswith("/adam_m")]
    assert "pasts/out/kernel/adam_m" in moments and np.abs(one["pasts/out/kernel/adam_m"]).max() > 1e-4
    for name in moments:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-3, atol=1e-3 * np.abs(one[name]).max(), err_msg=name)


def test_spout_only_and_bad_input(setup, tmp_path):
    finetune(setup, tmp_path / "spout", "--add_layers", "0", "--max_steps", "2", "--spout_vector", "onehot")
    tuned = checkpoint(tmp_path / "spout")
    assert {n[:-len("/adam_m")] for n in tuned if n.endswith("/adam_m")} == {"pasts/out/kernel"}
    with pytest.raises(UserError, match="not of this base"):
        finetune(setup, tmp_path / "spout", "--add_layers", "1", "--max_steps", "3")
    for flag, value in (("--add_layers", "-1"), ("--batch_size", "0")):   # refused by the flag parser
        with pytest.raises(SystemExit):
            finetune(setup, tmp_path / "zero", flag, value)
    assert not (tmp_path / "zero").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    with pytest.raises(UserError, match="not a fine-tuning directory"):
        finetune(setup, tmp_path / "other", "--max_steps", "1")
    assert (tmp_path / "other" / "file.txt").read_text() == "mine"
    with pytest.raises(UserError, match="not found"):
        finetune(setup, tmp_path / "x", "--base_model", str(tmp_path / "missing"))
    # from the shell: one line on stderr, exit status 2, the directory untouched
    result = subprocess.run([sys.executable, os.path.join(REPO, "run_finetune.py"), "--base_model", str(setup / "base"),
                             "--output", str(tmp_path / "other"), "--input_files",
                             str(setup / "records" / "*.tfrecord")], capture_output=True, text=True)
    assert result.returncode == 2 and "not a fine-tuning directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert os.listdir(tmp_path / "other") == ["file.txt"]
def test_one_hot_spout_steers_generation_by_class(setup, tmp_path, capsys):
    """Pretrain briefly with a uniform spout (as the release), then fine-tune 2 layers with one-hot classes."""
    import run_pretrain
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"model_params": BASE}))
    run_pretrain.main(run_pretrain.build_parser().parse_args(
        ["--parameter_file", str(params), "--model_dir", str(tmp_path / "pre"), "--input_files",
         str(setup / "records" / "*.tfrecord"), "--max_steps", "200", "--learning_rate", "1e-2", "--warmup_steps",
         "10", "--batch_size", "4", "--spout_vector", "uniform", "--no_progress", "--log_every", "50"]))
    out = tmp_path / "classes"
    finetune(setup, out, "--base_model", str(tmp_path / "pre"), "--add_layers", "2", "--max_steps", "200",
             "--learning_rate", "1e-2", "--warmup_steps", "10", "--spout_vector", "onehot", "--log_every", "50")
    for cls, marker in enumerate(MARKERS):
        samples = tmp_path / f"samples{cls}.jsonl"
        run_generate.main(run_generate.build_parser().parse_args(
            ["--model", str(out), "--spout", str(cls), "--num_generate", "10", "--max_generate", "8", "--top_k", "3",
             "--seed", "0", "--output", str(samples), "--no_stream"]))
        texts = [json.loads(line)["text"] for line in open(samples, encoding="utf-8")]
        hits = sum(marker in text and MARKERS[1 - cls] not in text for text in texts)
        assert hits >= 8, (cls, texts)


def test_class_ids_must_fit_the_spout(setup, tmp_path):
    """onehot takes ids < S = 8, half_onehot ids < 4; running record numbers are no classes."""
    (tmp_path / "big.csv").write_text(f"filename,fileid\n{setup / 'class0.txt'},5\n", encoding="utf-8")
    encode(tmp_path / "big.csv", tmp_path / "big")
    bare, old = tmp_path / "bare", tmp_path / "old"   # without records.json, or one from before max_class_id:
    for folder in (bare, old):                          # the ids are read from the records
        folder.mkdir()
        for shard in (tmp_path / "big").glob("*.tfrecord"):
            (folder / shard.name).write_bytes(shard.read_bytes())
    summary = json.loads((tmp_path / "big" / "records.json").read_text())
    assert summary.pop("max_class_id") == 5
    (old / "records.json").write_text(json.dumps(summary))
    encode(setup / "class0.txt", tmp_path / "numbered")
    finetune(setup, tmp_path / "ok", "--input_files", str(tmp_path / "big" / "*.tfrecord"), "--add_layers", "0",
             "--max_steps", "1", "--spout_vector", "onehot")
    for records, mode, message in ((tmp_path / "big", "half_onehot", "class id 5, but num_spout 8 allows ids 0..3"),
                                   (bare, "half_onehot", "class id 5, but num_spout 8 allows ids 0..3"),
                                   (old, "half_onehot", "class id 5, but num_spout 8 allows ids 0..3"),
                                   (tmp_path / "numbered", "onehot", "running record numbers")):
        with pytest.raises(UserError, match=message):
            finetune(setup, tmp_path / "refused", "--input_files", str(records / "*.tfrecord"), "--add_layers", "0",
                     "--max_steps", "1", "--spout_vector", mode)


def spout_outputs(directory, classes: int) -> np.ndarray:
    """Slow reference (spec §3.7): the spout's keys/values [classes, L·2·d] for the one-hot inputs."""
    weights = checkpoint(directory)
    outputs = []
    for k in range(classes):
        h = np.eye(weights["pasts/mlp0/kernel"].shape[0])[k]
        for layer in range(8):
            h = np.tanh(h @ weights[f"pasts/mlp{layer}/kernel"])
        outputs.append(h @ weights["pasts/out/kernel"])
    return np.array(outputs)


def test_spout_separation_tells_which_spout_mlps_keep_classes_apart():
    """The original's N(0, 0.01) init, a Gaussian fan-in init (some classes nearly collinear) and an MLP
    saturated into one output are replaced; random orthogonal kernels are kept."""
    from modeling.finetune import SEPARATED, initial_value, spout_separation
    rng = np.random.default_rng(0)
    for s in (8, 128):
        original = [0.01 * rng.standard_normal((s, s)) for _ in range(8)]
        saturated = [np.full((s, s), 3.0)] + [s ** -0.5 * rng.standard_normal((s, s)) for _ in range(7)]
        orthogonal = [initial_value(f"pasts/mlp{k}/kernel", (s, s), rng) for k in range(8)]
        np.testing.assert_allclose(orthogonal[0] @ orthogonal[0].T, np.eye(s), atol=1e-5)
        assert spout_separation(original) < 1e-6 and spout_separation(saturated) < 1e-6
        assert spout_separation(orthogonal) > 5 * SEPARATED
        h = np.eye(s)   # slow reference: the smallest singular value of the one-hot outputs
        for w in orthogonal:
            h = np.tanh(h @ w)
        np.testing.assert_allclose(spout_separation(orthogonal), np.linalg.svd(h)[1].min(), rtol=1e-6)
    assert spout_separation([s ** -0.5 * rng.standard_normal((8, 8)) for _ in range(8)]) < SEPARATED


def test_class_spouts_stay_apart_under_a_high_learning_rate(tmp_path):
    """The collapse of issue 16: from a base pretrained with a uniform spout, one-hot fine-tuning at
    learning rate 1e-2 used to drive the trained spout MLP's tanh layers into one saturated output
    for both classes (|o0 - o1| / |o| = 6e-5). The MLP is now a fixed feature map, so only the output
    projection moves, and the classes keep distinct keys and values; the separation is logged."""
    import class_tasks
    # marker words that the tokenizer fuses with the sentence before them: only the spout (and earlier
    # documents of the record) tell the class
    task = class_tasks.Task("fused", ("にゃん", "ござる"), "{s}{m}。", (), C)
    records = class_tasks.write_records(task, tmp_path)
    base = class_tasks.pretrain_base(task, records, tmp_path, "uniform")
    out = class_tasks.finetune(base, records, tmp_path / "ft", "--max_steps", "200", "--learning_rate", "1e-2",
                               "--warmup_steps", "10", "--batch_size", "4", "--log_every", "20")
    o = spout_outputs(out, 2)
    assert np.linalg.norm(o[0] - o[1]) > 0.3 * np.linalg.norm(o, axis=1).mean()
    logged = [json.loads(line).get("spout_separation") for line in open(out / "train_log.jsonl")]
    assert len(logged) == 10 and all(value is None or value > 0.3 for value in logged), logged
    assert sum(value is not None for value in logged) >= 5   # batches of 4 usually hold both classes


def test_spout_created_for_a_base_pretrained_without_one(setup, tmp_path, capsys):
    """A base pretrained without --spout_vector has no pasts/* weights: the spout is created fresh (and
    said so), its MLP frozen and its projection trained, and the position embeddings move one place up."""
    import run_pretrain
    (tmp_path / "params.json").write_text(json.dumps({"model_params": BASE}))
    run_pretrain.main(run_pretrain.build_parser().parse_args(
        ["--parameter_file", str(tmp_path / "params.json"), "--model_dir", str(tmp_path / "pre"), "--input_files",
         str(setup / "records" / "*.tfrecord"), "--max_steps", "2", "--batch_size", "4", "--no_progress"]))
    assert not any(n.startswith("pasts/") for n in checkpoint(tmp_path / "pre"))
    finetune(setup, tmp_path / "ft", "--base_model", str(tmp_path / "pre"), "--add_layers", "1", "--max_steps", "3",
             "--spout_vector", "onehot")
    assert "has no spout weights" in capsys.readouterr().err
    tuned, base = checkpoint(tmp_path / "ft"), checkpoint(tmp_path / "pre")
    # the spout takes position 0: every token keeps the position embedding it was pretrained with
    np.testing.assert_array_equal(tuned["model/wpe"][1:], base["model/wpe"][:-1])
    frozen = set(json.load(open(tmp_path / "ft" / "ignore-params.json")))
    assert {f"pasts/mlp{k}/kernel" for k in range(8)} <= frozen and "pasts/out/kernel" not in frozen
    assert "pasts/out/kernel/adam_m" in tuned and "pasts/mlp0/kernel/adam_m" not in tuned


def test_no_backward_pass_through_the_frozen_backbone_without_a_spout(setup):
    """Without a trained spout nothing before the added layers needs a gradient, so the training graph has
    no backward op in the frozen layers 0-1 and keeps none of their activations; a spout, which every
    layer attends to, needs the backward pass through all of them. On one device the frozen layers run
    as one direct op (the inference network), on a mesh as lowered layers."""
    import re

    from modeling.config import config_from_dict
    from modeling.mesh import make_mesh
    from modeling.training import Settings, build, frozen_layers

    config = config_from_dict(dict(BASE, num_ext_layers=2))
    frozen = frozenset(n for n in original_shapes(BASE) if not n.startswith("pasts/"))
    assert frozen_layers(config, frozen) == 2 and frozen_layers(config, frozen - {"model/ln1/b"}) == 1
    assert frozen_layers(config, frozen - {"model/wpe"}) == 0
    backbone = {"": re.compile(r"direct_layers/gradients"),
                "batch:1;model:2": re.compile(r"model/(att|moe|an|ln)[01]/.*/gradients")}
    for mesh, pattern in backbone.items():
        for spout, expected in (("none", False), ("onehot", True)):
            settings = Settings(input_files=[str(next((setup / "records").glob("*.tfrecord")))], batch_size=2,
                                spout_vector=spout, frozen=frozen)
            names = [op.name for op in build(config, settings, make_mesh(mesh)).graph.get_operations()]
            assert any("model/att3/" in n and "/gradients" in n for n in names)   # the added layers train
            assert any("direct_layers" in n for n in names) == (mesh == "")
            assert any(pattern.search(n) for n in names) == expected, (mesh, spout)


def test_fine_tuning_starts_from_a_hub_directory(setup, tmp_path):
    """--base_model may be the Hugging Face hub layout: the new directory holds the same weights as from
    our layout, in ours, and trains."""
    from hub_layout import write_hub_dir

    hub = tmp_path / "hub"
    weights = original_weights(BASE, seed=4)
    write_hub_dir(str(hub), weights, BASE, vocabulary=os.path.join(REPO, "ja-swe36k.txt"))
    out = tmp_path / "ft"
    args = ["--base_model", str(hub), "--output", str(out), "--input_files", str(setup / "records" / "*.tfrecord"),
            "--no_progress", "--batch_size", "4", "--add_layers", "1", "--max_steps", "2"]
    run_finetune.main(run_finetune.build_parser().parse_args(args))
    tuned = checkpoint(out)
    for name in json.load(open(out / "ignore-params.json")):
        if not name.startswith("pasts/"):   # the spout MLP of the original init is replaced
            np.testing.assert_array_equal(weights[name], tuned[name], err_msg=name)
    assert int(tuned["global_step"]) == 2
    assert sorted(os.listdir(hub)) == ["config.json", "model.safetensors", "vocab.txt"]   # nothing written there
