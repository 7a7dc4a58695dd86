#!/usr/bin/env python3
"""Batched vs one-by-one [MASK] filling and vectorising (run_languagemodel.py's code path).

A small random model (d_model 128, 4 heads, 4 Switch layers of 8 experts, 36k vocabulary, 128
positions) fills one mask in each of 512 sentences of the sample corpus, once with batch 1 and once
with batch 16, in the same process; the figure is the ratio of texts per second (goal >= 4x). Both
go through run_languagemodel.py's batching (inputs grouped by padded length).

    python benchmarks/bench_languagemodel.py [--texts 512] [--batch_size 16]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")]

from encode_swe import SWEEncoder  # noqa: E402
from model_dirs import original_weights, write_model_dir  # noqa: E402
from modeling import languagemodel  # noqa: E402
from modeling.mesh import make_mesh  # noqa: E402
from modeling.runtime import Runtime, open_model_dir  # noqa: E402

SMALL = {"num_contexts": 128, "num_switch_layers": 4, "num_ext_layers": 0, "num_hidden": 128, "num_header": 4,
         "num_experts": 8, "num_pallarelizm": 1, "num_vocabulary": 36000, "train_mode": "hybrid", "num_spout": 0}
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "corpus")


def sentences(count: int) -> list[str]:
    """Sentences of the sample corpus with their second noun-ish span masked."""
    found = []
    for name in sorted(os.listdir(CORPUS)):
        if name.endswith(".txt"):
            text = open(os.path.join(CORPUS, name), encoding="utf-8").read()
            found += [s + "。" for s in re.split("[。\n]", text) if 12 <= len(s) <= 60]
    return [s[:5] + "[MASK]" + s[7:] for s in found[:count]]


def throughput(model_dir, examples, batch_size: int, mask_id: int) -> float:
    """Texts per second through the run_languagemodel.py path at ``batch_size``, after one warm-up pass
    over the corpus (the first run of each compiled length is slow)."""
    runtime = Runtime(model_dir.config, make_mesh(""))
    forwards = languagemodel.mask_fill_forwards(runtime, examples, batch_size, mask_id)
    runtime.restore(model_dir.checkpoint)
    positions = [len(e.tokens) - 1 for e in examples]

    def fill_all():
        return list(languagemodel.fill_masks(runtime, forwards, examples, positions, batch_size, mask_id))

    fill_all()
    start = time.perf_counter()
    fill_all()
    rate = len(examples) / (time.perf_counter() - start)
    runtime.close()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=512, help="sentences of the sample corpus to fill")
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args()
    encoder = SWEEncoder.from_files()
    with tempfile.TemporaryDirectory() as tmp:
        write_model_dir(tmp, SMALL, original_weights(SMALL))
        model_dir = open_model_dir(tmp)
        examples = [languagemodel.layout(encoder, t, "[MASK]", "hybrid", SMALL["num_contexts"])
                    for t in sentences(args.texts)]
        rates = {b: throughput(model_dir, examples, b, encoder.special_id("mask")) for b in (1, args.batch_size)}
    lengths = [len(e.tokens) for e in examples]
    print(f"{len(examples)} texts of {min(lengths)}-{max(lengths)} tokens, model d={SMALL['num_hidden']} "
          f"L={SMALL['num_switch_layers']} E={SMALL['num_experts']} V={SMALL['num_vocabulary']}")
    print(f"{'batch':>6} {'texts/s':>9}")
    for batch_size, rate in rates.items():
        print(f"{batch_size:>6} {rate:>9.1f}")
    print(f"batched / one-by-one: {rates[args.batch_size] / rates[1]:.1f}x (goal >= 4x)")


if __name__ == "__main__":
    main()
