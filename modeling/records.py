"""Training records for GPTSAN: UTF-8 text -> sharded TFRecord files (spec §8, with D10 fixed).

Command line: ``python encode_swe.py records --input FILE... --output DIR --mode lm|mlm|hybrid``.

Every record is a ``tf.train.Example`` with the int64 features of spec §8.1 (see ``feature_spec``):
``x`` and ``y`` of length C (``--num_context``), ``i`` (class id from a CSV, else a running record number)
and ``num_input`` (index of ``<|segmenter|>`` in ``x``, the prefix length of the attention mask).

Layout (tokens symbolic; SOT, SEG, EOT, NOT, SEP, MSK, BAG are the GPTSAN specials of spec §7)::

    prefix-LM / MLM record (one document chunk):
        x = SOT  p1 ... pn  SEG  c1' ... cm'  EOT  NOT ...        num_input = n + 1
        y = -1   -1 ... -1  c1   c2  ... EOT  -1   -1  ...        (+ shifted MLM targets y[p-1] = p)
    plain LM record (documents packed, spec §8.2 pads instead; ``--whole_documents``: padded after the
    last document that fits whole):
        x = SOT  SEG  a1' ... ak'  EOT  b1' ... bj'  EOT  ...     num_input = 1
        y = -1   a1   a2  ... EOT  b1   b2  ... EOT  -1|c1 ...

where ``c'`` is the input copy of a causal token (sentence-final punctuation -> SEP) and the target keeps
the real token.  y_t is the next token of the target stream from the SEG position on.  Unlike the original
(D10) the token before EOT predicts EOT, a final EOT and the padding have target -1, and an EOT inside a
packed record predicts the first token of the next document.

Construction:

* Inputs are text files (documents separated by blank lines) given as paths or globs, or CSV files whose
  first line is exactly ``filename,fileid`` (D15: no other list formats).  Documents are shuffled with
  ``--seed``; the record sequence is built in one process from that order, so the output depends only on
  the seed and the inputs; ``--num_process`` workers only tokenize (an order-preserving parallel map).
* Each line of a document is encoded and followed by ``<BR>``.  Causal lines use ``clean=--clean`` and bag
  compression (a run of >= 3 identical tokens t with id <= LAST_TOKEN becomes t, BAG); prefix lines are
  encoded without clean tags and without compression.  When a record boundary or the prefix/causal split
  falls inside a line, the rest of that line keeps the encoding it was cut from (a prefix-cut remainder is
  bag-compressed but not re-encoded with clean tags; a causal-cut remainder that starts the next chunk's
  prefix keeps its compression).
* Each record draws its kind: ``lm`` always plain LM; ``mlm`` always prefix with n_p = min(C - 3, rest of
  the document); ``hybrid`` a prefix record with probability ``--hybrid_rate`` (default 0.08, the
  release's setting: about 8 % prefix-LM records with masking, 92 % plain LM), with n_p uniform in
  [0, min(C - 3, rest of the document)], otherwise a plain LM record.  A prefix record takes the next
  unread document (or the next chunk of the one in progress); plain LM records pack documents (per class
  id when a CSV gives classes, so ``i`` stays meaningful) and continue a long document in the next record.
* Masking (prefix only): k = min(floor(num_mask * n_p), max_mask) of the prefix positions holding an
  ordinary token (id < SOT) are chosen; y[p-1] = x[p], then x[p] becomes MSK (80 %), a random id in
  [0, LAST_TOKEN) (10 %) or stays (10 %).

The whole input is held in memory (documents are shuffled globally); split very large corpora into several
runs with different ``--output`` directories.  TensorFlow is imported only when files are touched.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import multiprocessing
import os
import posixpath
import random
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from modeling.tokenizer import DEFAULT_EMOJI, DEFAULT_VOCABULARY, SWEEncoder, TokenizerError, decode_utf8

MODES = ("lm", "mlm", "hybrid")
DEFAULT_NUM_CONTEXT = 1280
DEFAULT_HYBRID_RATE = 0.08       # the release's setting (spec §8.2: 8 % prefix-LM records, 92 % plain LM)
DEFAULT_NUM_MASK = 0.08
DEFAULT_MAX_MASK = 100
DEFAULT_NUM_SHARDS = 8
MIN_NUM_CONTEXT = 4
CSV_HEADER = "filename,fileid"
PUNCTUATION = "。｡．.？！?!:：;；"   # sentence-final punctuation replaced by <|separator|> in causal inputs
SUMMARY_FILE = "records.json"
SHARD_RE = re.compile(r"(?:lm|mlm|hybrid)_\d{4}\.tfrecord")
_GLOB_CHARS = re.compile(r"[*?\[]")
_TASK_CHARACTERS = 200_000       # characters of text per tokenizer task sent to a worker


def default_num_process() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def shard_name(mode: str, shard: int) -> str:
    return f"{mode}_{shard:04d}.tfrecord"


# ----------------------------------------------------------------------------------------------------------
# Options and special ids
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RecordOptions:
    """What decides the content of the records (not how many processes or shards produce them)."""

    mode: str = "hybrid"
    num_context: int = DEFAULT_NUM_CONTEXT
    hybrid_rate: float = DEFAULT_HYBRID_RATE
    num_mask: float = DEFAULT_NUM_MASK
    max_mask: int = DEFAULT_MAX_MASK
    seed: int = 0
    clean: bool = False
    whole_documents: bool = False   # lm records cut no document that fits in one (see _Packer)

    def check(self) -> "RecordOptions":
        if self.mode not in MODES:
            raise TokenizerError(f"--mode {self.mode} is unknown; use one of {', '.join(MODES)}")
        if self.num_context < MIN_NUM_CONTEXT:
            raise TokenizerError(f"--num_context {self.num_context} is too small; use at least {MIN_NUM_CONTEXT}")
        if not 0.0 <= self.hybrid_rate <= 1.0:
            raise TokenizerError(f"--hybrid_rate {self.hybrid_rate} is not a probability; use a value in [0, 1]")
        if not 0.0 <= self.num_mask <= 1.0:
            raise TokenizerError(f"--num_mask {self.num_mask} is not a fraction; use a value in [0, 1]")
        if self.max_mask < 0:
            raise TokenizerError(f"--max_mask {self.max_mask} is negative; use 0 or more")
        return self


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The GPTSAN special ids of a vocabulary (spec §7) and the punctuation ids replaced by SEP."""

    start: int
    mask: int
    separator: int
    not_token: int
    bag: int
    segmenter: int
    end_of_text: int
    newline: int
    last_token: int
    punctuation: frozenset[int]

    @classmethod
    def of(cls, encoder: SWEEncoder) -> "SpecialIds":
        encoder.check_gptsan_layout()
        punctuation = set()
        for char in PUNCTUATION:
            ids = encoder.encode(char)
            if len(ids) == 1:
                punctuation.add(ids[0])
        names = ("start", "mask", "separator", "not_token", "bag", "segmenter", "end_of_text", "newline")
        return cls(**{name: encoder.special_id(name) for name in names}, last_token=encoder.last_token_id,
                   punctuation=frozenset(punctuation))


