#!/usr/bin/env python3
"""Fill [MASK] spans and extract per-layer hidden states with a GPTSAN model (one forward pass).

The context goes into the bidirectional prefix; each [MASK] is filled with its most likely token.
Output: the original's four stdout sections, and optionally JSON (JSONL in batch mode)."""

from __future__ import annotations

from modeling import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="model directory (parameters.json + checkpoint)")
    p.add_argument("--context", default="", help="input text; each --mask marker becomes the mask token")
    p.add_argument("--mask", default="[MASK]", help="literal marker replaced by <|inputmask|>")
    p.add_argument("--pos_vector", type=int, default=-1,
                   help="position (counting the start token) whose hidden states form output_vector; <0 = last")
    p.add_argument("--input_file", default=None, help="batch mode: one text or JSON object per line; writes JSONL")
    p.add_argument("--batch_size", type=int, default=16, help="texts per forward pass in batch mode")
    p.add_argument("--output", default=None, help="JSON (or JSONL in batch mode) output file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    cli.add_tokenizer_flags(p)
    cli.add_mesh_flags(p)
    return p


def main(args) -> None:
    raise cli.UserError("mask filling lands with issue 4; this front only documents its flags for now")


if __name__ == "__main__":
    cli.run(main, build_parser())
