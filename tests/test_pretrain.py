"""run_pretrain.py on a tiny model: the loss falls, any mesh trains the same, a SIGKILLed and restarted
run ends with the same weights as an uninterrupted one, lock/SIGTERM/max_steps behave for cron, NaN
stops cleanly, and the export loads everywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import run_languagemodel
import run_pretrain
from modeling.cli import UserError
from modeling.mtf_compat import tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C, V = 32, 36000
# expert_group_size 32 gives the same routing groups on 1 device and on batch:2 (spec §3.5 rule)
MODEL = {"num_contexts": C, "num_switch_layers": 2, "num_hidden": 32, "num_header": 4, "num_experts": 4,
         "num_vocabulary": V, "num_spout": 8, "train_mode": "hybrid", "expert_group_size": 32}


def feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """64 LM records of a repetitive toy language (so the loss can fall fast), a parameter file."""
    root = tmp_path_factory.mktemp("pretrain")
    rng = np.random.RandomState(0)
    with tf.io.TFRecordWriter(str(root / "train.tfrecord")) as writer:
        for record in range(64):
            n = rng.randint(12, C)
            start = rng.randint(0, 20)
            text = [(start + k) % 20 for k in range(n - 3)]
            x = [V - 7, V - 2] + text + [V - 1] + [V - 4] * (C - n)
            y = [-1] + text + [V - 1, -1] + [-1] * (C - n)
            example = tf.train.Example(features=tf.train.Features(feature={
                "x": feature(x), "y": feature(y), "i": feature([record % 3]), "num_input": feature([1])}))
            writer.write(example.SerializeToString())
    (root / "params.json").write_text(json.dumps({"train_params": {"batch_size": 4}, "model_params": MODEL}))
    return root


def argv(data, model_dir, *extra):
    return ["--parameter_file", str(data / "params.json"), "--model_dir", str(model_dir), "--input_files",
            str(data / "train.tfrecord"), "--no_progress", "--log_every", "1", *extra]


def train(args):
    run_pretrain.main(run_pretrain.build_parser().parse_args(args))


def losses(model_dir, key="lm_loss"):
    return [json.loads(line)[key] for line in open(os.path.join(model_dir, "train_log.jsonl")) if key in line]


def weights(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("model/", "pasts/", "global_step"))}


def test_loss_falls_and_log_and_tensorboard_are_written(data, tmp_path):
    train(argv(data, tmp_path / "m", "--max_steps", "40", "--learning_rate", "1e-2", "--warmup_steps", "5",
               "--eval_files", str(data / "train.tfrecord"), "--eval_every", "20", "--eval_batches", "4"))
    lm = losses(tmp_path / "m")
    held_out = [json.loads(line) for line in open(tmp_path / "m" / "train_log.jsonl") if "eval_loss" in line]
    assert [r["step"] for r in held_out] == [20, 40] and held_out[1]["eval_loss"] < held_out[0]["eval_loss"]
    assert held_out[1]["eval_perplexity"] == pytest.approx(np.exp(held_out[1]["eval_loss"]))
    assert len(lm) == 40 and np.mean(lm[-5:]) < 0.6 * np.mean(lm[:5])
    record = [json.loads(line) for line in open(tmp_path / "m" / "train_log.jsonl") if "lm_loss" in line][-1]
    assert {"loss", "aux_loss", "learning_rate", "grad_norm", "tokens_per_second", "expert_fraction",
            "dropped_fraction"} <= set(record)
    assert np.allclose(np.sum(record["expert_fraction"], axis=1), 1.0, atol=1e-4)
    assert os.listdir(tmp_path / "m" / "train")   # TensorBoard event file
    assert json.load(open(tmp_path / "m" / "parameters.json"))["model_params"]["train_mode"] == "hybrid"  # D20


def test_same_losses_on_one_device_and_on_batch2_model2(data, tmp_path):
    common = ("--max_steps", "4", "--learning_rate", "1e-2", "--warmup_steps", "1", "--spout_vector", "uniform")
    train(argv(data, tmp_path / "one", *common))
    train(argv(data, tmp_path / "four", *common, "--mesh_shape", "batch:2;model:2"))
    np.testing.assert_allclose(losses(tmp_path / "four", "loss"), losses(tmp_path / "one", "loss"), rtol=1e-5)


def run_cli(args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "run_pretrain.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkill_and_restart_ends_with_the_same_weights(data, tmp_path):
    common = ("--max_steps", "120", "--save_every", "5", "--spout_vector", "uniform", "--learning_rate", "1e-2")
    straight = run_cli(argv(data, tmp_path / "straight", *common))
    assert straight.wait() == 0, straight.stderr.read()
    killed = run_cli(argv(data, tmp_path / "killed", *common))
    wait_for(tmp_path / "killed" / "model.ckpt-15.index", killed)   # written before the state file names it,
    killed.send_signal(signal.SIGKILL)                              # so the latest is at least ckpt-10
    assert killed.wait() == -signal.SIGKILL
    killed_at = int(tf.train.latest_checkpoint(str(tmp_path / "killed")).rsplit("-", 1)[1])
    assert 10 <= killed_at < 120
    resumed = run_cli(argv(data, tmp_path / "killed", *common))   # a stale lock of a dead process is taken over
    assert resumed.wait() == 0, resumed.stderr.read()
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert a.keys() == b.keys() and int(a["global_step"]) == 120
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # log lines match too (the killed run's unsaved lines were dropped and redone)
    assert losses(tmp_path / "straight") == losses(tmp_path / "killed")
    again = run_cli(argv(data, tmp_path / "killed", *common))       # at --max_steps: exits 0 at once
    assert again.wait() == 0 and "nothing to do" in again.stdout.read()


def test_sigterm_saves_and_exits_0_and_a_live_lock_refuses(data, tmp_path):
    model_dir = tmp_path / "m"
    trainer = run_cli(argv(data, model_dir, "--max_steps", "100000", "--save_every", "100000"))
    try:
        wait_for(model_dir / "trainer.lock", trainer)
        second = run_cli(argv(data, model_dir, "--max_steps", "100000"))
        assert second.wait() == 2
        message = second.stderr.read()
        assert "another trainer" in message and "Traceback" not in message and len(message.strip().splitlines()) == 1
        time.sleep(3)
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(timeout=120) == 0, trainer.stderr.read()
    finally:
        if trainer.poll() is None:   # never leave a 100,000-step trainer behind
            trainer.kill()
    step = int(tf.train.load_variable(tf.train.latest_checkpoint(str(model_dir)), "global_step"))
    assert 0 < step < 100000
    assert not (model_dir / "trainer.lock").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    train(argv(data, tmp_path / "m", "--max_steps", "4"))
    with pytest.raises(UserError, match="the loss became"):
        train(argv(data, tmp_path / "m", "--max_steps", "50", "--save_every", "1", "--learning_rate", "1e30",
                   "--warmup_steps", "1", "--clip_gradients", "0"))
    kept = weights(tmp_path / "m")
    assert all(np.isfinite(v).all() for v in kept.values()) and int(kept["global_step"]) >= 4


def test_export_has_no_optimizer_slots_and_loads_in_run_languagemodel(data, tmp_path, capsys):
    train(argv(data, tmp_path / "m", "--max_steps", "3"))
    run_pretrain.main(run_pretrain.build_parser().parse_args(
        ["--model_dir", str(tmp_path / "m"), "--export", str(tmp_path / "release")]))
    names = set(dict(tf.train.list_variables(str(tmp_path / "release"))))
    assert "model/wte" in names and not any("adam" in n for n in names)
    assert {"parameters.json", "ja-swe36k.txt", "emoji.json", "checkpoint"} <= set(os.listdir(tmp_path / "release"))
    run_languagemodel.main(run_languagemodel.build_parser().parse_args(
        ["--model", str(tmp_path / "release"), "--context", "東京は[MASK]です"]))
    assert "{OUTPUT TEXTS}" in capsys.readouterr().out
    with pytest.raises(UserError, match="already exists"):
        run_pretrain.main(run_pretrain.build_parser().parse_args(
            ["--model_dir", str(tmp_path / "m"), "--export", str(tmp_path / "release")]))


def test_bad_input_is_one_clear_error(data, tmp_path):
    with pytest.raises(UserError, match="matches no file"):
        train(argv(data, tmp_path / "a", "--max_steps", "1", "--input_files", str(tmp_path / "nope*.tfrecord")))
    short = tmp_path / "params24.json"
    short.write_text(json.dumps({"model_params": {**MODEL, "num_contexts": 24}}))
    with pytest.raises(UserError, match="have 32 tokens but the model has num_contexts 24"):
        train(argv(data, tmp_path / "b", "--max_steps", "1", "--parameter_file", str(short)))
    with pytest.raises(UserError, match="first run needs --parameter_file"):
        train(["--model_dir", str(tmp_path / "c"), "--input_files", str(data / "train.tfrecord")])


def test_records_shorter_than_the_context_train_on_the_first_positions(data, tmp_path):
    """32-token records on a 40-position model (with a spout: no token is dropped, D14), one length only."""
    longer = tmp_path / "params40.json"
    longer.write_text(json.dumps({"train_params": {"batch_size": 4}, "model_params": {**MODEL, "num_contexts": 40}}))
    train(argv(data, tmp_path / "m", "--max_steps", "20", "--parameter_file", str(longer), "--learning_rate", "1e-2",
               "--warmup_steps", "1", "--spout_vector", "onehot"))
    lm = losses(tmp_path / "m")
    assert weights(tmp_path / "m")["model/wpe"].shape == (40, 32) and np.mean(lm[-3:]) < np.mean(lm[:3])
    with tf.io.TFRecordWriter(str(tmp_path / "short.tfrecord")) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "x": feature([1] * 16), "y": feature([1] * 16), "i": feature([0]), "num_input": feature([1])})
        ).SerializeToString())
    with pytest.raises(UserError, match="short.tfrecord have 16 tokens but those in .*train.tfrecord have 32"):
        train(argv(data, tmp_path / "n", "--max_steps", "1", "--input_files", str(data / "train.tfrecord"),
                   str(tmp_path / "short.tfrecord")))


def test_low_precision_trains_and_float16_scales_the_loss(data, tmp_path):
    train(argv(data, tmp_path / "fp16", "--max_steps", "4", "--learning_rate", "1e-2", "--warmup_steps", "1",
               "--use_mixed_precision"))
    scales = losses(tmp_path / "fp16", "loss_scale")
    assert scales and all(s >= 1.0 for s in scales)
    train(argv(data, tmp_path / "bf16", "--max_steps", "6", "--learning_rate", "1e-2", "--warmup_steps", "1",
               "--use_bfloat16"))
    lm = losses(tmp_path / "bf16")
    assert np.isfinite(lm).all() and lm[-1] < lm[0]
    with pytest.raises(UserError, match="adafactor needs float32"):
        train(argv(data, tmp_path / "x", "--max_steps", "1", "--optimizer", "adafactor", "--use_bfloat16"))


def test_spout_modes_give_the_vectors_of_spec_15_4():
    """onehot / half_onehot from the class id, noise fixed per record (stateless_uniform) or fresh per
    step (uniform), all in [0, 1); none gives no spout."""
    from modeling.training import spout_inputs

    ids, s = np.array([0, 3, 5, 3]), 8

    def vectors(mode, step):
        with tf.Graph().as_default(), tf.Session() as session:
            return session.run(spout_inputs(mode, tf.constant(ids, tf.int64), s, tf.constant([7, step], tf.int64)))

    assert spout_inputs("none", tf.constant(ids), s, tf.constant([7, 0], tf.int64)) is None
    np.testing.assert_array_equal(vectors("onehot", 0), np.eye(s)[ids])
    half = vectors("half_onehot", 0)
    np.testing.assert_array_equal(half[:, :s // 2], np.eye(s // 2)[ids % (s // 2)])
    assert ((0 <= half[:, s // 2:]) & (half[:, s // 2:] < 1)).all()
    fixed, again = vectors("stateless_uniform", 0), vectors("stateless_uniform", 9)
    np.testing.assert_array_equal(fixed, again)                 # the same record gets the same vector
    np.testing.assert_array_equal(fixed[1], fixed[3])
    assert not np.allclose(fixed[0], fixed[1]) and ((0 <= fixed) & (fixed < 1)).all()
    fresh, later = vectors("uniform", 0), vectors("uniform", 1)
    assert not np.allclose(fresh, later) and not np.allclose(fresh[1], fresh[3])
    np.testing.assert_array_equal(fresh, vectors("uniform", 0))  # a function of (seed, step): resumable
