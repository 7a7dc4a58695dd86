"""Text generation with a key/value cache: sampling, beam search, prefix and spout (spec §12, D3-D8, D24).

The prompt ``[SOT] prefix [SEG] context`` is encoded once (the prefix is bidirectional); its keys and
values go into a per-layer cache of ``num_contexts`` slots. Each further token runs the
network on one position that attends to the cache, so every token costs the same wherever it is.
When the positions run out a sequence stops with finish reason ``length`` (no sliding window: the
start token and the prefix would fall out of it).

This module works on token ids; the script does the text.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import numpy as np

from modeling import decode
from modeling.mtf_compat import tf
from modeling.runtime import Forward, Runtime

INVISIBLE = 1 << 30   # slot index of a cache slot no query may see


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``top_k`` 1 is greedy; 0 turns top-k off."""

    top_k: int = 120
    top_p: float = 1.0
    temperature: float = 1.0
    max_generate: int = 300
    beam_width: int = 1


@dataclasses.dataclass
class Prompt:
    prefix: list[int]              # bidirectional part (may be empty)
    context: list[int]             # causal part to continue
    spout: np.ndarray | None = None

    def tokens(self, start: int, segmenter: int) -> list[int]:
        return [start] + self.prefix + [segmenter] + self.context


@dataclasses.dataclass
class Sequence:
    """One generated continuation."""

    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None   # end_of_text, length, stop
    seconds: float = 0.0

    @property
    def score(self) -> float:
        """Length-normalised log-probability (the beam search ranking)."""
        return float(np.mean(self.logprobs)) if self.logprobs else 0.0


