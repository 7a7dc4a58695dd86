#!/usr/bin/env python3
"""Generate Japanese text with a GPTSAN model: KV cache, top-k/top-p/temperature sampling, beam search,
a bidirectional --prefix and the spout control vector.

Input layout: [SOT] prefix [SEG] context; generation continues the context. A sequence ends at
end-of-text, a --stop string, --max_generate tokens, or when the model's positions are used up
(finish reason 'length')."""

from __future__ import annotations

import json
import sys

from modeling import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="model directory (parameters.json + checkpoint)")
    p.add_argument("--context", default="", help="text to continue (may be empty)")
    p.add_argument("--prefix", default="", help="text placed in the bidirectional prefix before the segmenter")
    p.add_argument("--context_file", default=None,
                   help="one prompt per line, or JSONL with context/prefix/spout per line; '-' = stdin")
    p.add_argument("--top_k", type=cli.NON_NEGATIVE, default=120, help="sample from the k most likely tokens; 0 = off, 1 = greedy")
    p.add_argument("--top_p", type=cli.number(float, 0.0, 1.0, above=True), default=1.0, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--temperature", type=cli.RATE, default=1.0, help="softmax temperature (> 0)")
    p.add_argument("--max_generate", type=cli.COUNT, default=300, help="maximum new tokens per sequence")
    p.add_argument("--num_generate", type=cli.COUNT, default=1,
                   help="sequences per prompt (with --beam_width: the best N finished beams)")
    p.add_argument("--beam_width", type=cli.COUNT, default=1, help="> 1: deterministic beam search of this width")
    p.add_argument("--batch_size", type=cli.COUNT, default=8, help="sequences decoded together")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not included in the text")
    p.add_argument("--spout", default="none",
                   help="spout input: none, uniform, zeros, a class index (one-hot) or a .npy vector file")
    p.add_argument("--seed", type=cli.NON_NEGATIVE, default=None, help="random seed: the same seed gives the same output")
    p.add_argument("--output", default=None, help="JSONL file, one object per generated sequence")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--no_stream", action="store_true", help="do not stream text to stdout as it is produced")
    cli.add_tokenizer_flags(p)
    cli.add_mesh_flags(p)
    return p


def check_flags(args) -> None:
    if args.beam_width > 1 and args.num_generate > args.beam_width:
        raise cli.UserError(f"--num_generate {args.num_generate} exceeds --beam_width {args.beam_width}")


def read_prompts(args) -> list[dict]:
    """Prompt objects {context, prefix, spout} from the flags or --context_file."""
    from modeling.files import read_items  # noqa: PLC0415

    if not args.context_file:
        return [{"context": args.context, "prefix": args.prefix, "spout": args.spout}]
    return [{"context": context, "prefix": str(extra.get("prefix", args.prefix)),
             "spout": str(extra.get("spout", args.spout)), "line": number}
            for number, context, extra in read_items(args.context_file, "--context_file")]


def main(args) -> None:
    import numpy as np  # noqa: PLC0415

    from modeling import files, generation  # noqa: PLC0415
    from modeling.mesh import MeshError, make_mesh  # noqa: PLC0415
    from modeling.runtime import Runtime, load_tokenizer, open_model_dir  # noqa: PLC0415

    check_flags(args)
    if args.output:
        files.check_new_output(args.output, args.overwrite)
    model_dir = open_model_dir(args.model)
    config = model_dir.config
    encoder = load_tokenizer(model_dir, args.vocabulary, args.emoji)
    ids = {name: encoder.special_id(name) for name in
           ("start", "segmenter", "not_token", "separator", "end_of_text", "bag")}
    rng = np.random.default_rng(args.seed)
    fed = {}
    if config.input_punctuation == "separator":   # feed what the model was trained on (see modeling/records.py)
        from modeling.records import SpecialIds  # noqa: PLC0415
        fed = dict.fromkeys(SpecialIds.of(encoder).punctuation, ids["separator"])
    sampling = generation.Sampling(args.top_k, args.top_p, args.temperature, args.max_generate, args.beam_width)

    jobs = []   # (prompt dict, generation.Prompt) per sequence to generate
    for item in read_prompts(args):
        where = f"{args.context_file}:{item['line']}" if "line" in item else "--spout"
        prefix = encoder.encode(item["prefix"])
        context = [fed.get(t, t) for t in encoder.encode(item["context"])]
        vector = generation.spout_vector(item["spout"], config.num_spout, rng, where)
        room = config.num_contexts - (vector is not None) - 2 - len(prefix) - 1   # leave room for one new token
        if room < 0:
            raise cli.UserError(f"the prefix of {where} is longer than the model's {config.num_contexts} positions")
        if len(context) > room:
            print(f"warning: the context is {len(context)} tokens; keeping its last {room}", file=sys.stderr)
            context = context[len(context) - room:]
        copies = 1 if args.beam_width > 1 else args.num_generate
        for _ in range(copies):
            spout = generation.spout_vector(item["spout"], config.num_spout, rng, where) if item["spout"] == "uniform" \
                else vector
            jobs.append((item, generation.Prompt(prefix, context, spout)))
    with_spout = any(p.spout is not None for _, p in jobs)
    if with_spout and any(p.spout is None for _, p in jobs):
        raise cli.UserError("mix of prompts with and without a spout: give every prompt a spout (e.g. zeros)")

    try:
        mesh = make_mesh(args.mesh_shape, args.layout, args.tpu)
    except MeshError as error:
        raise cli.UserError(str(error)) from None
    runtime = Runtime(config, mesh)
    width = args.beam_width if args.beam_width > 1 else min(args.batch_size, len(jobs))
    if args.beam_width == 1:   # idle rows fill the batch up to a multiple of the mesh's batch axis
        width = -(-width // mesh.batch_split) * mesh.batch_split
    generator = generation.Generator(runtime, width, max(len(p.tokens(0, 0)) for _, p in jobs), with_spout)
    runtime.restore(model_dir.checkpoint)
    generator.warm_up()

    def text_of(tokens: list[int]) -> str:
        text = encoder.decode(generation.output_ids(tokens, ids))
        for stop in args.stop:
            if stop in text:
                text = text[:text.index(stop)]
        return text

    def stops(tokens: list[int]) -> bool:
        return bool(args.stop) and any(s in encoder.decode(generation.output_ids(tokens, ids)) for s in args.stop)

    stream = not args.no_stream and width == 1 and args.beam_width == 1
    printed = [""]

    def on_token(_row: int, seq) -> None:   # stream complete characters only
        text = text_of(seq.tokens).rstrip("\ufffd")
        sys.stdout.write(text[len(printed[0]):])
        sys.stdout.flush()
        printed[0] = text

    results = []
    if args.beam_width > 1:
        for item, prompt in jobs:
            for seq in generation.beam_search(generator, prompt, sampling, ids, fed)[:args.num_generate]:
                results.append((item, seq))
    else:
        for chunk in generation.batches(jobs, width):
            printed[0] = ""
            sequences = generation.generate(generator, [p for _, p in chunk], sampling, ids, rng, stops,
                                            on_token if stream else None, fed)
            if stream:
                print()
            results += [(item, seq) for (item, _), seq in zip(chunk, sequences)]
    records = [{"context": item["context"], "prefix": item["prefix"], "text": text_of(seq.tokens),
                "tokens": seq.tokens, "finish_reason": seq.finish_reason, "logprobs": seq.logprobs,
                "score": seq.score, "seconds": round(seq.seconds, 4)} for item, seq in results]
    if not stream:
        for record in records:
            print(f"====[{record['finish_reason']}] {record['context']}{record['text']}")
    if args.output:
        with files.atomic_output(args.output) as out:
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


if __name__ == "__main__":
    cli.run(main, build_parser())
