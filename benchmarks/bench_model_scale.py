#!/usr/bin/env python3
"""GPTSAN-2.8B shapes on one CPU machine: checkpoint load time, forward time and peak memory.

Writes (once) a checkpoint with exactly the released shapes (spec §4.2: 10 Switch layers, d 1024,
16 heads, 16 experts of 8192, 36k vocabulary, 1280 positions, spout 128; random values), one
variable at a time so that writing it needs little memory. Then, in a fresh process per case, opens
it as a model directory, restores it and runs forward passes; the parent reads the child's peak
resident memory. The target is peak <= 1.3x the checkpoint size.

With --hub_dir it also loads the same weights from the float16 Hugging Face hub layout (what
``Tanrei/GPTSAN-japanese`` distributes): load time and peak memory (target <= 1.3x the float32 size).

    python benchmarks/bench_model_scale.py [--dir /tmp/gptsan-2.8b-random] [--lengths 32 1280] [--hub_dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]

from child import checkpoint_bytes, run_child  # noqa: E402

RELEASE = {"num_contexts": 1280, "num_switch_layers": 10, "num_ext_layers": 0, "num_hidden": 1024,
           "num_header": 16, "num_experts": 16, "num_pallarelizm": 1, "num_vocabulary": 36000,
           "train_mode": "hybrid", "num_spout": 128}


def write_release_checkpoint(directory: str) -> None:
    """Random weights in the release's names and shapes, saved variable by variable."""
    from tqdm import tqdm

    from modeling.checkpoint import write_checkpoint
    from modeling.mtf_compat import tf

    os.makedirs(directory, exist_ok=True)
    from model_dirs import original_shapes   # names and shapes of spec §4.2

    shapes = original_shapes(RELEASE)

    def tensors():
        for i, (name, shape) in enumerate(tqdm(shapes.items(), desc="writing 2.8B-shape checkpoint", unit="var")):
            yield name, tf.ones(shape) if name.endswith("/g") else tf.random.normal(shape, stddev=0.02, seed=i)
        yield "global_step", tf.constant(0, tf.int64)

    write_checkpoint(os.path.join(directory, "model"), tensors())
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model"\nall_model_checkpoint_paths: "model"\n')
    with open(os.path.join(directory, "parameters.json"), "w") as f:
        json.dump({"train_params": {}, "model_params": RELEASE}, f)


def child(directory: str, length: int, repeats: int) -> None:
    """Open, restore and run the model; print timings as JSON (peak memory is measured by the parent)."""
    import numpy as np

    from modeling.mesh import make_mesh
    from modeling.runtime import Runtime, open_model_dir

    started = time.perf_counter()
    model_dir = open_model_dir(directory)
    runtime = Runtime(model_dir.config, make_mesh(""))
    forward = runtime.forward(1, length)
    built = time.perf_counter()
    runtime.restore(model_dir.checkpoint)
    loaded = time.perf_counter()
    tokens = np.random.RandomState(0).randint(0, 35993, size=(1, length)).astype(np.int32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runtime.run(forward, ["logits"], tokens, np.array([length // 2]), np.array([length]))
        times.append(time.perf_counter() - t0)
    print(json.dumps({"build_s": built - started, "load_s": loaded - built, "first_forward_s": times[0],
                      "forward_s": min(times[1:] or times)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/gptsan-2.8b-random", help="where the checkpoint is (written once)")
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 1280], help="sequence lengths to time")
    p.add_argument("--repeats", type=int, default=3, help="forward passes per length (first one is warm-up)")
    p.add_argument("--hub_dir", default=None,
                   help="also load the same weights from this float16 Hugging Face layout directory (exported "
                        "from --dir with run_pretrain.py --export_format hf --export_dtype float16 if absent)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        return child(args.dir, args.child, args.repeats)
    if not os.path.exists(os.path.join(args.dir, "checkpoint")):
        write_release_checkpoint(args.dir)
    size = checkpoint_bytes(args.dir)
    print(f"checkpoint: {size / 1e9:.2f} GB ({args.dir}); peak is also given against it (the float32 model)")
    print(f"{'layout':>12} {'tokens':>7} {'build s':>8} {'load s':>7} {'1st fwd s':>9} {'fwd s':>7} {'ms/token':>8} "
          f"{'peak GB':>8} {'peak/ckpt':>9}")
    layouts = [("original", args.dir, args.lengths)]
    if args.hub_dir:
        if not os.path.exists(args.hub_dir):
            subprocess.run([sys.executable, os.path.join(HERE, "..", "run_pretrain.py"), "--model_dir", args.dir,
                            "--export", args.hub_dir, "--export_format", "hf", "--export_dtype", "float16"], check=True)
        layouts.append(("hub float16", args.hub_dir, args.lengths[:1]))
    for name, directory, lengths in layouts:
        for length in lengths:
            r, peak = run_child([__file__, "--dir", directory, "--child", str(length), "--repeats", str(args.repeats)])
            print(f"{name:>12} {length:>7} {r['build_s']:>8.1f} {r['load_s']:>7.1f} {r['first_forward_s']:>9.2f} "
                  f"{r['forward_s']:>7.2f} {1000 * r['forward_s'] / length:>8.1f} {peak / 1e9:>8.2f} "
                  f"{peak / size:>9.2f}")


if __name__ == "__main__":
    main()
