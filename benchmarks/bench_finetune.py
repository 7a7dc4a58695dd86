#!/usr/bin/env python3
"""Fine-tuning 2 added layers on a base with the exact GPTSAN-2.8B shapes, batch 1 x 256 tokens, on CPU.

The base is the random-weight checkpoint of bench_model_scale.py (written once, 11.1 GB). Each case
runs in a fresh process: finetune.prepare (copy the base, add the layers), then run_finetune.py for
--steps steps, including the restore and the final save. The parent reads each child's peak memory.
Cases: without a spout (only the added layers and the head are back-propagated) and with a one-hot
spout (every layer attends to the spout slot, so the backward pass runs through the frozen backbone).
A forward pass of the base at 256 tokens (bench_model_scale.py's child) is the yardstick for a step.

The random base sends most tokens of a layer to one or two experts, and training capacity then
drops 60-80 % of them, which makes a step that skips dropped tokens look cheaper than it is for a
trained base. --routing balanced runs on a copy whose routing spreads tokens over the experts as a
trained router does (write_balanced_base). Each case prints the share of tokens dropped per Switch
layer (mean over the steps).

    python benchmarks/bench_finetune.py [--base /tmp/gptsan-2.8b-random] [--work /tmp/bench-finetune]
                                        [--routing random|balanced]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]

from child import checkpoint_bytes, run_child  # noqa: E402

LENGTH, ADD_LAYERS = 256, 2


def write_records(path: str, count: int = 16) -> None:
    """LM records of random tokens, ``LENGTH`` long, with class ids 0..3 for the one-hot spout."""
    import numpy as np

    from modeling.mtf_compat import tf

    def feature(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(path) as writer:
        for n in range(count):
            text = rng.integers(0, 35000, LENGTH)
            x, y = [35993, 35998, *text[:LENGTH - 2]], [-1, *text[:LENGTH - 1]]
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "x": feature(x), "y": feature(y), "i": feature([n % 4]), "num_input": feature([1])}
            )).SerializeToString())


def write_balanced_base(base: str, target: str, scale: float = 100.0) -> None:
    """``base`` with the token embedding ``wte`` ``scale`` times larger, nothing else changed.

    In the random base every token's residual stream is dominated by attention outputs that are
    almost the same for all tokens of a sequence (random attention averages the values), so the
    routers send most of a sequence to one or two experts. With a 100x larger embedding a token's
    own embedding dominates and the random routers spread tokens by identity, as a trained router
    spreads them (what the load-balancing loss is for): 5-12 % over training capacity per layer in
    this benchmark's steps, against 62-79 %. The shapes, so the work of a step, are unchanged."""
    from modeling.checkpoint import write_checkpoint, write_checkpoint_state
    from modeling.mtf_compat import tf
    from modeling.runtime import open_model_dir

    reader = tf.train.load_checkpoint(open_model_dir(base).checkpoint)
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)

    def tensors():
        for name in sorted(reader.get_variable_to_shape_map()):
            value = reader.get_tensor(name)
            yield name, value * scale if name == "model/wte" else value

    write_checkpoint(os.path.join(partial, "model"), tensors())
    shutil.copy(os.path.join(base, "parameters.json"), partial)
    write_checkpoint_state(partial, ["model"])
    os.rename(partial, target)


def child(base: str, work: str, spout: str, steps: int) -> None:
    """Prepare and fine-tune; print the phase times and the steady tokens/s as JSON."""
    import numpy as np

    import run_finetune
    from modeling import finetune, runtime

    output = os.path.join(work, f"finetune-{spout}")
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    finetune.prepare(runtime.open_model_dir(base), output, ADD_LAYERS, None, None, seed=0, progress=False)
    prepared = time.perf_counter()
    run_finetune.main(run_finetune.build_parser().parse_args([
        "--base_model", base, "--output", output, "--add_layers", str(ADD_LAYERS), "--input_files",
        os.path.join(work, "records.tfrecord"), "--batch_size", "1", "--max_steps", str(steps), "--spout_vector",
        spout, "--learning_rate", "1e-4", "--warmup_steps", "1", "--log_every", "1", "--no_progress"]))
    trained = time.perf_counter()
    with open(os.path.join(output, "train_log.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "tokens_per_second" in r]
    shutil.rmtree(output)
    print(json.dumps({"prepare_s": prepared - started, "train_s": trained - prepared,
                      "tokens_per_s": float(np.median([r["tokens_per_second"] for r in steps[2:]])),
                      "first_step_s": LENGTH / steps[0]["tokens_per_second"],
                      "dropped": np.mean([r["dropped_fraction"] for r in steps], 0).tolist()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="/tmp/gptsan-2.8b-random", help="2.8B-shape base (written once if absent)")
    p.add_argument("--routing", choices=["random", "balanced"], default="random",
                   help="random: the base as written (most tokens dropped); balanced: a copy whose routers "
                        "spread tokens as trained ones do (written once to BASE-balanced, see write_balanced_base)")
    p.add_argument("--work", default="/tmp/bench-finetune", help="scratch directory (records, outputs)")
    p.add_argument("--steps", type=int, default=10, help="training steps per case (the first two are warm-up)")
    p.add_argument("--spouts", nargs="+", default=["none", "onehot"], help="--spout_vector cases")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.base, args.work, args.child, args.steps)
    if not os.path.exists(os.path.join(args.base, "checkpoint")):
        from bench_model_scale import write_release_checkpoint
        write_release_checkpoint(args.base)
    os.makedirs(args.work, exist_ok=True)
    write_records(os.path.join(args.work, "records.tfrecord"))
    if args.routing == "balanced":
        if not os.path.exists(args.base + "-balanced"):
            write_balanced_base(args.base, args.base + "-balanced")
        args.base += "-balanced"
    size = checkpoint_bytes(args.base)
    forward, forward_peak = run_child([os.path.join(HERE, "bench_model_scale.py"), "--dir", args.base,
                                       "--child", str(LENGTH)])
    print(f"base: {size / 1e9:.2f} GB checkpoint ({args.base}); {ADD_LAYERS} added layers; batch 1 x {LENGTH} "
          f"tokens; {args.steps} steps per case")
    print(f"{'case':>14} {'prepare s':>9} {'train s':>8} {'s/step':>7} {'tokens/s':>9} {'step/fwd':>9} "
          f"{'peak GB':>8} {'peak/ckpt':>9}")
    print(f"{'forward only':>14} {'':>9} {'':>8} {forward['forward_s']:>7.2f} {LENGTH / forward['forward_s']:>9.0f} "
          f"{1.0:>9.2f} {forward_peak / 1e9:>8.2f} {forward_peak / size:>9.2f}")
    for spout in args.spouts:
        r, peak = run_child([__file__, "--base", args.base, "--work", args.work, "--steps", str(args.steps),
                             "--child", spout])
        step = LENGTH / r["tokens_per_s"]
        print(f"{'spout ' + spout:>14} {r['prepare_s']:>9.0f} {r['train_s']:>8.0f} {step:>7.2f} "
              f"{r['tokens_per_s']:>9.0f} {step / forward['forward_s']:>9.2f} {peak / 1e9:>8.2f} {peak / size:>9.2f}"
              f"   dropped per layer {' '.join(f'{d:.2f}' for d in r['dropped'])}")


if __name__ == "__main__":
    main()
