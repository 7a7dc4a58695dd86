#!/usr/bin/env python3
"""Pretrain a GPTSAN model on training records; safe to restart from cron (resumes, locks, saves on
SIGTERM) on one CPU/GPU, several GPUs or a TPU slice.

First run: --parameter_file (original schema) is copied into --model_dir with the vocabulary and
emoji table. Every later run of the same command resumes weights, optimizer slots, step and input
position. --export DIR writes a release copy (no optimizer slots), in the original layout or the
Hugging Face hub layout (--export_format hf), and exits."""

from __future__ import annotations

import dataclasses
import os

from modeling import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--parameter_file", default=None,
                   help="parameters.json in the original schema; copied into --model_dir on the first run")
    p.add_argument("--model_dir", required=True, help="model directory (local or gs://); rerun to resume")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="write a release copy of --model_dir's latest checkpoint (no optimizer slots) and exit")
    p.add_argument("--export_format", choices=("original", "hf"), default="original",
                   help="with --export: 'original' (TF checkpoint + parameters.json, as the original release) or "
                        "'hf' (the Hugging Face hub layout: config.json, model.safetensors, vocab.txt, emoji.json)")
    p.add_argument("--export_dtype", choices=("float32", "float16"), default="float32",
                   help="with --export_format hf: the weights' dtype (the hub's GPTSAN-2.8B is float16)")
    p.add_argument("--overwrite", action="store_true", help="with --export: replace an existing DIR")
    cli.add_training_flags(p, default_learning_rate=1e-4)
    cli.add_tokenizer_flags(p)
    cli.add_mesh_flags(p)
    cli.add_precision_flags(p)
    return p


def model_parameters(args):
    """The model directory's parameters, and whether this first run must create the directory from
    --parameter_file (done only once every input is checked, see ``create_model_dir``)."""
    from modeling import config as params  # noqa: PLC0415
    from modeling import runtime  # noqa: PLC0415
    from modeling.mtf_compat import tf  # noqa: PLC0415

    own = os.path.join(args.model_dir, runtime.PARAMETERS_FILE)
    given = params.read_parameters(args.parameter_file) if args.parameter_file else None
    if given:   # our records feed <|separator|> for sentence-final punctuation; generation must do the same
        given = dataclasses.replace(given, model=given.model.replace(input_punctuation="separator"))
    if tf.io.gfile.exists(own):
        existing = params.read_parameters(own)
        if given and given.model != existing.model:
            raise cli.UserError(f"--parameter_file {args.parameter_file} describes a different model than {own}: "
                                f"use a new --model_dir, or drop --parameter_file to resume")
        return existing, False
    if given is None:
        raise cli.UserError(f"{args.model_dir} has no parameters.json: the first run needs --parameter_file")
    return given, True


def create_model_dir(args, parameters):
    """The first run's model directory: the tokenizer (checked first) and parameters.json."""
    from modeling import config as params  # noqa: PLC0415
    from modeling import runtime  # noqa: PLC0415

    runtime.install_tokenizer(args.model_dir, parameters.model, args.vocabulary, args.emoji)
    params.write_parameters(os.path.join(args.model_dir, runtime.PARAMETERS_FILE), parameters)
    return parameters, frozenset()


def export(args) -> None:
    from modeling import checkpoint, hub, runtime  # noqa: PLC0415
    from modeling.loop import checkpoint_step  # noqa: PLC0415
    from modeling.mtf_compat import tf  # noqa: PLC0415

    source = runtime.open_model_dir(args.model_dir)
    if tf.io.gfile.exists(args.export) and not args.overwrite:
        raise cli.UserError(f"{args.export} already exists: pass --overwrite to replace it")
    staging = args.export.rstrip("/") + ".tmp-export"
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    tf.io.gfile.makedirs(staging)
    step = checkpoint_step(args.model_dir)
    vocabulary, emoji = runtime.tokenizer_files(args.model_dir, args.vocabulary, args.emoji)
    if args.export_format == "hf":
        hub.export(runtime.checkpoint_reader(source.checkpoint), source.config, staging, args.export_dtype)
        files = {vocabulary: hub.VOCAB_FILE, emoji: runtime.EMOJI_FILE}
    else:
        checkpoint.export_release(source.checkpoint, staging, step)
        files = {os.path.join(args.model_dir, runtime.PARAMETERS_FILE): runtime.PARAMETERS_FILE,
                 vocabulary: runtime.VOCABULARY_FILE, emoji: runtime.EMOJI_FILE}
    for path, name in files.items():
        tf.io.gfile.copy(path, os.path.join(staging, name), overwrite=True)
    if tf.io.gfile.exists(args.export):
        tf.io.gfile.rmtree(args.export)
    tf.io.gfile.rename(staging, args.export)
    print(f"exported step {step} of {args.model_dir} to {args.export}")


def main(args) -> None:
    if args.export:
        return export(args)
    from modeling.loop import run_from_args  # noqa: PLC0415

    parameters, new = model_parameters(args)
    run_from_args(args, args.model_dir, parameters,
                  (lambda: create_model_dir(args, parameters)) if new else None)


if __name__ == "__main__":
    cli.run(main, build_parser())