def sample(logits: np.ndarray, uniform: np.ndarray, sampling: Sampling, banned: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Next tokens [B] drawn from logits [B, V], and their log-probabilities under the model.

    The ``banned`` token ids are removed, then temperature, then the ``top_k`` most likely tokens are
    kept (0: all; 1: greedy, the first most likely), then top-p keeps the smallest set of most likely
    tokens whose probability reaches ``top_p``, including the token that crosses it and every token
    as likely (``nucleus``). The token is the inverse CDF of the kept probabilities, in id order, at
    ``uniform`` [B] (drawn by the caller's seeded generator)."""
    z = logits / np.float32(sampling.temperature)
    z[:, banned] = -np.inf
    vocab, k = z.shape[1], sampling.top_k
    tokens = []
    for row, u in zip(z, uniform):
        if k == 1:
            tokens.append(np.argmax(row))
            continue
        probs = np.exp(np.subtract(row, row.max(), out=row), out=row)   # unnormalised, in place
        if 0 < k < vocab:
            probs[np.argpartition(probs, vocab - k)[:vocab - k]] = 0.0
        total = probs.sum(dtype=np.float64)
        if sampling.top_p < 1.0:
            np.multiply(probs, probs >= nucleus(probs, sampling.top_p * total), out=probs)
            total = probs.sum(dtype=np.float64)
        # the first token whose running sum exceeds u: a token of probability 0 is never drawn
        tokens.append(first_reaching(probs, u * total, strictly=True))
    tokens = np.array(tokens, np.int64)
    peak = logits.max(-1)
    normaliser = peak + np.log(np.exp(logits - peak[:, None]).sum(-1, dtype=np.float64))
    return tokens, logits[np.arange(len(tokens)), tokens] - normaliser


def nucleus(probs: np.ndarray, mass: float, few: int = 1024) -> float:
    """The top-p threshold of ``probs`` [K] (not necessarily normalised): the probability of the token
    whose running sum, most likely first, reaches ``mass`` (top_p times the total). The top-p set is
    every token at least that likely (the crossing token and its ties included). Only the ``few``
    most likely are sorted when they hold ``mass``, else the whole row."""
    ranked = probs
    if len(probs) > few and probs.max() * few >= mass:   # else they cannot hold it
        top = probs[np.argpartition(probs, len(probs) - few)[-few:]]
        ranked = top if top.sum(dtype=np.float64) >= mass else probs
    ranked = np.sort(ranked)[::-1]
    return float(ranked[first_reaching(ranked, mass)])


def first_reaching(values: np.ndarray, target: float, strictly: bool = False, block: int = 1024) -> int:
    """The first index whose running sum of ``values`` reaches ``target`` (exceeds it if ``strictly``),
    else the last index. Sums blocks first, then runs within one block (``np.cumsum`` over a whole
    36k row is a scalar loop, 0.1 ms)."""
    side = "right" if strictly else "left"
    starts = np.arange(0, len(values), block)
    totals = np.cumsum(np.add.reduceat(values, starts, dtype=np.float64))
    b = min(int(np.searchsorted(totals, target, side)), len(totals) - 1)
    running = np.cumsum(values[starts[b]:starts[b] + block], dtype=np.float64) + (totals[b - 1] if b else 0.0)
    return min(int(starts[b] + np.searchsorted(running, target, side)), len(values) - 1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    return z - np.log(np.exp(z).sum())


class Generator:
    """The prompt pass and one-token steps over a runtime's weights, with a key/value cache of
    ``num_contexts`` slots per row (slot 0 holds the spout's, if any; token i is in slot i + that).

    One row on one device steps in numpy (``decode.NumpyCache``: its one-row products read weights
    about twice as fast there); otherwise the cache is variables and a step is a graph (``GraphCache``)."""

    def __init__(self, runtime: Runtime, batch_size: int, prompt_length: int, spout: bool):
        self.runtime, self.batch_size, self.spout = runtime, batch_size, spout
        self.slots = runtime.config.num_contexts   # positions never exceed C
        self.first_token_slot = int(spout)
        self.prefill = runtime.forward(batch_size, prompt_length, spout=spout)
        if runtime.direct and batch_size == 1:
            self.cache = decode.NumpyCache(runtime, batch_size, self.slots, spout)
        else:
            self.cache = GraphCache(runtime, batch_size, self.slots, spout, self.prefill)

    def start(self) -> None:
        self.cache.start()

    def warm_up(self) -> None:
        """Run the prompt pass and one step once (on an empty cache, discarded by ``start``), so that
        the first real tokens do not pay for TensorFlow's first run of each graph (executor and kernel setup)."""
        self.start()
        rows = np.zeros([self.batch_size], np.int32)
        spouts = np.zeros([self.batch_size, self.runtime.config.num_spout], np.float32) if self.spout else None
        self.encode([[0]] * self.batch_size, [0] * self.batch_size, spouts)
        self.next(rows, rows + 1, rows, rows + 1)

    def reorder(self, parents: np.ndarray) -> None:
        """Beam search: row i continues from row ``parents[i]``'s cache."""
        self.cache.reorder(parents)

    def encode(self, rows: list[list[int]], prefixes: list[int], spouts: np.ndarray | None) -> np.ndarray:
        """Run the prompts (right-padded), fill the cache, return the next token's logits [B, V]."""
        tokens = np.zeros([self.batch_size, self.prefill.length], np.int32)
        lengths = np.ones([self.batch_size], np.int32)
        prefix = np.zeros([self.batch_size], np.int32)
        for i, row in enumerate(rows):
            tokens[i, :len(row)], lengths[i], prefix[i] = row, len(row), prefixes[i]
        out = self.runtime.run(self.prefill, ["next_logits", *self.cache.prompt_fetches], tokens, prefix, lengths,
                               spouts)
        self.cache.write_prompt(out)
        return out["next_logits"]

    def next(self, tokens: np.ndarray, positions: np.ndarray, prefixes: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Feed one token per row at token index ``positions``; returns the next token's logits [B, V]."""
        slot_index = np.full([self.batch_size, self.slots], INVISIBLE, np.int32)
        if self.spout:
            slot_index[:, 0] = -1
        token_slots = np.arange(self.slots - self.first_token_slot)
        seen = token_slots[None, :] < positions[:, None]
        slot_index[:, self.first_token_slot:] = np.where(seen, token_slots[None, :], INVISIBLE)
        return self.cache.step(tokens.astype(np.int32), positions.astype(np.int32), prefixes.astype(np.int32),
                               active.astype(np.int32), slot_index)


class GraphCache:
    """Per layer key and value variables [slots, batch, heads, d_kv] (slot-major, so a step reads the
    visible leading slots in place), written by the prompt graph and by each step's graph."""

    prompt_fetches = ("write_cache",)

    def __init__(self, runtime: Runtime, batch_size: int, slots: int, spout: bool, prefill: Forward):
        c = runtime.config
        self.runtime, self.batch_size, self.first = runtime, batch_size, int(spout)
        with runtime.graph.as_default(), tf.variable_scope(None, default_name="cache"):  # unique per generator
            shape = [slots, batch_size, c.num_header, c.head_size]
            self.variables = [tuple(tf.get_variable(f"{kind}{layer}", shape, initializer=tf.zeros_initializer(),
                                                    trainable=False, collections=[tf.GraphKeys.LOCAL_VARIABLES])
                                    for kind in ("k", "v")) for layer in range(c.num_layers)]
        self.step_graph = runtime.forward(batch_size, 1, spout=spout, cache=self.variables)
        with runtime.graph.as_default():
            self._build_writes(prefill)
            self._init = tf.variables_initializer([v for pair in self.variables for v in pair])

    def _build_writes(self, prefill: Forward) -> None:
        first, step = self.first, self.step_graph

        def slot_major(t: tf.Tensor) -> tf.Tensor:   # [B, H, T, d_kv] -> [T, B, H, d_kv]
            return tf.transpose(t, [2, 0, 1, 3])

        writes = []
        for layer, pair in enumerate(self.variables):
            for var, kind in zip(pair, ("keys", "values")):
                writes.append(tf.scatter_update(var, tf.range(first, first + prefill.length),
                                                slot_major(prefill.tensors[kind][layer])))
                if "spout_keys" in prefill.tensors:
                    writes.append(tf.scatter_update(var, [0], slot_major(prefill.tensors["spout_" + kind][layer])))
        prefill.tensors["write_cache"] = tf.group(writes)
        # The step's own key/value go to slot first + query_index, after the step has read the cache.
        slot = step.placeholders["query_index"][:, 0] + first                      # [batch]
        index = tf.stack([slot, tf.range(self.batch_size)], axis=-1)              # [batch, 2]
        with tf.control_dependencies([step.tensors["next_logits"]]):
            step_writes = [tf.scatter_nd_update(var, index, step.tensors[kind][layer][:, :, 0, :])
                           for layer, pair in enumerate(self.variables)
                           for var, kind in zip(pair, ("keys", "values"))]
        step.tensors["write_cache"] = tf.group(step_writes)
        self._parents = tf.placeholder(tf.int32, [self.batch_size], "beam_parents")
        self._reorder = tf.group([var.assign(tf.gather(var.read_value(), self._parents, axis=1))
                                  for pair in self.variables for var in pair])

    def start(self) -> None:
        self.runtime.start().run(self._init)

    def write_prompt(self, out: dict[str, np.ndarray]) -> None:
        """Nothing to do: the prompt graph wrote the cache."""

    def step(self, tokens: np.ndarray, positions: np.ndarray, prefixes: np.ndarray, active: np.ndarray,
             slot_index: np.ndarray) -> np.ndarray:
        return self.runtime.run(self.step_graph, ["next_logits", "write_cache"], tokens[:, None], prefixes, active,
                                query_index=positions[:, None], slot_index=slot_index)["next_logits"]

    def reorder(self, parents: np.ndarray) -> None:
        self.runtime.start().run(self._reorder, {self._parents: parents})


def generate(generator: Generator, prompts: list[Prompt], sampling: Sampling, ids: dict[str, int],
             rng: np.random.Generator, stop: Callable[[list[int]], bool] | None = None,
             on_token: Callable[[int, Sequence], None] | None = None,
             fed: dict[int, int] | None = None) -> list[Sequence]:
    """Sample one continuation per prompt (``len(prompts) <= batch_size``). ``stop(tokens)`` ends a
    sequence with finish reason ``stop``; ``on_token(row, sequence)`` is called after every token.
    ``fed`` maps a generated token to the token fed back (the <|separator|> a model trained on our
    records saw in place of sentence-final punctuation); the output keeps the generated token.
    NOT and SEP are never sampled."""
    fed = fed or {}
    size = generator.batch_size
    rows = [p.tokens(ids["start"], ids["segmenter"]) for p in prompts]
    rows += [rows[0]] * (size - len(rows))
    prefixes = np.array([len(p.prefix) + 1 for p in prompts] + [0] * (size - len(prompts)))
    spouts = _spouts(prompts, size, generator)
    started = time.perf_counter()
    generator.start()
    banned = [ids["not_token"], ids["separator"]]
    tokens, logprobs = sample(generator.encode(rows, prefixes.tolist(), spouts), rng.random(size), sampling, banned)
    positions = np.array([len(r) for r in rows])
    sequences = [Sequence() for _ in prompts]
    active = np.array([True] * len(prompts) + [False] * (size - len(prompts)))
    limit = generator.slots - generator.first_token_slot    # token positions available
    while active.any():
        chosen = np.zeros(size, np.int64)
        for row in np.flatnonzero(active):
            token = int(tokens[row])
            seq = sequences[row]
            seq.tokens.append(token)
            seq.logprobs.append(float(logprobs[row]))
            chosen[row] = fed.get(token, token)
            if token == ids["end_of_text"]:
                seq.finish_reason = "end_of_text"
            elif stop and stop(seq.tokens):
                seq.finish_reason = "stop"
            elif len(seq.tokens) >= sampling.max_generate or positions[row] >= limit:
                seq.finish_reason = "length"
            if on_token:
                on_token(row, seq)
            if seq.finish_reason:
                active[row] = False
                seq.seconds = time.perf_counter() - started
        if not active.any():
            break
        tokens, logprobs = sample(generator.next(chosen, positions, prefixes, active), rng.random(size), sampling,
                                  banned)
        positions = positions + active
    return sequences


def _spouts(prompts: list[Prompt], size: int, generator: Generator) -> np.ndarray | None:
    if not generator.spout:
        return None
    width = generator.runtime.config.num_spout
    return np.stack([p.spout if p.spout is not None else np.zeros(width, np.float32) for p in prompts]
                    + [np.zeros(width, np.float32)] * (size - len(prompts))).astype(np.float32)


def beam_search(generator: Generator, prompt: Prompt, sampling: Sampling, ids: dict[str, int],
                fed: dict[int, int] | None = None) -> list[Sequence]:
    """Deterministic beam search of width ``generator.batch_size`` for one prompt.

    Each step keeps the ``width`` best live extensions by summed log-probability; a beam that ends
    (end-of-text, ``max_generate`` or the window) is set aside. When no live beam is left, the
    finished ones are returned best first by length-normalised (mean) log-probability."""
    width = generator.batch_size
    row = prompt.tokens(ids["start"], ids["segmenter"])
    prefixes = np.full(width, len(prompt.prefix) + 1)
    banned = [ids["not_token"], ids["separator"]]
    started = time.perf_counter()
    generator.start()
    logits = generator.encode([row] * width, prefixes.tolist(), _spouts([prompt] * width, width, generator))
    limit = generator.slots - generator.first_token_slot
    beams = [Sequence()]                       # live beams; at the start only one (all rows are equal)
    finished: list[Sequence] = []
    position = len(row)
    while beams:
        candidates = []
        for b, beam in enumerate(beams):
            logp = log_softmax(logits[b])
            logp[banned] = -np.inf
            for token in np.argsort(-logp, kind="stable")[:width]:
                candidates.append((float(np.sum(beam.logprobs) + logp[token]), b, int(token), float(logp[token])))
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        new_beams, parents, tokens = [], [], []
        for _, b, token, lp in candidates:
            seq = Sequence(beams[b].tokens + [token], beams[b].logprobs + [lp])
            if token == ids["end_of_text"] or len(seq.tokens) >= sampling.max_generate or position >= limit:
                seq.finish_reason = "end_of_text" if token == ids["end_of_text"] else "length"
                seq.seconds = time.perf_counter() - started
                finished.append(seq)
            else:
                new_beams.append(seq)
                parents.append(b)
                tokens.append(token)
            if len(new_beams) == width:
                break
        beams = new_beams
        if not beams:
            break
        padded = parents + [0] * (width - len(parents))
        generator.reorder(np.array(padded, np.int32))
        chosen = np.array([(fed or {}).get(t, t) for t in tokens] + [0] * (width - len(tokens)))
        active = np.array([True] * len(tokens) + [False] * (width - len(tokens)))
        logits = generator.next(chosen, np.full(width, position), prefixes, active)
        position += 1
    return sorted(finished, key=lambda s: -s.score)


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------------------------------------------
# Text: prompts, spout values, output text.
# ---------------------------------------------------------------------------------------------------

BAG_REPEAT = 3   # a <|bagoftoken|> stands for this many copies of the previous token in total (D8)


def output_ids(tokens: list[int], ids: dict[str, int]) -> list[int]:
    """Generated ids ready to decode: the bag token expanded, control tokens (ids >= SOT) dropped.
    Byte-fallback tokens stay, so the decoder reassembles their characters (D7)."""
    out: list[int] = []
    for token in tokens:
        if token == ids["bag"]:
            out += out[-1:] * (BAG_REPEAT - 1)
        elif token < ids["start"]:
            out.append(token)
    return out


def spout_vector(value: str, width: int, rng: np.random.Generator, where: str = "--spout") -> np.ndarray | None:
    """``none``, ``uniform`` (a fresh U[0,1) vector), ``zeros``, a class index (one-hot) or a ``.npy`` file."""
    from modeling.cli import UserError  # noqa: PLC0415

    value = str(value).strip()
    if value in ("", "none"):
        return None
    if not width:
        raise UserError(f"{where} {value}: this model has no spout (num_spout is 0 in parameters.json)")
    if value == "uniform":
        return rng.random(width, dtype=np.float32)
    if value == "zeros":
        return np.zeros(width, np.float32)
    if value.lstrip("-").isdigit():
        index = int(value)
        if not 0 <= index < width:
            raise UserError(f"{where} {index} is outside the spout's {width} classes (0..{width - 1})")
        return np.eye(width, dtype=np.float32)[index]
    if value.endswith(".npy"):
        if not tf.io.gfile.exists(value):
            raise UserError(f"{where} {value} not found")
        try:
            with tf.io.gfile.GFile(value, "rb") as f:
                vector = np.load(f, allow_pickle=False)   # never unpickle a user's file
        except (ValueError, OSError, EOFError) as error:
            raise UserError(f"{where} {value} is not a numpy array file ({error}): save a float vector of "
                            f"{width} values with numpy.save") from None
        if not isinstance(vector, np.ndarray) or not np.issubdtype(vector.dtype, np.number):
            raise UserError(f"{where} {value} does not hold a numeric array: save a float vector of {width} values")
        if vector.shape != (width,):
            raise UserError(f"{where} {value} has shape {list(vector.shape)}, expected [{width}]")
        return vector.astype(np.float32)
    raise UserError(f"{where} {value!r}: use none, uniform, zeros, a class index or a .npy file")
