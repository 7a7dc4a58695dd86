"""Command line of GPTSAN's SWE tokenizer: encode, decode, statistics, the builders and training records.

    python encode_swe.py encode [--vocabulary V] [--emoji E] [--clean] [--jsonl] [FILE...]
    python encode_swe.py decode [--vocabulary V] [--emoji E] [--jsonl] [FILE...]
    python encode_swe.py stats  [--vocabulary V] [--emoji E] [--clean] [FILE...]
    python encode_swe.py build-vocab --input FILE... --size N --output FILE
    python encode_swe.py build-emoji --output FILE
    python encode_swe.py records --input FILE... --output DIR --mode lm|mlm|hybrid [...]

A thin front, like the ``run_*.py`` scripts: the encoder is ``modeling/tokenizer.py``, the builders
``modeling/vocabulary.py``, the records ``modeling/records.py``.  ``SWEEncoder`` is still importable from
here (``from encode_swe import SWEEncoder``) for users of the original layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from modeling import records
from modeling.cli import OneLineParser, UserError
from modeling.tokenizer import (DEFAULT_EMOJI, DEFAULT_VOCABULARY, SWEEncoder, TokenizerError, decode_utf8,
                                read_emoji_file, read_text_file, split_vocabulary_line)
from modeling.vocabulary import build_emoji_table, build_vocabulary, emoji_table_json

__all__ = ["SWEEncoder", "TokenizerError", "main"]


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def write_output(path: str | None, text: str, overwrite: bool) -> None:
    """Write to stdout, or atomically to `path` (temporary file, then rename); never replace silently."""
    if path is None:
        sys.stdout.write(text)
        return
    check_output_path(path, overwrite)
    target = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_output_path(path: str, overwrite: bool) -> None:
    """Fail early, before any work, if the output exists or its folder does not."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise TokenizerError(f"output file {path} already exists; pass --overwrite to replace it")
    if not target.resolve().parent.is_dir():
        raise TokenizerError(f"the folder of output file {path} does not exist; create it first")


def read_inputs(files: Sequence[str]) -> list[tuple[str, str]]:
    """(name, text) of each input file, or of stdin when no file is given."""
    if not files:
        return [("<stdin>", decode_utf8(sys.stdin.buffer.read(), "standard input"))]
    return [(name, read_text_file(name, "input file")) for name in files]


def json_lines(inputs: Sequence[tuple[str, str]], expected: type, what: str) -> Iterator[object]:
    """Values of JSON-lines inputs, each checked to be of type `expected`; blank lines are skipped."""
    for name, text in inputs:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise TokenizerError(f"{name} line {number} is not JSON ({error.msg}); each line must be {what}"
                                     ) from None
            if not isinstance(value, expected):
                raise TokenizerError(f"{name} line {number} is not {what}")
            yield value


def id_list(value: object, where: str) -> list[int]:
    """Check a decoded JSON value is a list of integers."""
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise TokenizerError(f"{where} is not a JSON list of integer token ids")
    return value


def load_encoder(args: argparse.Namespace) -> SWEEncoder:
    return SWEEncoder.from_files(args.vocabulary, args.emoji)


def command_encode(args: argparse.Namespace) -> None:
    """encode: one JSON id list for the whole input, or one per JSON-string line with --jsonl."""
    if args.output:
        check_output_path(args.output, args.overwrite)
    encoder, inputs = load_encoder(args), read_inputs(args.files)
    if args.jsonl:
        texts = json_lines(inputs, str, "a JSON string")
        out = "".join(json.dumps(encoder.encode(text, args.clean)) + "\n" for text in texts)
    else:
        out = json.dumps(encoder.encode("".join(text for _name, text in inputs), args.clean)) + "\n"
    write_output(args.output, out, args.overwrite)


def command_decode(args: argparse.Namespace) -> None:
    """decode: a JSON id list to text, or JSON id-list lines to JSON-string lines with --jsonl."""
    if args.output:
        check_output_path(args.output, args.overwrite)
    encoder, inputs = load_encoder(args), read_inputs(args.files)
    if args.jsonl:
        batches = json_lines(inputs, list, "a JSON list of token ids")
        out = "".join(json.dumps(encoder.decode(id_list(ids, "a line")), ensure_ascii=False) + "\n"
                      for ids in batches)
    else:
        ids: list[int] = []
        for name, text in inputs:
            try:
                ids += id_list(json.loads(text), name)
            except json.JSONDecodeError as error:
                raise TokenizerError(f"{name} is not JSON ({error.msg}, line {error.lineno}); pass the output "
                                     "of 'encode'") from None
        out = encoder.decode(ids)
    write_output(args.output, out, args.overwrite)