class Record(NamedTuple):
    """One training record; ``kind`` ('lm' or 'prefix'), ``length`` (non-padding positions) and ``masked``
    (MLM targets) are statistics and are not written."""

    x: list[int]
    y: list[int]
    i: int
    num_input: int
    kind: str
    length: int
    masked: int


class EncodedDocument(NamedTuple):
    """Token lines of one document, each ending with <BR>: prefix encoding (None when no prefix record can
    use it) and causal encoding (clean tags if asked, bag-compressed)."""

    prefix: list[list[int]] | None
    causal: list[list[int]]


# ----------------------------------------------------------------------------------------------------------
# Token-level steps
# ----------------------------------------------------------------------------------------------------------
def bag_compress(tokens: Sequence[int], ids: SpecialIds) -> list[int]:
    """Runs of >= 3 identical ordinary tokens t (id <= LAST_TOKEN) become t, <|bagoftoken|>."""
    if not any(a == b == c for a, b, c in zip(tokens, tokens[1:], tokens[2:])):
        return list(tokens)
    out: list[int] = []
    n, start = len(tokens), 0
    while start < n:
        token, end = tokens[start], start + 1
        while end < n and tokens[end] == token:
            end += 1
        if end - start >= 3 and token <= ids.last_token:
            out += (token, ids.bag)
        else:
            out.extend(tokens[start:end])
        start = end
    return out


def causal_input(tokens: Iterable[int], ids: SpecialIds) -> list[int]:
    """The input copy of causal tokens: sentence-final punctuation -> <|separator|>."""
    punctuation, separator = ids.punctuation, ids.separator
    return [separator if token in punctuation else token for token in tokens]


