#!/usr/bin/env python3
"""Pretrain a GPTSAN model on training records; safe to restart from cron (resumes, locks, saves on
SIGTERM) on one CPU/GPU, several GPUs or a TPU slice."""

from __future__ import annotations

from modeling import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--parameter_file", default=None,
                   help="parameters.json in the original schema; copied into --model_dir on the first run")
    p.add_argument("--model_dir", required=True, help="model directory (local or gs://); rerun to resume")
    p.add_argument("--export", default=None, help="write a release copy (no optimizer slots) to this directory")
    cli.add_training_flags(p, default_learning_rate=1e-4)
    cli.add_mesh_flags(p)
    cli.add_precision_flags(p)
    return p


def main(args) -> None:
    raise cli.UserError("pretraining lands with issue 5; this front only documents its flags for now")


if __name__ == "__main__":
    cli.run(main, build_parser())
