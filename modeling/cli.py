"""What every command-line front shares: flag groups, and one-line errors with exit status 2.

Imports nothing heavy, so ``--help`` answers at once; scripts import TensorFlow only after parsing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from modeling.tokenizer import DEFAULT_EMOJI, DEFAULT_VOCABULARY

DEFAULT_LAYOUT = "batch:batch;heads:model;experts:model"


class UserError(Exception):
    """Bad input or a refused action. The message is one line: what, where, and what to do."""


class OneLineParser(argparse.ArgumentParser):
    """A parser whose flag errors are one line (what, and where to look), exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser that shows every flag's default."""
    return OneLineParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def number(kind: type, low: float | None = None, high: float | None = None, above: bool = False) -> Callable:
    """An argparse type: ``kind`` (int or float) in [low, high] (``above``: strictly greater than low)."""
    def convert(text: str):
        value = kind(text)
        if kind is float and value != value:
            raise argparse.ArgumentTypeError(f"{text} is not a number")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value
    convert.__name__ = kind.__name__   # argparse names the type in "invalid int value: 'x'"
    return convert


COUNT = number(int, 1)          # steps, sizes, intervals
NON_NEGATIVE = number(int, 0)
RATE = number(float, 0.0, above=True)


def add_tokenizer_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tokenizer")
    g.add_argument("--vocabulary", default=None,
                   help="vocabulary file; default: the model directory's own, else the project's "
                        f"({DEFAULT_VOCABULARY})")
    g.add_argument("--emoji", default=None,
                   help=f"emoji table; default: the model directory's own, else the project's ({DEFAULT_EMOJI})")


def add_mesh_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("devices (Mesh TensorFlow)")
    g.add_argument("--mesh_shape", default="",
                   help="mesh axes, e.g. 'batch:2;model:2' or '2x2'; empty = one device")
    g.add_argument("--layout", default=DEFAULT_LAYOUT,
                   help="tensor dimension -> mesh axis rules: heads and experts split over 'model'")
    g.add_argument("--tpu", default="", help="TPU name or grpc:// address; empty = local CPU/GPU")


def add_precision_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision").add_mutually_exclusive_group()
    g.add_argument("--use_bfloat16", action="store_true", help="bfloat16 activations (TPU); variables stay float32")
    g.add_argument("--use_mixed_precision", action="store_true",
                   help="float16 activations with dynamic loss scaling (GPU); overflowing steps are skipped")


SPOUT_VECTORS = ("none", "uniform", "stateless_uniform", "onehot", "half_onehot")


def add_training_flags(p: argparse.ArgumentParser, default_learning_rate: float) -> None:
    """Flags shared by run_pretrain.py and run_finetune.py (one training loop serves both).

    Flags left unset take the value from ``train_params`` of parameters.json when it has one
    (batch_size, base_lr, num_warmup_steps, checkpoint_per_steps, max_to_keep_save), else the default.
    """
    g = p.add_argument_group("training")
    g.add_argument("--input_files", nargs="+", metavar="GLOB",
                   help="training records made by 'encode_swe.py records': records directories (their "
                        "records.json lists the shards) or TFRecord globs, gs:// allowed; all of one length, at "
                        "most the model's num_contexts")
    g.add_argument("--max_steps", type=COUNT, default=100_000, help="stop at this global step (a real limit)")
    g.add_argument("--batch_size", type=COUNT, default=None,
                   help="global batch size (sequences per step); default train_params.batch_size or 16")
    g.add_argument("--learning_rate", type=RATE, default=None,
                   help=f"peak learning rate; default train_params.base_lr or {default_learning_rate}")
    g.add_argument("--warmup_steps", type=NON_NEGATIVE, default=None,
                   help="linear warm-up steps; default train_params.num_warmup_steps or 1000")
    g.add_argument("--decay", choices=("cosine", "linear", "inverse_sqrt", "constant"), default="cosine",
                   help="learning-rate decay after warm-up, reaching --final_learning_rate at --max_steps")
    g.add_argument("--final_learning_rate", type=number(float, 0.0, 1.0), default=0.1,
                   help="learning rate at --max_steps as a fraction of the peak (cosine and linear)")
    g.add_argument("--optimizer", choices=("adam", "adafactor"), default="adam",
                   help="Adam with decoupled weight decay (not on norms and biases), or Adafactor")
    g.add_argument("--weight_decay", type=number(float, 0.0, 1.0), default=0.01, help="decoupled weight decay (Adam)")
    g.add_argument("--clip_gradients", type=number(float, 0.0), default=1.0, help="global-norm clipping; 0 = off")
    g.add_argument("--spout_vector", choices=SPOUT_VECTORS, default="none",
                   help="spout input per example: uniform = fresh U[0,1) noise (how the release was "
                        "pretrained); stateless_uniform = noise fixed per record; onehot = one_hot(class id "
                        "i), i < num_spout; half_onehot = one-hot of i < num_spout/2, then noise")
    g.add_argument("--eval_files", nargs="*", default=[], metavar="GLOB", help="held-out records (directories or globs, as --input_files)")
    g.add_argument("--eval_every", type=COUNT, default=1000, help="steps between held-out loss/perplexity")
    g.add_argument("--eval_batches", type=COUNT, default=20, help="batches of --eval_files per evaluation")
    g.add_argument("--save_every", type=COUNT, default=None,
                   help="steps between checkpoints; default train_params.checkpoint_per_steps or 1000")
    g.add_argument("--keep_checkpoints", type=COUNT, default=None,
                   help="checkpoints kept, oldest removed; default train_params.max_to_keep_save or 5")
    g.add_argument("--log_every", type=COUNT, default=10, help="steps between log lines and TensorBoard points")
    g.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed for initialisation, jitter and spout noise")
    g.add_argument("--no_progress", action="store_true", help="no progress bar (e.g. under cron)")


def run(main: Callable[[argparse.Namespace], None], argument_parser: argparse.ArgumentParser) -> None:
    """Parse flags and run ``main``; a UserError becomes one line on stderr and exit status 2."""
    args = argument_parser.parse_args()
    try:
        main(args)
    except UserError as error:
        print(f"{argument_parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{argument_parser.prog}: interrupted", file=sys.stderr)
        sys.exit(130)
