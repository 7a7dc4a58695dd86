#!/usr/bin/env python3
"""Training throughput side by side with the Hugging Face PyTorch port, and MFU against the best
float32 matmul measured in the same run.

Bench width (``bench_generate.BENCH``: d_model 512, 16 heads, 4 Switch layers of 8 experts, 36k
vocabulary), batch 8 x 256 tokens of random records (``bench_finetune.write_records``), one CPU
device. Both sides start from the same random weights (``tests/model_dirs.original_weights``; the
port's through the name mapping of spec §17.4) and run in fresh processes, alternating,
``--repeats`` times; the best run of each is compared.

* ours: ``run_pretrain.py`` itself on a model directory holding those weights (Adam with its
  defaults: clipping 1.0, weight decay 0.01, output z-loss and load-balancing loss), tokens/s from its
  ``train_log.jsonl``, median over the steps after ``WARMUP``;
* the port (``benchmarks/port.py --train_steps``): ``torch.optim.AdamW``, median seconds per step
  after ``WARMUP``. Its loss is the language-model loss alone (its router-loss path fails in
  transformers 4.51.3), which slightly favours it.

FLOPs per token (``flops_per_token``, stated in the output): 3 x (forward) for forward + backward,
the forward being 2 x the weights one token multiplies (attention projections, router, softmlp,
the routed expert, dense head, tied output embedding) plus attention's scores and weighted sum
(4 x T x d per layer). The routed expert counts for the tokens its capacity keeps: the share kept
in our run's timed steps (``dropped_fraction`` in ``train_log.jsonl``), about two thirds for these
untrained weights; neither side multiplies a dropped token. Capacity slots, one-hot dispatch and
combine (multi-device meshes) are not counted: they are our cost, not the model's. MFU is that over
the best 2048 x 2048 float32 matmul of numpy and of TensorFlow measured here (best of 10 each).

    python benchmarks/bench_train.py [--port_python /tmp/portenv/bin/python] [--steps 12] [--repeats 3]

The port's environment (benchmark-only) is made as in ``bench_generate.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]

import numpy as np  # noqa: E402

from bench_finetune import LENGTH, write_records  # noqa: E402
from bench_generate import BENCH  # noqa: E402
from child import run_child  # noqa: E402

BATCH, WARMUP = 8, 3


def flops_per_token(p: dict, length: int = LENGTH, kept: float = 1.0) -> float:
    """Training FLOPs per token: 3 x (2 x multiplied weights + attention), the routed expert for the
    share ``kept`` of the tokens."""
    d, e, v, layers = p["num_hidden"], p["num_experts"], p["num_vocabulary"], p["num_switch_layers"]
    per_layer = 4 * d * d + d * e + d * d + kept * 2 * d * 8 * d   # qkv + o, router, softmlp, expert
    head = d * d + d * v                                      # dense projection, tied output
    attention = 4 * length * d * layers
    return 3 * (2 * (layers * per_layer + head) + attention)


def matmul_peaks(size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """FLOP/s of a float32 [size x size] matmul, best of ``repeats``, in numpy and in TensorFlow."""
    from modeling.mesh import session_config
    from modeling.mtf_compat import tf

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    peaks = {"numpy": 2 * size ** 3 / min(_timed(lambda: a @ a) for _ in range(repeats))}
    with tf.Graph().as_default(), tf.Session(config=session_config()) as session:
        matrix = tf.Variable(a)   # a constant would be folded away before the run
        product = tf.reduce_sum(tf.matmul(matrix, matrix))
        session.run(matrix.initializer)
        session.run(product)
        peaks["tensorflow"] = 2 * size ** 3 / min(_timed(lambda: session.run(product)) for _ in range(repeats))
    return peaks


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours(directory: str, records: str, steps: int) -> tuple[float, float]:
    """Steady tokens/s of ``run_pretrain.py`` on a copy of ``directory``, and the share of tokens the
    experts kept in those steps (mean over steps and layers)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model")
        shutil.copytree(directory, model)
        subprocess.run([sys.executable, os.path.join(HERE, "..", "run_pretrain.py"), "--model_dir", model,
                        "--input_files", records, "--batch_size", str(BATCH), "--max_steps", str(steps),
                        "--log_every", "1", "--save_every", str(10 * steps), "--no_progress"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(model, "train_log.jsonl")) as f:
            logged = [r for r in map(json.loads, f) if "tokens_per_second" in r][WARMUP:]
    return (float(np.median([r["tokens_per_second"] for r in logged])),
            1.0 - float(np.mean([r["dropped_fraction"] for r in logged])))


def port(python: str, weights: str, steps: int) -> float:
    """Steady tokens/s of the port's AdamW training on the same weights."""
    result, _ = run_child([os.path.join(HERE, "port.py"), "--params", json.dumps(BENCH), "--weights", weights,
                           "--prompt", "[[0]]", "--train_steps", str(steps), "--train_batch", f"{BATCH},{LENGTH}"],
                          python=python, stderr=subprocess.DEVNULL)
    return result["tokens_per_step"] / float(np.median(result["train_step_seconds"][WARMUP:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port_python", default=None, help="python of the port's environment (see bench_generate.py)")
    p.add_argument("--steps", type=int, default=12, help=f"training steps per run (the first {WARMUP} are warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating (best is compared)")
    args = p.parse_args()
    from model_dirs import original_weights, write_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        weights = original_weights(BENCH, seed=0)
        directory, npz, records = (os.path.join(tmp, n) for n in ("model", "weights.npz", "train.tfrecord"))
        write_model_dir(directory, BENCH, weights)
        np.savez(npz, **weights)
        del weights
        write_records(records, BATCH * args.steps)
        mine, theirs, kept = [], [], []
        for _ in range(args.repeats):
            rate, share = ours(directory, records, args.steps)
            mine.append(rate)
            kept.append(share)
            if args.port_python:
                theirs.append(port(args.port_python, npz, args.steps))
    peaks = matmul_peaks()
    best_peak = max(peaks.values())
    flops = flops_per_token(BENCH, kept=float(np.mean(kept)))

    def span(values: list[float]) -> str:
        return f"{max(values):.0f} ({min(values):.0f}-{max(values):.0f})"

    print(f"bench width: d={BENCH['num_hidden']} heads={BENCH['num_header']} switch layers={BENCH['num_switch_layers']} "
          f"experts={BENCH['num_experts']} V={BENCH['num_vocabulary']}, batch {BATCH} x {LENGTH}, one CPU device, "
          f"best of {args.repeats} runs (all runs: min-max)")
    print(f"FLOPs per token (3 x forward, attention at T={LENGTH}, the routed expert for the {np.mean(kept):.1%} "
          f"of tokens kept): {flops / 1e9:.3f} GFLOP ({flops_per_token(BENCH) / 1e9:.3f} if every token were kept)")
    print(f"float32 matmul 2048^2: numpy {peaks['numpy'] / 1e9:.0f} GFLOP/s, TensorFlow "
          f"{peaks['tensorflow'] / 1e9:.0f} GFLOP/s; MFU against the best, {best_peak / 1e9:.0f} GFLOP/s")
    print(f"{'':>6} {'tokens/s':>18} {'GFLOP/s':>8} {'MFU':>6}")
    for name, rates in (("ours", mine), ("port", theirs)):
        if rates:
            print(f"{name:>6} {span(rates):>18} {max(rates) * flops / 1e9:>8.0f} {max(rates) * flops / best_peak:>6.1%}")
    if theirs:
        print(f"ours / port (best runs): {max(mine) / max(theirs):.2f}x (target >= 1.3x)")
    else:
        print("the port was not run: give --port_python (its environment: see bench_generate.py)")


if __name__ == "__main__":
    main()
