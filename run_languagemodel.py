#!/usr/bin/env python3
"""Fill [MASK] spans and extract per-layer hidden states with a GPTSAN model (one forward pass).

The context goes into the bidirectional prefix; each [MASK] is filled with its most likely token.
Output: the original's four stdout sections, and optionally JSON (JSONL in batch mode)."""

from __future__ import annotations

import json

from modeling import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="model directory (parameters.json + checkpoint)")
    p.add_argument("--context", default="", help="input text; each --mask marker becomes the mask token")
    p.add_argument("--mask", default="[MASK]", help="literal marker replaced by <|inputmask|>")
    p.add_argument("--pos_vector", type=int, default=-1,
                   help="position (counting the start token) whose hidden states form output_vector; <0 = last")
    p.add_argument("--input_file", default=None,
                   help="batch mode: one text, or one JSON object with 'context' (other keys are echoed), "
                        "per line; writes JSONL to --output")
    p.add_argument("--batch_size", type=cli.COUNT, default=16, help="texts per forward pass in batch mode")
    p.add_argument("--output", default=None, help="JSON (or JSONL in batch mode) output file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    cli.add_tokenizer_flags(p)
    cli.add_mesh_flags(p)
    return p


def main(args) -> None:
    from tqdm import tqdm  # noqa: PLC0415

    from modeling import files, languagemodel  # noqa: PLC0415
    from modeling.mesh import MeshError, make_mesh  # noqa: PLC0415
    from modeling.runtime import Runtime, load_tokenizer, open_model_dir  # noqa: PLC0415

    if args.input_file and not args.output:
        raise cli.UserError("batch mode (--input_file) needs --output for the JSONL results")
    if args.output:
        files.check_new_output(args.output, args.overwrite)
    model_dir = open_model_dir(args.model)
    config = model_dir.config
    encoder = load_tokenizer(model_dir, args.vocabulary, args.emoji)
    inputs = files.read_items(args.input_file, "--input_file") if args.input_file else [(0, args.context, {})]
    examples = []
    for number, text, extra in inputs:
        where = f"{args.input_file}:{number}" if args.input_file else "--context"
        example = languagemodel.layout(encoder, text, args.mask, config.train_mode, config.num_contexts, where)
        example.extra = extra
        examples.append(example)
    positions = [languagemodel.vector_position(e, args.pos_vector, f"input {i + 1}" if args.input_file
                                               else "--context") for i, e in enumerate(examples)]

    try:
        mesh = make_mesh(args.mesh_shape, args.layout, args.tpu)
    except MeshError as error:
        raise cli.UserError(str(error)) from None
    batch_size = min(args.batch_size, len(examples))
    runtime = Runtime(config, mesh)
    mask_id = encoder.special_id("mask")
    forwards = languagemodel.mask_fill_forwards(runtime, examples, batch_size, mask_id)
    runtime.restore(model_dir.checkpoint)

    def results():
        for result in languagemodel.fill_masks(runtime, forwards, examples, positions, batch_size, mask_id):
            yield languagemodel.decode_result(encoder, result)

    if not args.input_file:
        result = next(results())
        languagemodel.print_sections(result)
        if args.output:
            files.write_json(args.output, result)
        return
    with files.atomic_output(args.output) as out:
        for result in tqdm(results(), total=len(examples), unit="text", desc="vectorising"):
            out.write(json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    cli.run(main, build_parser())
