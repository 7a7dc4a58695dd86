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
from model_dirs import TINY, original_weights, write_model_dir
from modeling.cli import UserError
from modeling.mtf_compat import tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = 32
BASE = dict(TINY, num_contexts=C, num_spout=8)
MARKERS = ("りんご", "みかん")   # the two classes' marker words


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random base model and records of two classes whose texts each repeat their own marker word."""
    root = tmp_path_factory.mktemp("finetune")
    write_model_dir(str(root / "base"), BASE, original_weights(BASE, seed=4))
    for cls, marker in enumerate(MARKERS):
        docs = [f"{marker}が{marker}で{marker}。" for _ in range(40)]
        (root / f"class{cls}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    (root / "classes.csv").write_text("filename,fileid\nclass0.txt,0\nclass1.txt,1\n", encoding="utf-8")
    subprocess.run([sys.executable, os.path.join(REPO, "encode_swe.py"), "records", "--input",
                    str(root / "classes.csv"), "--output", str(root / "records"), "--mode", "lm",
                    "--num_context", str(C), "--num_shards", "1", "--num_process", "1"], check=True)
    return root


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
    assert frozen and all(not n.startswith("pasts/") for n in frozen)
    for name in frozen:
        np.testing.assert_array_equal(base[name], tuned[name], err_msg=name)
    slotted = {n[:-len("/adam_m")] for n in tuned if n.endswith("/adam_m")}
    trained = {n for n in tuned if n.startswith(("model/", "pasts/")) and "/adam_" not in n} - set(frozen)
    assert slotted == trained
    assert {"model/ete", "model/mlp3/p2/bias", "pasts/out/kernel", "pasts/mlp0/kernel"} <= slotted
    assert tuned["pasts/out/kernel"].shape == (8, 4 * 2 * 32)
    params = json.load(open(out / "parameters.json"))["model_params"]
    assert params["num_ext_layers"] == 2 and params["num_switch_layers"] == 2
    lm = [json.loads(line)["lm_loss"] for line in open(out / "train_log.jsonl")]
    assert np.mean(lm[-3:]) < np.mean(lm[:3])
    # rerunning the same command resumes (here: already at --max_steps)
    finetune(setup, out, "--add_layers", "2", "--max_steps", "20")
    assert int(checkpoint(out)["global_step"]) == 20


def test_spout_only_and_bad_input(setup, tmp_path):
    finetune(setup, tmp_path / "spout", "--add_layers", "0", "--max_steps", "2", "--spout_vector", "onehot")
    tuned = checkpoint(tmp_path / "spout")
    assert {n[:-len("/adam_m")] for n in tuned if n.endswith("/adam_m")} == \
        {f"pasts/mlp{k}/kernel" for k in range(8)} | {"pasts/out/kernel"}
    with pytest.raises(UserError, match="not of this base"):
        finetune(setup, tmp_path / "spout", "--add_layers", "1", "--max_steps", "3")
    with pytest.raises(UserError, match="--add_layers must be >= 0"):
        finetune(setup, tmp_path / "neg", "--add_layers", "-1")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    with pytest.raises(UserError, match="not a fine-tuning directory"):
        finetune(setup, tmp_path / "other", "--max_steps", "1")
    assert (tmp_path / "other" / "file.txt").read_text() == "mine"
    with pytest.raises(UserError, match="not found"):
        finetune(setup, tmp_path / "x", "--base_model", str(tmp_path / "missing"))