def command_stats(args: argparse.Namespace) -> None:
    """stats: characters per token, byte-fallback rate and unknown characters of the input."""
    encoder, inputs = load_encoder(args), read_inputs(args.files)
    text = "".join(text for _name, text in inputs)
    ids = encoder.encode(text, args.clean)
    unknown = encoder.unknown_characters(text, args.clean)
    byte_ids = set(encoder.byte_ids)
    byte_tokens = sum(1 for token_id in ids if token_id in byte_ids)
    print(f"characters        {len(text)}")
    print(f"tokens            {len(ids)}")
    print(f"chars per token   {len(text) / max(len(ids), 1):.3f}")
    print(f"byte tokens       {byte_tokens} ({100 * byte_tokens / max(len(ids), 1):.2f} %)")
    print(f"unknown chars     {sum(unknown.values())} ({len(unknown)} distinct)")
    for char, count in unknown.most_common(args.top):
        print(f"  U+{ord(char):04X} {char!r:8} {count}")


def command_build_vocab(args: argparse.Namespace) -> None:
    """build-vocab: a vocabulary in the original format from a UTF-8 corpus; reports dead ids."""
    check_output_path(args.output, args.overwrite)
    emoji = read_emoji_file(args.emoji)
    lines = build_vocabulary(args.input, args.size, emoji, min_count=args.min_count)
    encoder = SWEEncoder(lines, emoji, where=f"built vocabulary {args.output}")
    dead = encoder.dead_ids()
    if dead:
        raise TokenizerError(f"{len(dead)} dead ids (first: {dead[:5]}); this is a bug in build-vocab")
    write_output(args.output, "\n".join(lines), args.overwrite)
    spellings = sum(len(split_vocabulary_line(line)) for line in lines)
    print(f"wrote {args.output}: {len(lines)} ids, {spellings} spellings, 0 dead ids", file=sys.stderr)


def command_build_emoji(args: argparse.Namespace) -> None:
    """build-emoji: our emoji.json, derived from Unicode names plus our kaomoji."""
    check_output_path(args.output, args.overwrite)
    table = build_emoji_table()
    write_output(args.output, emoji_table_json(table), args.overwrite)
    print(f"wrote {args.output}: {len(table['emoji'])} keys in {len(table['emoji_inv'])} categories",
          file=sys.stderr)


