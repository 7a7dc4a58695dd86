"""Broken input to every script: one line on stderr, exit status 2, no traceback, and nothing on disk changed.

Each case runs the script's own ``cli.run`` (the path a shell user takes) in this process, so the whole
set stays fast; ``test_cli.py`` checks the same from a real shell for a few of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import encode_swe
import run_finetune
import run_generate
import run_languagemodel
import run_pretrain
from model_dirs import TINY, original_weights, write_model_dir
from modeling import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = 32
PARAMS = dict(TINY, num_contexts=C)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, records of it (a directory with records.json), a truncated copy of the model and
    files that only look like inputs."""
    root = tmp_path_factory.mktemp("bad")
    write_model_dir(str(root / "model"), PARAMS, original_weights(PARAMS, seed=1))
    (root / "text.txt").write_text("今日は晴れ。\n\n明日は雨。\n" * 40, encoding="utf-8")
    subprocess.run([sys.executable, os.path.join(REPO, "encode_swe.py"), "records", "--input", str(root / "text.txt"),
                    "--output", str(root / "records"), "--mode", "lm", "--num_context", str(C), "--num_shards", "1",
                    "--num_process", "1"], check=True, capture_output=True)
    truncated = root / "truncated"
    truncated.mkdir()
    for name in os.listdir(root / "model"):
        data = (root / "model" / name).read_bytes()
        (truncated / name).write_bytes(data[:len(data) // 2] if ".data-" in name else data)
    (truncated / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-0"\n')
    np.save(root / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (root / "text.npy").write_text("not numpy")
    np.save(root / "words.npy", np.array(["a"] * 8))
    (root / "params.json").write_text(json.dumps({"model_params": PARAMS}))
    return root


def snapshot(root) -> dict[str, tuple[int, int]]:
    return {os.path.join(d, f): (os.stat(os.path.join(d, f)).st_size, os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, names in os.walk(root) for f in names} | {d: (0, 0) for d, _, _ in os.walk(root)}


def refused(module, argv: list[str], world, capsys) -> str:
    """Run ``module`` as a shell user would; assert exit 2, one line, no traceback, no change on disk."""
    before = snapshot(world)
    capsys.readouterr()
    old_argv = sys.argv
    sys.argv = [module.__name__ + ".py", *argv]
    try:
        if module is encode_swe:   # its own main returns the exit status
            try:
                code = encode_swe.main(argv)
            except SystemExit as stop:
                code = stop.code
        else:
            with pytest.raises(SystemExit) as stop:
                cli.run(module.main, module.build_parser())
            code = stop.value.code
    finally:
        sys.argv = old_argv
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert snapshot(world) == before, "files changed"
    return lines[0]


def test_pretrain(world, tmp_path, capsys):
    new = ["--parameter_file", str(world / "params.json"), "--model_dir", str(world / "new"), "--max_steps", "1"]
    # 4: inputs are checked before the new model directory is made
    assert "matches no file" in refused(run_pretrain, new + ["--input_files", str(world / "nothing*")], world, capsys)
    assert not (world / "new").exists()
    # 3: a glob that also catches records.json names the file
    line = refused(run_pretrain, new + ["--input_files", str(world / "records" / "*")], world, capsys)
    assert "records.json is not a file of training records" in line
    line = refused(run_pretrain, new + ["--input_files", str(world / "model")], world, capsys)
    assert "directory without records.json" in line
    # 5: numeric flags are range-checked
    for flag, value in (("--learning_rate", "-1"), ("--learning_rate", "0"), ("--warmup_steps", "-5"),
                        ("--batch_size", "0"), ("--max_steps", "0"), ("--clip_gradients", "-1"),
                        ("--weight_decay", "2"), ("--keep_checkpoints", "0"), ("--eval_every", "0"),
                        ("--final_learning_rate", "nan"), ("--save_every", "x")):
        line = refused(run_pretrain, new + ["--input_files", str(world / "records"), flag, value], world, capsys)
        assert flag in line, line
    refused(run_pretrain, ["--model_dir", str(world / "new"), "--parameter_file", str(world / "text.txt")], world, capsys)


def test_pretrain_takes_a_records_directory(world, tmp_path):
    run_pretrain.main(run_pretrain.build_parser().parse_args(
        ["--parameter_file", str(world / "params.json"), "--model_dir", str(tmp_path / "m"), "--input_files",
         str(world / "records"), "--eval_files", str(world / "records"), "--max_steps", "2", "--batch_size", "2",
         "--eval_every", "2", "--eval_batches", "1", "--no_progress"]))
    assert [json.loads(line)["step"] for line in open(tmp_path / "m" / "train_log.jsonl")][-1] == 2


def test_finetune(world, tmp_path, capsys):
    common = ["--output", str(world / "ft"), "--input_files", str(world / "records"), "--max_steps", "1"]
    assert "not found" in refused(run_finetune, ["--base_model", str(world / "absent")] + common, world, capsys)
    for flag, value in (("--add_layers", "-1"), ("--learning_rate", "0"), ("--batch_size", "-2")):
        assert flag in refused(run_finetune, ["--base_model", str(world / "model"), flag, value] + common, world, capsys)
    assert "cannot be read" in refused(run_finetune, ["--base_model", str(world / "truncated")] + common, world,
                                       capsys)


def test_generate(world, capsys):
    model = ["--model", str(world / "model"), "--max_generate", "2"]
    for name, expected in (("objects.npy", "not a numpy array"), ("text.npy", "not a numpy array"),
                           ("words.npy", "numeric")):
        assert expected in refused(run_generate, model + ["--spout", str(world / name)], world, capsys)
    for flag, value in (("--top_p", "0"), ("--top_p", "1.5"), ("--temperature", "0"), ("--top_k", "-1"),
                        ("--max_generate", "0"), ("--num_generate", "0"), ("--batch_size", "0"), ("--seed", "-1")):
        assert flag in refused(run_generate, model + [flag, value], world, capsys)
    assert "cannot be read" in refused(run_generate, ["--model", str(world / "truncated")], world, capsys)
    assert "not found" in refused(run_generate, ["--model", str(world / "absent")], world, capsys)


def test_languagemodel(world, capsys):
    # 1: a truncated data file is named, not a TensorFlow traceback
    line = refused(run_languagemodel, ["--model", str(world / "truncated"), "--context", "今日は[MASK]"], world, capsys)
    assert "truncated" in line and "truncated" in line.split("cannot be read")[0]
    assert "--batch_size" in refused(run_languagemodel, ["--model", str(world / "model"), "--batch_size", "0"],
                                     world, capsys)


def test_generation_pads_the_batch_to_the_mesh(world, tmp_path, capsys):
    """7: one prompt on batch:2;model:2 with --batch_size 2 runs (an idle row fills the batch) and
    writes what one device writes."""
    texts = []
    for mesh in ("", "batch:2;model:2"):
        out = tmp_path / f"out{len(texts)}.jsonl"
        run_generate.main(run_generate.build_parser().parse_args(
            ["--model", str(world / "model"), "--context", "今日は", "--mesh_shape", mesh, "--batch_size", "2",
             "--max_generate", "4", "--top_k", "1", "--output", str(out), "--no_stream"]))
        texts.append([json.loads(line)["tokens"] for line in open(out)])
    assert len(texts[0]) == 1 and texts[0] == texts[1]


def test_encode_swe(world, capsys):
    records = ["records", "--input", str(world / "text.txt"), "--mode", "lm"]
    assert "already has records" in refused(encode_swe, records + ["--output", str(world / "records")], world, capsys)
    for flag, value in (("--num_shards", "0"), ("--num_context", "x"), ("--mode", "lmx")):
        line = refused(encode_swe, records + ["--output", str(world / "new"), flag, value], world, capsys)
        assert flag in line, line
    assert "does not exist" in refused(encode_swe, ["records", "--input", str(world / "absent.txt"), "--mode", "lm",
                                                    "--output", str(world / "new")], world, capsys)
    assert "is not JSON" in refused(encode_swe, ["decode", str(world / "text.txt")], world, capsys)
    refused(encode_swe, ["encode", "--vocabulary", str(world / "text.txt"), str(world / "text.txt")], world, capsys)