def encode_documents(encoder: SWEEncoder, documents: Sequence[Sequence[str]], ids: SpecialIds,
                     clean: bool = False, with_prefix: bool = True) -> list[EncodedDocument]:
    """Encode the lines of documents (each followed by <BR>), all lines in one batch; see ``EncodedDocument``."""
    lines = [line for document in documents for line in document]
    plain = encoder.encode_batch(lines) if with_prefix or not clean else None
    causal = encoder.encode_batch(lines, True) if clean else plain
    newline = [ids.newline]
    encoded, start = [], 0
    for document in documents:
        end = start + len(document)
        encoded.append(EncodedDocument([tokens + newline for tokens in plain[start:end]] if with_prefix else None,
                                       [bag_compress(tokens, ids) + newline for tokens in causal[start:end]]))
        start = end
    return encoded


def split_documents(text: str) -> list[list[str]]:
    """Documents of a text file: runs of non-blank lines; blank (whitespace-only) lines separate them."""
    documents, current = [], []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


# ----------------------------------------------------------------------------------------------------------
# Record building (pure; randomness from one seeded generator, consumed in record order)
# ----------------------------------------------------------------------------------------------------------
class _Cursor:
    """Reading position in a document used for prefix records: whole lines, or the rest of a cut line."""

    def __init__(self, document: EncodedDocument, class_id: int | None):
        if document.prefix is None:
            raise ValueError("prefix records need documents encoded with_prefix=True")
        self.prefix, self.causal, self.class_id = document.prefix, document.causal, class_id
        self.line, self.rest = 0, None
        self.prefix_after = [0] * (len(self.prefix) + 1)       # prefix tokens of lines line..end
        for index in range(len(self.prefix) - 1, -1, -1):
            self.prefix_after[index] = self.prefix_after[index + 1] + len(self.prefix[index])

    def done(self) -> bool:
        return self.rest is None and self.line >= len(self.causal)

    def prefix_tokens_left(self) -> int:
        if self.rest is None:
            return self.prefix_after[self.line]
        return len(self.rest) + self.prefix_after[self.line + 1]

    def take_prefix(self, count: int, ids: SpecialIds) -> list[int]:
        """Up to ``count`` prefix tokens; the causal rest of a line cut here is bag-compressed."""
        return self._take(count, self.prefix, lambda rest, was_rest: rest if was_rest else bag_compress(rest, ids))

    def take_causal(self, count: int) -> list[int]:
        return self._take(count, self.causal, lambda rest, _was_rest: rest)

    def _take(self, count: int, lines: Sequence[list[int]], cut: Callable[[list[int], bool], list[int]]) -> list[int]:
        """Whole lines (or the rest of a cut one) until ``count`` tokens; ``cut(rest, was_rest)`` is what
        remains of a line cut in the middle."""
        out: list[int] = []
        while count > 0 and not self.done():
            tokens = self.rest if self.rest is not None else lines[self.line]
            if len(tokens) <= count:
                out += tokens
                count -= len(tokens)
                self.line, self.rest = self.line + 1, None
            else:
                out += tokens[:count]
                self.rest = cut(tokens[count:], self.rest is not None)
                count = 0
        return out

    def next_target(self, ids: SpecialIds) -> int:
        if self.rest is not None:
            return self.rest[0]
        return self.causal[self.line][0] if self.line < len(self.causal) else ids.end_of_text


def mask_prefix(x: list[int], y: list[int], prefix_length: int, rng: random.Random, ids: SpecialIds,
                num_mask: float, max_mask: int) -> int:
    """Shifted MLM on x[1 .. prefix_length]; returns the number of masked positions."""
    candidates = [p for p in range(1, prefix_length + 1) if x[p] < ids.start]
    k = min(math.floor(num_mask * prefix_length + 1e-9), max_mask, len(candidates))
    for p in rng.sample(candidates, k):
        y[p - 1] = x[p]
        draw = rng.random()
        if draw < 0.8:
            x[p] = ids.mask
        elif draw < 0.9:
            x[p] = rng.randrange(ids.last_token)
    return k


