#!/usr/bin/env python3
"""Fine-tune a GPTSAN model on one device by training only added dense layers and the spout MLP.

The first run creates --output from --base_model (weights copied, --add_layers dense layers appended,
frozen variables listed in ignore-params.json); rerunning the same command resumes."""

from __future__ import annotations

from modeling import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--base_model", required=True, help="model directory to start from (frozen)")
    p.add_argument("--output", required=True, help="fine-tuned model directory (created, or resumed)")
    p.add_argument("--add_layers", type=cli.NON_NEGATIVE, default=2, help="dense extra layers appended; 0 = spout only")
    cli.add_training_flags(p, default_learning_rate=1e-4)
    cli.add_tokenizer_flags(p)
    cli.add_mesh_flags(p)
    cli.add_precision_flags(p)
    return p


def main(args) -> None:
    from modeling import finetune, runtime  # noqa: PLC0415
    from modeling.loop import run_from_args  # noqa: PLC0415

    base = runtime.open_model_dir(args.base_model)   # the flags are checked against it before --output is made
    run_from_args(args, args.output, base.parameters, lambda: finetune.prepare(
        base, args.output, args.add_layers, args.vocabulary, args.emoji, args.seed, not args.no_progress,
        spout=args.spout_vector != "none"))


if __name__ == "__main__":
    cli.run(main, build_parser())
