#!/usr/bin/env python3
"""Generate Japanese text with a GPTSAN model: KV cache, top-k/top-p/temperature sampling, beam search,
a bidirectional --prefix and the spout control vector."""

from __future__ import annotations

from modeling import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="model directory (parameters.json + checkpoint)")
    p.add_argument("--context", default="", help="text to continue (may be empty)")
    p.add_argument("--prefix", default="", help="text placed in the bidirectional prefix before the segmenter")
    p.add_argument("--context_file", default=None,
                   help="one prompt per line, or JSONL with context/prefix/spout per line; '-' = stdin")
    p.add_argument("--top_k", type=int, default=120, help="sample from the k most likely tokens; 0 = off, 1 = greedy")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (> 0)")
    p.add_argument("--max_generate", type=int, default=300, help="maximum new tokens per sequence")
    p.add_argument("--num_generate", type=int, default=1, help="sequences generated per prompt")
    p.add_argument("--beam_width", type=int, default=1, help="> 1: deterministic beam search of this width")
    p.add_argument("--batch_size", type=int, default=8, help="prompts decoded together")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--spout", default="none",
                   help="spout input: none, uniform, zeros, a class index (one-hot) or a .npy vector file")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same output")
    p.add_argument("--output", default=None, help="JSONL file, one object per generated sequence")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--no_stream", action="store_true", help="do not stream text to stdout as it is produced")
    cli.add_tokenizer_flags(p)
    cli.add_mesh_flags(p)
    return p


def main(args) -> None:
    raise cli.UserError("generation lands with issue 6; this front only documents its flags for now")


if __name__ == "__main__":
    cli.run(main, build_parser())
