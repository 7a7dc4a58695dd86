#!/usr/bin/env python3
"""Greedy generation with the KV cache: speed, flatness over position, and gain over full-window re-runs.

Model: d_model 512, 16 heads, 4 Switch layers of 8 experts, 36k vocabulary, 1280 positions, random
weights, one CPU device. Measured in one run:

* tokens/s for 256 greedy tokens after a 32-token prompt;
* time of the 256th token over the 16th (goal <= 1.2; each step attends to a fixed-size cache);
* at 1,000 generated tokens: the time of one cached step against one re-run of the whole
  1,032-token window, which is what the original pays for every token (goal >= 20x).

With --release_dir (a checkpoint with the GPTSAN-2.8B shapes, e.g. from bench_model_scale.py) it also
times 16 tokens of the 2.8B model in a child process and reports its peak memory.

    python benchmarks/bench_generate.py [--release_dir /tmp/gptsan-2.8b-random]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from child import checkpoint_bytes, run_child  # noqa: E402

import numpy as np  # noqa: E402

from modeling import generation as G  # noqa: E402
from modeling.config import ModelConfig  # noqa: E402
from modeling.mesh import make_mesh  # noqa: E402
from modeling.runtime import Runtime, open_model_dir  # noqa: E402

CONFIG = ModelConfig(num_contexts=1280, num_switch_layers=4, num_hidden=512, num_header=16, num_experts=8,
                     num_vocabulary=36000)
V = CONFIG.num_vocabulary
IDS = {"start": V - 7, "segmenter": V - 2, "not_token": V - 4, "separator": V - 5, "end_of_text": V - 1,
       "bag": V - 3}


def token_times(generator: G.Generator, count: int) -> list[float]:
    """Wall time of each of ``count`` greedy tokens after a 32-token prompt (end-of-text not allowed)."""
    stamps = []
    ids = dict(IDS, end_of_text=-1)     # never stop early
    prompt = G.Prompt([], list(np.random.RandomState(0).randint(0, 30000, 32)))
    G.generate(generator, [prompt], G.Sampling(top_k=1, max_generate=count), ids, np.random.default_rng(0),
               on_token=lambda row, seq: stamps.append(time.perf_counter()))
    return list(np.diff(stamps))   # token i+1's time = its step


def release_child(directory: str, tokens: int) -> None:
    model_dir = open_model_dir(directory)
    runtime = Runtime(model_dir.config, make_mesh(""))
    generator = G.Generator(runtime, 1, 34, False)
    runtime.restore(model_dir.checkpoint)
    times = token_times(generator, tokens)
    print(json.dumps({"ms_per_token": 1000 * float(np.median(times[2:]))}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release_dir", default=None, help="2.8B-shape model directory to time as well")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return release_child(args.release_dir, 16)

    runtime = Runtime(CONFIG, make_mesh(""))
    generator = G.Generator(runtime, 1, 34, False)
    window = runtime.forward(1, 1032)
    runtime.initialize()
    times = token_times(generator, 1001)
    tokens = np.random.RandomState(1).randint(0, 30000, (1, 1032))
    runtime.run(window, ["logits"], tokens, np.array([1]), np.array([1032]))
    rerun = min(_timed(lambda: runtime.run(window, ["logits"], tokens, np.array([1]), np.array([1032])))
                for _ in range(3))
    first256 = times[:255]
    step_16, step_256 = np.median(times[13:18]), np.median(times[252:257])
    step_1000 = np.median(times[995:1000])
    print(f"model: d={CONFIG.num_hidden} heads={CONFIG.num_header} switch layers={CONFIG.num_switch_layers} "
          f"experts={CONFIG.num_experts} V={V} C={CONFIG.num_contexts}, greedy, batch 1, one CPU device")
    print(f"{'tokens/s (256)':>15} {'256th/16th':>11} {'cached step ms':>15} {'full window ms':>15} {'speed-up':>9}")
    print(f"{len(first256) / sum(first256):>15.1f} {step_256 / step_16:>11.2f} {1000 * step_1000:>15.1f} "
          f"{1000 * rerun:>15.1f} {rerun / step_1000:>8.1f}x")
    if args.release_dir:
        result, peak = run_child([__file__, "--child", "--release_dir", args.release_dir])
        print(f"2.8B shapes: {result['ms_per_token']:.0f} ms/token, peak {peak / 1e9:.2f} GB "
              f"= {peak / checkpoint_bytes(args.release_dir):.2f}x the checkpoint")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
