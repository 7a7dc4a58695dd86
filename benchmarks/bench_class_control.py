#!/usr/bin/env python3
"""Class control after spout fine-tuning (issue 16): every task of tests/class_tasks.py from every base.

For each task (two classes of short texts with their own marker words) a tiny base is pretrained on the
task's texts (``class_tasks.BENCH_PRETRAIN_STEPS`` steps) three ways (release-style spout initialisation,
a uniform spout, no spout), fine-tuned with one-hot spouts on the same texts' ``--whole_documents``
records with the README's tiny-model flags (``class_tasks.FINETUNE_FLAGS``), and ``run_generate.py
--spout K`` writes 10 samples per prompt: the figure is the share with class K's marker and not the
other's.
Takes about 12 minutes on 2 cores.

    python benchmarks/bench_class_control.py [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]

import class_tasks  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="directory for records and models (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        results = class_tasks.run_matrix(Path(args.work or scratch))
    print(f"{'task':8s} {'base':8s} {'class 0':>8s} {'class 1':>8s}")
    for (task, base), rates in results.items():
        print(f"{task:8s} {base:8s} {rates[0]:8.0%} {rates[1]:8.0%}")
    os._exit(0)   # TensorFlow's threads can hold the interpreter at exit


if __name__ == "__main__":
    main()