def command_records(args: argparse.Namespace) -> None:
    """records: text files (or a filename,fileid CSV) -> sharded TFRecord training files (modeling/records.py)."""
    options = records.RecordOptions(mode=args.mode, num_context=args.num_context, hybrid_rate=args.hybrid_rate,
                                    num_mask=args.num_mask, max_mask=args.max_mask, seed=args.seed,
                                    clean=args.clean, whole_documents=args.whole_documents)
    try:
        records.make_records(args.input, args.output, options, vocabulary=args.vocabulary, emoji=args.emoji,
                             num_process=args.num_process, num_shards=args.num_shards, overwrite=args.overwrite)
    except UserError as error:   # from modeling/files.py; reported like the tokenizer's errors
        raise TokenizerError(str(error)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """One subparser per command; a new command only needs an entry here and a command_* function."""
    parser = OneLineParser(
        prog="encode_swe.py", description="GPTSAN's SWE tokenizer: encode, decode, statistics, builders.",
        epilog="The released GPTSAN-2.8B weights need the original ja-swe36k.txt and emoji.json "
               "(pass them with --vocabulary/--emoji); the files in this repository are our own.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_files(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--vocabulary", default=str(DEFAULT_VOCABULARY),
                         help="vocabulary file (default: %(default)s)")
        sub.add_argument("--emoji", default=str(DEFAULT_EMOJI), help="emoji table (default: %(default)s)")
        sub.add_argument("files", nargs="*", metavar="FILE", help="input files (default: standard input)")
        return sub

    def with_output(sub: argparse.ArgumentParser, required: bool = False) -> argparse.ArgumentParser:
        sub.add_argument("--output", "-o", required=required, help="output file (default: standard output)"
                         if not required else "output file")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        return sub

    encode = with_output(with_files(commands.add_parser("encode", help="text -> JSON token ids")))
    encode.add_argument("--clean", action="store_true", help="replace URLs, e-mails, dates, prices by tags")
    encode.add_argument("--jsonl", action="store_true", help="one JSON string per input line")
    encode.set_defaults(run=command_encode)

    decode = with_output(with_files(commands.add_parser("decode", help="JSON token ids -> text")))
    decode.add_argument("--jsonl", action="store_true", help="one JSON id list per line, JSON strings out")
    decode.set_defaults(run=command_decode)

    stats = with_files(commands.add_parser("stats", help="characters per token, byte fallback, unknowns"))
    stats.add_argument("--clean", action="store_true", help="encode with clean tags")
    stats.add_argument("--top", type=_positive, default=20, help="unknown characters to list (default: 20)")
    stats.set_defaults(run=command_stats)

    build = with_output(commands.add_parser("build-vocab", help="build a vocabulary from a UTF-8 corpus"),
                        required=True)
    build.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 corpus files")
    build.add_argument("--size", type=_positive, required=True, help="number of ids, e.g. 36000")
    build.add_argument("--emoji", default=str(DEFAULT_EMOJI),
                       help="emoji table the vocabulary will be used with (default: %(default)s)")
    build.add_argument("--min-count", type=_positive, default=3,
                       help="corpus characters seen this often get their own id (default: 3)")
    build.set_defaults(run=command_build_vocab)

    emoji = with_output(commands.add_parser("build-emoji", help="build our emoji.json from Unicode data"),
                        required=True)
    emoji.set_defaults(run=command_build_emoji)

    make = commands.add_parser(
        "records", help="text -> sharded TFRecord training files (lm, mlm, hybrid)",
        description="Build GPTSAN training records (features x, y, i, num_input; spec 8 with D10 fixed) as "
                    "<mode>_NNNN.tfrecord shards plus records.json in --output. Same --seed and inputs give "
                    "byte-identical files whatever --num_process.")
    make.add_argument("--input", nargs="+", required=True, metavar="FILE",
                      help="UTF-8 text files or globs (documents separated by blank lines), or a CSV whose "
                           "first line is exactly 'filename,fileid' (rows: file,class id; the class id "
                           "becomes feature i; relative names resolve against the CSV's folder)")
    make.add_argument("--output", "-o", required=True, metavar="DIR", help="output directory (gs:// allowed)")
    make.add_argument("--overwrite", action="store_true", help="replace records already in --output")
    make.add_argument("--mode", choices=records.MODES, required=True,
                      help="lm: packed causal records; mlm: almost all prefix with shifted MLM; hybrid: "
                           "prefix-LM records with probability --hybrid_rate, packed LM otherwise")
    make.add_argument("--num_context", type=_positive, default=records.DEFAULT_NUM_CONTEXT,
                      help="record length C (default: %(default)s)")
    make.add_argument("--hybrid_rate", type=float, default=records.DEFAULT_HYBRID_RATE,
                      help="hybrid mode: probability that a record is a prefix-LM record (0.08 is the "
                           "release's setting; the original script's default was 1.0; default: %(default)s)")
    make.add_argument("--num_mask", type=float, default=records.DEFAULT_NUM_MASK,
                      help="fraction of prefix tokens masked, shifted MLM (default: %(default)s)")
    make.add_argument("--max_mask", type=int, default=records.DEFAULT_MAX_MASK,
                      help="cap on masks per record (default: %(default)s)")
    make.add_argument("--seed", type=int, default=0,
                      help="seed of document order, record kinds and masks (default: %(default)s)")
    make.add_argument("--num_process", type=_positive, default=records.default_num_process(),
                      help="tokenizer worker processes; does not change the output (default: min(8, CPUs) "
                           "= %(default)s)")
    make.add_argument("--num_shards", type=_positive, default=records.DEFAULT_NUM_SHARDS,
                      help="output files; record n goes to shard n mod num_shards (default: %(default)s)")
    make.add_argument("--clean", action="store_true",
                      help="encode the causal part with clean tags (URL, e-mail, date, price...) as the "
                           "original did; the prefix part is never cleaned")
    make.add_argument("--whole_documents", action="store_true",
                      help="lm records: cut no document that fits in a record, so each record starts with a "
                           "document right after SOT SEG, as a prompt does; use it for class fine-tuning "
                           "records (a filename,fileid CSV), whose first document only the spout can tell")
    make.add_argument("--vocabulary", default=str(DEFAULT_VOCABULARY),
                      help="vocabulary file (default: %(default)s)")
    make.add_argument("--emoji", default=str(DEFAULT_EMOJI), help="emoji table (default: %(default)s)")
    make.set_defaults(run=command_records)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except TokenizerError as error:
        print(f"encode_swe.py {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
