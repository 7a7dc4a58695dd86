"""Shows that Mesh TensorFlow's multi-device read/write race is real, and that our fix removes it.

Trains the tiny network of ``tests/tiny_mtf.py`` on ``batch:2;model:2`` (4 logical CPU devices)
``--runs`` times with stock ``PlacementMeshImpl`` and with ours, and counts the runs whose loss
sequence differs bit for bit from the first run. Stock mesh-tf should show some; ours must show none.

    python benchmarks/read_race_demo.py --runs 40 --steps 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tqdm import tqdm  # noqa: E402

import modeling.mesh  # noqa: E402
from modeling.mtf_compat import mtf  # noqa: E402
from tiny_mtf import train_tiny  # noqa: E402


def count_divergent_runs(runs: int, steps: int, label: str) -> int:
    reference = None
    divergent = 0
    for _ in tqdm(range(runs), desc=label, leave=False):
        losses = train_tiny("batch:2;model:2", steps).losses
        reference = reference or losses
        divergent += losses != reference
    return divergent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="training runs per variant (default: 40)")
    parser.add_argument("--steps", type=int, default=30, help="Adam steps per run (default: 30)")
    args = parser.parse_args()

    fixed_class = modeling.mesh.PlacementMeshImpl
    modeling.mesh.PlacementMeshImpl = mtf.placement_mesh_impl.PlacementMeshImpl
    stock = count_divergent_runs(args.runs, args.steps, "stock mesh-tf")
    modeling.mesh.PlacementMeshImpl = fixed_class
    fixed = count_divergent_runs(args.runs, args.steps, "read-once fix")
    print(f"runs whose losses differ from the first run ({args.runs} runs x {args.steps} steps, "
          f"batch:2;model:2 on 4 logical CPUs):")
    print(f"  stock PlacementMeshImpl : {stock:3d} / {args.runs}")
    print(f"  read-once fix (ours)    : {fixed:3d} / {args.runs}")


if __name__ == "__main__":
    main()