def prefix_record(cursor: _Cursor, prefix_length: int, options: RecordOptions, ids: SpecialIds,
                  rng: random.Random) -> tuple[list[int], list[int], int, int, int]:
    """Next chunk of `cursor` as SOT prefix SEG causal [EOT]: (x, y, num_input, length, masked)."""
    size = options.num_context
    prefix = cursor.take_prefix(prefix_length, ids)
    n = len(prefix)
    causal = cursor.take_causal(size - 2 - n)
    x = [ids.start, *prefix, ids.segmenter, *causal_input(causal, ids)]
    y = [-1] * (n + 1) + causal + [cursor.next_target(ids)]
    if cursor.done() and len(x) < size:
        x.append(ids.end_of_text)
        y.append(-1)
    length = len(x)
    x += [ids.not_token] * (size - length)
    y += [-1] * (size - length)
    masked = mask_prefix(x, y, n, rng, ids, options.num_mask, options.max_mask)
    return x, y, n + 1, length, masked


class _Packer:
    """Plain LM records: documents packed as SOT SEG doc EOT doc EOT ..., long ones continued.

    With ``whole_documents`` a record ends after the last document that fits whole (a document longer
    than a record still continues in the next), so every record starts with a document right after
    SOT SEG, where a prompt is at generation. For class fine-tuning this matters: the spout is what
    tells a record's first document its class, and cut anywhere, that document would rarely start
    there, so the fine-tuned model would not learn to take the class from the spout where a prompt
    needs it (issue 16)."""

    def __init__(self, class_id: int | None, options: RecordOptions, ids: SpecialIds):
        self.class_id, self.ids, self.room = class_id, ids, options.num_context - 2
        self.whole_documents = options.whole_documents
        self.size = options.num_context
        self.stream: list[int] = []     # target tokens, each document followed by EOT
        self.position = 0

    def add(self, document: EncodedDocument) -> None:
        if self.position > 65536 and self.position * 2 > len(self.stream):
            del self.stream[:self.position]
            self.position = 0
        for line in document.causal:
            self.stream += line
        self.stream.append(self.ids.end_of_text)

    def _skip_consumed_eot(self) -> None:
        # An EOT at the head was the target of the previous record's last token: it is not input again.
        if self.position < len(self.stream) and self.stream[self.position] == self.ids.end_of_text:
            self.position += 1

    def available(self) -> int:
        self._skip_consumed_eot()
        return len(self.stream) - self.position

    def take(self) -> tuple[list[int], list[int], int]:
        """One record of up to C - 2 stream tokens: (x, y, length)."""
        self._skip_consumed_eot()
        ids, start = self.ids, self.position
        end = min(start + self.room, len(self.stream))
        if self.whole_documents and end < len(self.stream):
            window = self.stream[start:end]
            if ids.end_of_text in window:
                end -= window[::-1].index(ids.end_of_text)      # right after the window's last EOT
        chunk = self.stream[start:end]
        self.position = end
        # The stream always has a token after a document token (its EOT); after an EOT the next document
        # is not trained on unless it starts in this record.
        last = -1 if chunk[-1] == ids.end_of_text else self.stream[end]
        x = [ids.start, ids.segmenter, *causal_input(chunk, ids)]
        y = [-1, *chunk, last]
        length = len(x)
        x += [ids.not_token] * (self.size - length)
        y += [-1] * (self.size - length)
        return x, y, length


def build_records(documents: Iterable[tuple[int | None, EncodedDocument]], options: RecordOptions,
                  ids: SpecialIds) -> Iterator[Record]:
    """Records from encoded documents in the given order; deterministic for a given options.seed.

    ``i`` is the document's class id, or (class id None) the running number of the record.
    """
    options.check()
    rng = random.Random(f"gptsan-records/{options.seed}/records")
    source = iter(documents)
    packers: dict[int | None, _Packer] = {}
    full: collections.deque = collections.deque()    # packers holding at least one full record, in order
    state = {"prefix": None}
    limit = options.num_context - 3

    def prefix_step():
        cursor = state["prefix"]
        if cursor is None or cursor.done():
            item = next(source, None)
            if item is None:
                state["prefix"] = None
                return None
            cursor = state["prefix"] = _Cursor(item[1], item[0])
        cap = min(limit, cursor.prefix_tokens_left())
        length = cap if options.mode == "mlm" else rng.randint(0, cap)
        x, y, num_input, used, masked = prefix_record(cursor, length, options, ids, rng)
        return x, y, cursor.class_id, num_input, "prefix", used, masked

    def lm_step():
        # Records are cut from a packer only when asked for, so a huge document is never held as records.
        while True:
            while full and full[0].available() < full[0].room:
                full.popleft()
            if full:
                packer = full[0]
                break
            item = next(source, None)
            if item is None:
                packer = next((p for p in packers.values() if p.available()), None)   # the final partial ones
                if packer is None:
                    return None
                break
            packer = packers.get(item[0])
            if packer is None:
                packer = packers[item[0]] = _Packer(item[0], options, ids)
            packer.add(item[1])
            if packer.available() >= packer.room and packer not in full:
                full.append(packer)
        x, y, length = packer.take()
        return x, y, packer.class_id, 1, "lm", length, 0

    number = 0
    while True:
        if options.mode == "lm":
            want_prefix = False
        else:
            want_prefix = options.mode == "mlm" or rng.random() < options.hybrid_rate
        built = (prefix_step() or lm_step()) if want_prefix else (lm_step() or prefix_step())
        if built is None:
            return
        x, y, class_id, num_input, kind, length, masked = built
        yield Record(x, y, number if class_id is None else class_id, num_input, kind, length, masked)
        number += 1


