"""Tokenizer speed and compression: encode_swe.SWEEncoder against a literal implementation of the original.

Both run in this process on the same text (about 1 MiB by default: examples/corpus/*.txt repeated), so the
ratios are meaningful even on a busy machine.  The literal implementation is tests/test_tokenizer_reference.py
(written from the spec, not the original code).

    python benchmarks/bench_tokenizer.py [--text FILE] [--mib 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from encode_swe import DEFAULT_EMOJI, DEFAULT_VOCABULARY, SWEEncoder  # noqa: E402
from test_tokenizer_reference import REFERENCE_DIR, ReferenceSWE  # noqa: E402


def best_of(repeat: int, work: Callable[[], object]) -> tuple[float, object]:
    """Best wall time over `repeat` runs, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def benchmark_text(path: str | None, mib: float) -> str:
    """The given file, or the sample corpus repeated, cut to `mib` MiB of UTF-8 at a line end."""
    if path:
        text = Path(path).read_text(encoding="utf-8")
    else:
        text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "examples" / "corpus").glob("*.txt")))
    limit = int(mib * 2 ** 20)
    while len(text.encode("utf-8")) < limit:
        text += "\n" + text
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore").rsplit("\n", 1)[0]


def load_pair(vocabulary: Path, emoji: Path) -> tuple[float, SWEEncoder, float, ReferenceSWE]:
    """Load times of both implementations (the reference reads files like the original)."""
    import json

    def load_reference() -> ReferenceSWE:
        lines = vocabulary.read_text(encoding="utf-8").split("\n")
        return ReferenceSWE(lines, json.loads(emoji.read_text(encoding="utf-8")))

    ours_time, ours = best_of(3, lambda: SWEEncoder.from_files(vocabulary, emoji))
    ref_time, ref = best_of(3, load_reference)
    return ours_time, ours, ref_time, ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", help="UTF-8 text to use (default: examples/corpus repeated)")
    parser.add_argument("--mib", type=float, default=1.0, help="size of the text in MiB (default: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best counts (default: 3)")
    args = parser.parse_args()

    original = REFERENCE_DIR / "ja-swe36k.txt"
    if original.is_file():
        vocabulary, emoji, label = original, REFERENCE_DIR / "emoji.json", "original ja-swe36k.txt"
    else:
        vocabulary, emoji, label = DEFAULT_VOCABULARY, DEFAULT_EMOJI, "our ja-swe36k.txt (reference dir absent)"
    text = benchmark_text(args.text, args.mib)
    lines = text.split("\n")
    chars, line_chars = len(text), sum(map(len, lines))
    print(f"text: {chars} characters, {len(lines)} lines, {len(text.encode('utf-8'))} bytes; vocabulary: {label}")

    ours_load, ours, ref_load, ref = load_pair(vocabulary, emoji)
    print(f"{'measure':28} {'ours':>14} {'reference':>14} {'ratio':>7}  identical")
    print(f"{'vocabulary load (s)':28} {ours_load:14.3f} {ref_load:14.3f} {ref_load / ours_load:7.1f}")

    def row(name: str, amount: int, ours_work: Callable, ref_work: Callable, unit: str = "chars/s") -> None:
        ours_time, ours_result = best_of(args.repeat, ours_work)
        ref_time, ref_result = best_of(args.repeat, ref_work)
        print(f"{name + ' (' + unit + ')':28} {amount / ours_time:14,.0f} {amount / ref_time:14,.0f} "
              f"{ref_time / ours_time:7.1f}  {ours_result == ref_result}")

    row("encode whole", chars, lambda: ours.encode(text), lambda: ref.encode(text))
    row("encode whole clean", chars, lambda: ours.encode(text, True), lambda: ref.encode(text, True))
    row("encode per line", line_chars, lambda: ours.encode_batch(lines), lambda: [ref.encode(x) for x in lines])
    ids = ours.encode(text)
    row("decode whole", chars, lambda: ours.decode(ids), lambda: ref.decode(ids))
    line_ids = ours.encode_batch(lines)
    row("decode per line", line_chars, lambda: ours.decode_batch(line_ids), lambda: [ref.decode(x) for x in line_ids])

    if original.is_file() and DEFAULT_VOCABULARY.is_file():
        own = SWEEncoder.from_files()
        own_tokens = sum(map(len, own.encode_batch(lines)))
        original_tokens = sum(map(len, ours.encode_batch(lines)))
        print(f"characters per token (per line): ours {line_chars / own_tokens:.3f}, original "
              f"{line_chars / original_tokens:.3f}, ratio {original_tokens / own_tokens:.3f}")
        per_file = []
        for path in sorted((REPO / "examples" / "corpus").glob("*.txt")):
            sample = path.read_text(encoding="utf-8").split("\n")
            per_file.append(sum(map(len, ours.encode_batch(sample))) / sum(map(len, own.encode_batch(sample))))
        print(f"  per sample file, ours/original: min {min(per_file):.3f}, median {statistics.median(per_file):.3f}")


if __name__ == "__main__":
    main()
