#!/usr/bin/env python3
"""Training throughput and model-FLOPs utilisation (MFU) of a documented small configuration.

Configuration: d_model 256, 8 heads, 4 Switch layers of 8 experts (inner 2048), 36k vocabulary,
256 positions, batch 8, float32, one CPU device, random records. FLOPs per token are counted from the
spec's shapes with only the routed (active) expert: 2 x active weights for the matmuls, plus the
attention scores and weighted sum (4 x T x d per layer, T = 256), times 3 for forward + backward.
The machine's peak is a large float32 matmul measured in the same run, so the ratio is what counts.

    python benchmarks/bench_train.py [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from modeling.config import ModelConfig  # noqa: E402
from modeling.mesh import make_mesh  # noqa: E402
from modeling.mtf_compat import tf  # noqa: E402
from modeling.training import Settings, build  # noqa: E402

CONFIG = ModelConfig(num_contexts=256, num_switch_layers=4, num_hidden=256, num_header=8, num_experts=8,
                     num_vocabulary=36000)
BATCH = 8


def flops_per_token(c: ModelConfig) -> float:
    """Training FLOPs per token: 3 x (2 x active matmul weights + attention)."""
    d, layers = c.num_hidden, c.num_switch_layers
    per_layer = (3 * d * d + d * d      # qkv and output projections
                 + d * c.num_experts     # router
                 + 2 * d * c.expert_size  # the one active expert
                 + d * d)                 # softmlp bypass
    head = d * d + d * c.num_vocabulary   # dense projection and tied output
    attention = 4 * c.num_contexts * d * layers
    return 3 * (2 * (layers * per_layer + head) + attention)


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a float32 [size x size] matmul on this machine (best of ``repeats``)."""
    with tf.Graph().as_default(), tf.Session() as session:
        a = tf.Variable(tf.random.normal([size, size]))
        product = tf.reduce_sum(tf.matmul(a, a))
        session.run(tf.global_variables_initializer())
        session.run(product)
        best = min(_timed(lambda: session.run(product)) for _ in range(repeats))
    return 2 * size ** 3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def write_records(path: str, count: int) -> None:
    rng = np.random.RandomState(0)
    c = CONFIG.num_contexts

    def feature(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    with tf.io.TFRecordWriter(path) as writer:
        for _ in range(count):
            x = rng.randint(0, 30000, c)
            y = np.concatenate([x[1:], [-1]])
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "x": feature(x), "y": feature(y), "i": feature([0]), "num_input": feature([1])})).SerializeToString())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        records = os.path.join(tmp, "train.tfrecord")
        write_records(records, 64)
        mesh = make_mesh("")
        g = build(CONFIG, Settings(input_files=[records], batch_size=BATCH, max_steps=args.steps + 3), mesh)
        with g.graph.as_default(), tf.Session(config=mesh.session_config) as session:
            session.run(g.init_op)
            session.run(g.copy_masters_to_slices)
            for _ in range(3):
                session.run(g.train_op)
            seconds = _timed(lambda: [session.run(g.train_op) for _ in range(args.steps)])
    peak = matmul_peak()
    tokens_per_second = args.steps * g.tokens_per_step / seconds
    achieved = tokens_per_second * flops_per_token(CONFIG)
    print(f"config: d={CONFIG.num_hidden} heads={CONFIG.num_header} switch layers={CONFIG.num_switch_layers} "
          f"experts={CONFIG.num_experts} T={CONFIG.num_contexts} V={CONFIG.num_vocabulary} batch={BATCH}")
    print(f"{'tokens/s':>10} {'GFLOP/token':>12} {'achieved GFLOP/s':>17} {'matmul peak GFLOP/s':>20} {'MFU':>6}")
    print(f"{tokens_per_second:>10.0f} {flops_per_token(CONFIG) / 1e9:>12.3f} {achieved / 1e9:>17.1f} "
          f"{peak / 1e9:>20.1f} {achieved / peak:>6.1%}")


if __name__ == "__main__":
    main()