def shuffled(items: Sequence, seed: int) -> list:
    """The document order used for the records (a seeded shuffle)."""
    order = list(items)
    random.Random(f"gptsan-records/{seed}/shuffle").shuffle(order)
    return order


def records_from_texts(encoder: SWEEncoder, documents: Sequence[str], options: RecordOptions,
                       class_ids: Sequence[int] | None = None, shuffle: bool = False) -> list[Record]:
    """Records from in-memory texts (documents separated by blank lines), for tests and small jobs."""
    ids = SpecialIds.of(encoder)
    with_prefix = options.mode != "lm"
    items = [(None if class_ids is None else class_ids[n], lines)
             for n, text in enumerate(documents) for lines in split_documents(text)]
    if shuffle:
        items = shuffled(items, options.seed)
    documents = encode_documents(encoder, [lines for _class_id, lines in items], ids, options.clean, with_prefix)
    return list(build_records(zip([class_id for class_id, _lines in items], documents), options, ids))


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------
def _tf():
    from modeling.mtf_compat import tf  # noqa: PLC0415  (TensorFlow only when files are touched)
    return tf


def _read_bytes(path: str, what: str) -> bytes:
    tf = _tf()
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.OpError as error:
        raise TokenizerError(f"cannot read {what} {path}: {error.message.splitlines()[0]}") from None


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Input paths: each pattern is a file or a glob (sorted matches); missing files are errors."""
    tf = _tf()
    paths: list[str] = []
    for pattern in patterns:
        if _GLOB_CHARS.search(pattern):
            try:
                matches = sorted(tf.io.gfile.glob(pattern))
            except tf.errors.OpError as error:
                raise TokenizerError(f"cannot list --input {pattern}: {error.message.splitlines()[0]}") from None
            matches = [m for m in matches if not tf.io.gfile.isdir(m)]
            if not matches:
                raise TokenizerError(f"no input file matches {pattern}; check the path or glob")
            paths += matches
        elif not tf.io.gfile.exists(pattern):
            raise TokenizerError(f"input file {pattern} does not exist; check the path")
        elif tf.io.gfile.isdir(pattern):
            raise TokenizerError(f"input {pattern} is a directory; pass its files, e.g. {pattern}/*.txt")
        else:
            paths.append(pattern)
    return paths


def parse_class_list(path: str, text: str) -> list[tuple[str, int, int]]:
    """Rows (file, class id, line number) of a CSV list whose first line is exactly ``filename,fileid``.

    Relative file names are resolved against the CSV's directory; blank lines are skipped.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    base = posixpath.dirname(path) if "://" in path else os.path.dirname(path)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error:
            fields = []
        if len(fields) != 2 or not fields[0].strip() or not re.fullmatch(r"\s*\+?\d{1,18}\s*", fields[1]):
            raise TokenizerError(f"{path} line {number}: expected 'filename,fileid' with a non-negative integer "
                                 f"fileid, got {line!r}; fix that row")
        name = fields[0].strip()
        if not ("://" in name or os.path.isabs(name)):
            name = posixpath.join(base, name) if "://" in base else os.path.join(base, name)
        rows.append((name, int(fields[1]), number))
    if not rows:
        raise TokenizerError(f"{path} lists no files after its 'filename,fileid' line; add rows 'file,id'")
    return rows


class Inputs(NamedTuple):
    documents: list[tuple[int | None, list[str]]]   # (class id or None, lines), in input order
    files: int
    bytes: int
    class_ids: bool


def load_documents(patterns: Sequence[str]) -> Inputs:
    """Read every input (text files and/or ``filename,fileid`` CSV lists) into documents."""
    tf = _tf()
    texts: list[tuple[str, int | None, str]] = []     # (path, class id, text)
    kinds = set()
    total = 0
    for path in expand_inputs(patterns):
        data = _read_bytes(path, "input file")
        total += len(data)
        text = decode_utf8(data, f"input file {path}")
        first = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
        if first == CSV_HEADER:
            kinds.add("csv")
            for name, class_id, number in parse_class_list(path, text):
                if not tf.io.gfile.exists(name) or tf.io.gfile.isdir(name):
                    raise TokenizerError(f"{path} line {number}: listed file {name} does not exist; fix the row")
                listed = _read_bytes(name, "input file")
                total += len(listed)
                texts.append((name, class_id, decode_utf8(listed, f"input file {name} (listed in {path})")))
        elif path.lower().endswith(".csv"):
            raise TokenizerError(f"{path} does not start with the line '{CSV_HEADER}'; a class list needs that "
                                 "header (rows: file,id)")
        else:
            kinds.add("text")
            texts.append((path, None, text))
    if kinds == {"csv", "text"}:
        raise TokenizerError("--input mixes a 'filename,fileid' CSV list with plain text files; list every text "
                             "file in the CSV, or pass only text files")
    documents = []
    for path, class_id, text in texts:
        found = split_documents(text)
        if not found:
            raise TokenizerError(f"input file {path} is empty (no text); remove it or add documents")
        documents += [(class_id, lines) for lines in found]
    return Inputs(documents, len(texts), total, kinds == {"csv"})


# ----------------------------------------------------------------------------------------------------------
# Parallel tokenization (order-preserving, so the output does not depend on the number of workers)
# ----------------------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(vocabulary: str, emoji: str, clean: bool, with_prefix: bool,
                 encoder: SWEEncoder | None = None) -> None:
    encoder = SWEEncoder.from_files(vocabulary, emoji) if encoder is None else encoder
    _WORKER.update(encoder=encoder, ids=SpecialIds.of(encoder), clean=clean, with_prefix=with_prefix)


def _encode_task(task: list[list[str]]) -> list[EncodedDocument]:
    w = _WORKER
    return encode_documents(w["encoder"], task, w["ids"], w["clean"], w["with_prefix"])


def _tasks(documents: Sequence[tuple[int | None, list[str]]]) -> Iterator[list[list[str]]]:
    task, size = [], 0
    for _class_id, lines in documents:
        task.append(lines)
        size += sum(map(len, lines))
        if size >= _TASK_CHARACTERS or len(task) >= 512:
            yield task
            task, size = [], 0
    if task:
        yield task


def encoded_documents(documents: Sequence[tuple[int | None, list[str]]], vocabulary: str, emoji: str,
                      clean: bool, with_prefix: bool, num_process: int, encoder: SWEEncoder | None = None
                      ) -> Iterator[tuple[int | None, EncodedDocument]]:
    """(class id, EncodedDocument) in the order of `documents`, tokenized by `num_process` workers
    (in this process when num_process is 1, with `encoder` if given)."""
    init = (str(vocabulary), str(emoji), clean, with_prefix)
    classes = (class_id for class_id, _lines in documents)
    if num_process <= 1:
        _init_worker(*init, encoder)
        for task in _tasks(documents):
            for document in _encode_task(task):
                yield next(classes), document
        return
    # fork: works whatever the main module is (spawn re-imports it, which fails for stdin or notebook code and
    # then respawns workers forever); the children only run the pure-Python tokenizer, never TensorFlow.
    methods = multiprocessing.get_all_start_methods()
    fork = "fork" in methods
    context = multiprocessing.get_context("fork" if fork else "spawn")
    with context.Pool(num_process, initializer=_init_worker, initargs=(*init, encoder if fork else None)) as pool:
        tasks = _tasks(documents)
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(_encode_task, (task,)))
            if len(pending) >= 4 * num_process:
                break
        while pending:
            result = pending.popleft().get()
            task = next(tasks, None)
            if task is not None:
                pending.append(pool.apply_async(_encode_task, (task,)))
            for document in result:
                yield next(classes), document


# ----------------------------------------------------------------------------------------------------------
# Output: feature spec, serialization, sharded atomic writer
# ----------------------------------------------------------------------------------------------------------
def feature_spec(num_context: int) -> dict:
    """Parsing spec of the records for ``tf.io.parse_single_example`` / ``parse_example`` (spec §8.1)."""
    tf = _tf()
    return {"x": tf.io.FixedLenFeature([num_context], tf.int64),
            "y": tf.io.FixedLenFeature([num_context], tf.int64),
            "i": tf.io.FixedLenFeature([1], tf.int64),
            "num_input": tf.io.FixedLenFeature([1], tf.int64)}


def parse_record(serialized, num_context: int) -> dict:
    """Tensors x [C], y [C], i [1], num_input [1] of one serialized record."""
    return _tf().io.parse_single_example(serialized, feature_spec(num_context))


def serialize_record(x: Sequence[int], y: Sequence[int], i: int, num_input: int) -> bytes:
    """A ``tf.train.Example`` with deterministic bytes."""
    train = _tf().train

    def int64s(values):
        return train.Feature(int64_list=train.Int64List(value=values))

    example = train.Example(features=train.Features(feature={
        "x": int64s(x), "y": int64s(y), "i": int64s([i]), "num_input": int64s([num_input])}))
    return example.SerializeToString(deterministic=True)


def read_records(path: str) -> Iterator[dict[str, list[int]]]:
    """Features of each record of a TFRecord file as plain lists (for inspection and tests)."""
    tf = _tf()
    for data in tf.compat.v1.io.tf_record_iterator(path):
        feature = tf.train.Example.FromString(data).features.feature
        yield {name: list(feature[name].int64_list.value) for name in ("x", "y", "i", "num_input")}


def _join(directory: str, name: str) -> str:
    return posixpath.join(directory, name) if "://" in directory else os.path.join(directory, name)


def check_output_directory(output: str, overwrite: bool) -> list[str]:
    """Fail early if `output` is a file, or already holds records and --overwrite is not given.

    Returns the names of shards of an earlier run (removed after a successful run with --overwrite).
    """
    tf = _tf()
    try:
        if not tf.io.gfile.exists(output):
            parent = os.path.dirname(os.path.abspath(output)) if "://" not in output else None
            if parent is not None and not os.path.isdir(parent):
                raise TokenizerError(f"the parent folder of --output {output} does not exist; create it first")
            return []
        if not tf.io.gfile.isdir(output):
            raise TokenizerError(f"--output {output} is a file; pass a directory")
        names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(output))
    except tf.errors.OpError as error:
        raise TokenizerError(f"cannot use --output {output}: {error.message.splitlines()[0]}") from None
    existing = [name for name in names if name.endswith(".tfrecord") or name == SUMMARY_FILE]
    if existing and not overwrite:
        raise TokenizerError(f"output directory {output} already has records ({existing[0]}); pass --overwrite "
                             "to replace them, or choose another --output")
    return [name for name in existing if SHARD_RE.fullmatch(name)]


def write_shards(records: Iterable[Record], output: str, mode: str, num_shards: int
                 ) -> tuple[list[int], dict[str, int]]:
    """Write record n to shard n mod num_shards, atomically; returns records per shard and totals."""
    tf = _tf()
    tag = uuid.uuid4().hex[:8]
    finals = [_join(output, shard_name(mode, k)) for k in range(num_shards)]
    temporaries = [_join(output, f".{shard_name(mode, k)}.tmp-{tag}") for k in range(num_shards)]
    writers = []
    counts = [0] * num_shards
    totals = collections.Counter()
    try:
        try:
            tf.io.gfile.makedirs(output)
            for temporary in temporaries:
                writers.append(tf.io.TFRecordWriter(temporary))
            for number, record in enumerate(records):
                shard = number % num_shards
                writers[shard].write(serialize_record(record.x, record.y, record.i, record.num_input))
                counts[shard] += 1
                totals[f"{record.kind}_records"] += 1
                totals["tokens"] += record.length
                totals["targets"] += sum(1 for value in record.y if value >= 0)
                totals["masked"] += record.masked
            for writer in writers:
                writer.close()
            writers = []
            for temporary, final in zip(temporaries, finals):
                tf.io.gfile.rename(temporary, final, overwrite=True)
        except tf.errors.OpError as error:
            raise TokenizerError(f"cannot write records to {output}: {error.message.splitlines()[0]}") from None
    finally:
        for writer in writers:
            writer.close()
        for temporary in temporaries:
            try:
                if tf.io.gfile.exists(temporary):
                    tf.io.gfile.remove(temporary)
            except tf.errors.OpError:
                pass
    return counts, dict(totals)


def make_records(inputs: Sequence[str], output: str, options: RecordOptions, *,
                 vocabulary: str | os.PathLike | None = None, emoji: str | os.PathLike | None = None,
                 num_process: int | None = None, num_shards: int = DEFAULT_NUM_SHARDS, overwrite: bool = False,
                 progress: bool | None = None, log=None) -> dict:
    """Read, tokenize, build and write; returns the summary also written to ``records.json``."""
    options.check()
    log = sys.stderr if log is None else log
    if num_shards < 1:
        raise TokenizerError(f"--num_shards {num_shards} must be at least 1")
    num_process = default_num_process() if num_process is None else num_process
    if num_process < 1:
        raise TokenizerError(f"--num_process {num_process} must be at least 1")
    vocabulary = str(DEFAULT_VOCABULARY if vocabulary is None else vocabulary)
    emoji = str(DEFAULT_EMOJI if emoji is None else emoji)
    started = time.perf_counter()
    encoder = SWEEncoder.from_files(vocabulary, emoji)
    ids = SpecialIds.of(encoder)
    stale = check_output_directory(output, overwrite)
    loaded = load_documents(inputs)
    documents = shuffled(loaded.documents, options.seed)

    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=len(documents), unit="doc", desc="records", file=log, dynamic_ncols=True,
               disable=None if progress is None else not progress)

    def counted(items):
        for item in items:
            bar.update(1)
            yield item

    encoded = encoded_documents(documents, vocabulary, emoji, options.clean, options.mode != "lm", num_process,
                                encoder)
    with bar:
        counts, totals = write_shards(build_records(counted(encoded), options, ids), output, options.mode,
                                      num_shards)
    new_names = {shard_name(options.mode, k) for k in range(num_shards)}
    tf = _tf()
    for name in stale:
        if name not in new_names:
            tf.io.gfile.remove(_join(output, name))
    records = sum(counts)
    positions = records * options.num_context
    summary = {
        "mode": options.mode, "num_context": options.num_context, "seed": options.seed,
        "hybrid_rate": options.hybrid_rate if options.mode == "hybrid" else None,
        "num_mask": options.num_mask, "max_mask": options.max_mask, "clean": options.clean,
        "whole_documents": options.whole_documents,
        "vocabulary": vocabulary, "emoji": emoji, "vocabulary_size": len(encoder),
        "input_files": loaded.files, "input_bytes": loaded.bytes, "documents": len(documents),
        "class_ids": "csv" if loaded.class_ids else "running record number",
        "max_class_id": max(class_id for class_id, _ in documents) if loaded.class_ids else None,
        "records": records, "lm_records": totals.get("lm_records", 0),
        "prefix_records": totals.get("prefix_records", 0),
        "tokens": totals.get("tokens", 0), "target_positions": totals.get("targets", 0),
        "masked_positions": totals.get("masked", 0),
        "fill_ratio": round(totals.get("tokens", 0) / positions, 6) if positions else 0.0,
        "features": {"x": f"int64[{options.num_context}]", "y": f"int64[{options.num_context}]", "i": "int64[1]",
                     "num_input": "int64[1]"},
        "shards": [{"file": shard_name(options.mode, k), "records": n} for k, n in enumerate(counts)],
    }
    from modeling.files import write_json  # noqa: PLC0415

    try:
        write_json(_join(output, SUMMARY_FILE), summary)
    except tf.errors.OpError as error:
        raise TokenizerError(f"cannot write {SUMMARY_FILE} to {output}: {error.message.splitlines()[0]}") from None
    elapsed = time.perf_counter() - started
    summary_line = (f"wrote {records} records ({summary['lm_records']} plain LM, {summary['prefix_records']} "
                    f"prefix-LM/MLM) from {len(documents)} documents to {output} in {num_shards} shards; "
                    f"fill ratio {100 * summary['fill_ratio']:.2f} % real tokens; {elapsed:.1f} s "
                    f"({records / max(elapsed, 1e-9):.0f} records/s)")
    print(summary_line, file=log)
    return summary
