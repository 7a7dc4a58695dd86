"""[MASK] filling and per-layer hidden states: the logic behind ``run_languagemodel.py`` (spec §13).

Inputs are laid out like training records (D2 fixed): ``[SOT] context [SEG]`` with the context in
the bidirectional prefix for hybrid models, ``[SOT, SEG] context`` with no prefix for plain-LM models.
Each mask token is filled with the argmax of the shifted prediction (the token at position p is
predicted at p - 1, as in training). The JSON keeps the original's fields and adds log-probabilities
and the top candidates of each mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from modeling.cli import UserError
from modeling.mtf_compat import tf
from modeling.runtime import Forward, Runtime
from modeling.tokenizer import SWEEncoder

TOP_CANDIDATES = 5


@dataclasses.dataclass
class Example:
    """One input text laid out for the model."""

    text: str
    tokens: list[int]      # fed ids, starting with SOT
    prefix: int            # n_b: index of the segmenter (0 = no bidirectional prefix)
    first: int             # index of the first context token; context = tokens[first:first + count]
    count: int
    extra: dict = dataclasses.field(default_factory=dict)  # other keys of a JSONL input line, echoed


def layout(encoder: SWEEncoder, text: str, mask: str, train_mode: str, num_contexts: int,
           where: str = "--context") -> Example:
    """``text`` as model input; a UserError if it cannot be used with this model."""
    start, segmenter = encoder.special_id("start"), encoder.special_id("segmenter")
    if train_mode == "hybrid":
        pieces = [encoder.encode(piece) for piece in text.split(mask)] if mask else [encoder.encode(text)]
        context = pieces[0]
        for piece in pieces[1:]:
            context = context + [encoder.special_id("mask")] + piece
        tokens, prefix, first = [start] + context + [segmenter], len(context) + 1, 1
    else:
        if mask and mask in text:
            raise UserError(f"{where} contains {mask!r} but this model was trained as a plain LM "
                            f"(train_mode 'lm' in parameters.json), which cannot fill masks")
        context = encoder.encode(text)
        tokens, prefix, first = [start, segmenter] + context, 0, 2
    if len(tokens) > num_contexts:
        raise UserError(f"{where} is {len(tokens)} tokens with the start token and segmenter, more than the "
                        f"model's {num_contexts} positions: shorten it")
    return Example(text, tokens, prefix, first, len(context))


def add_mask_fill_outputs(forward: Forward, mask_id: int) -> None:
    """Per-position quantities computed in the graph, so [B, T, V] logits never leave it; the top
    candidates only where the next token is a mask."""
    with forward.graph.as_default(), tf.name_scope("mask_fill"):
        tokens, logits = forward.placeholders["tokens"], forward.tensors["logits"]
        following = tf.concat([tokens[:, 1:], tokens[:, -1:]], axis=1)       # the token each position predicts
        with tf.xla.experimental.jit_scope():   # one fused pass over [B, T, V] instead of four (1.6x)
            log_norm = tf.reduce_logsumexp(logits, axis=-1)
        mask_rows = tf.where(tf.equal(following, mask_id))                   # [masks, 2]: (row, position)
        top_logits, top_ids = tf.math.top_k(tf.gather_nd(logits, mask_rows), TOP_CANDIDATES)
        pos_vector = tf.placeholder(tf.int32, [forward.batch_size], "pos_vector")
        forward.placeholders["pos_vector"] = pos_vector
        forward.tensors.update(
            next_logit=tf.gather(logits, following, axis=2, batch_dims=2),
            log_norm=log_norm,
            mask_rows=mask_rows,
            top_ids=top_ids,
            top_logprobs=top_logits - tf.gather_nd(log_norm, mask_rows)[:, None],
            vector=tf.gather(forward.tensors["hidden"], pos_vector, axis=2, batch_dims=1),  # [B, L, d]
        )


PER_ROW = ("next_logit", "log_norm", "vector")
PER_MASK = ("mask_rows", "top_ids", "top_logprobs")


def vector_position(example: Example, pos_vector: int, where: str) -> int:
    """``--pos_vector`` as an index into the fed tokens (< 0 = the last one)."""
    if pos_vector < 0:
        return len(example.tokens) - 1
    if pos_vector >= len(example.tokens):
        raise UserError(f"--pos_vector {pos_vector} is outside {where}, which has {len(example.tokens)} "
                        f"positions counting the start token: use 0..{len(example.tokens) - 1} or -1")
    return pos_vector


def bucket_length(length: int, num_contexts: int) -> int:
    """The padded length of a ``length``-token input: rounded up to a multiple of 8, or when longer
    of a quarter of the power of two below it (…, 64, 80, 96, 112, 128, 160, …), at most
    ``num_contexts``. A corpus then needs at most four compiled shapes per octave, and no input pays
    more than 7 tokens or a quarter again for padding. Padding changes no result (each sequence is
    routed with the capacity of its real length)."""
    step = max(8, (1 << max(length - 1, 1).bit_length()) // 8)
    return min(-(-length // step) * step, num_contexts)


def plan_batches(examples: list[Example], batch_size: int, num_contexts: int,
                 window: int = 64) -> Iterator[list[tuple[int, list[int]]]]:
    """Batches ``(padded length, example indices)``: each window of ``window`` x ``batch_size``
    consecutive inputs is sorted by length and cut into full batches, so only a window's last batch
    has empty rows, and results can be written in input order holding one window in memory."""
    step = window * batch_size
    for start in range(0, len(examples), step):
        order = sorted(range(start, min(start + step, len(examples))), key=lambda i: len(examples[i].tokens))
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        yield [(bucket_length(len(examples[chunk[-1]].tokens), num_contexts), chunk) for chunk in chunks]


def mask_fill_forwards(runtime: Runtime, examples: list[Example], batch_size: int, mask_id: int
                       ) -> dict[int, Forward]:
    """One forward with the mask-filling outputs per padded length that ``plan_batches`` uses for
    ``examples`` (build them before the runtime restores its weights)."""
    forwards = {}
    plan = plan_batches(examples, batch_size, runtime.config.num_contexts)
    for length in sorted({length for window in plan for length, _ in window}):
        forwards[length] = runtime.forward(batch_size, length)
        add_mask_fill_outputs(forwards[length], mask_id)
    return forwards


def fill_masks(runtime: Runtime, forwards: dict[int, Forward], examples: list[Example], positions: list[int],
               batch_size: int, mask_id: int) -> Iterator[dict]:
    """Results for ``examples`` in input order, run in batches of similar length; ``forwards`` maps
    every ``bucket_length`` needed to a forward with the mask-filling outputs."""
    for window in plan_batches(examples, batch_size, runtime.config.num_contexts):
        done = {}
        for length, indices in window:
            results = run_batch(runtime, forwards[length], [examples[i] for i in indices],
                                [positions[i] for i in indices], mask_id)
            done.update(zip(indices, results))
        yield from (done[i] for i in sorted(done))


def run_batch(runtime: Runtime, forward: Forward, examples: list[Example], positions: list[int],
              mask_id: int) -> list[dict]:
    """Fill the masks of up to ``forward.batch_size`` examples; one result dict per example."""
    size, length = forward.batch_size, forward.length
    tokens = np.zeros([size, length], np.int32)
    prefix, lengths, pos = (np.zeros([size], np.int32) for _ in range(3))
    for row, (example, position) in enumerate(zip(examples, positions)):
        tokens[row, :len(example.tokens)] = example.tokens
        prefix[row], lengths[row], pos[row] = example.prefix, len(example.tokens), position
    lengths[len(examples):] = 1  # unused rows: one token, no padding semantics needed
    out = runtime.run(forward, list(PER_ROW + PER_MASK), tokens=tokens, prefix=prefix, lengths=lengths,
                      pos_vector=pos)
    candidates = {(int(row), int(at)): (ids, logprobs)
                  for (row, at), ids, logprobs in zip(out["mask_rows"], out["top_ids"], out["top_logprobs"])}
    return [_result(example, {k: out[k][row] for k in PER_ROW},
                    {at: c for (r, at), c in candidates.items() if r == row}, positions[row], mask_id)
            for row, example in enumerate(examples)]


def _result(example: Example, out: dict[str, np.ndarray], candidates: dict[int, tuple[np.ndarray, np.ndarray]],
            pos_vector: int, mask_id: int) -> dict:
    """The JSON object of one example from its per-position outputs and its masks' top candidates
    (by predicting position)."""
    span = range(example.first, example.first + example.count)   # positions of the context tokens
    output_tokens, logprobs, masks = [], [], []
    for p in span:
        at = p - 1  # the position whose output predicts token p
        if example.tokens[p] == mask_id:
            top_ids, top_logprobs = candidates[at]
            token = int(top_ids[0])
            masks.append({"position": p, "token": token,
                          "candidates": [{"token": int(t), "logprob": float(lp)}
                                         for t, lp in zip(top_ids, top_logprobs)]})
            logprobs.append(float(top_logprobs[0]))
        else:
            token = example.tokens[p]
            logprobs.append(float(out["next_logit"][at] - out["log_norm"][at]))
        output_tokens.append(token)
    return {
        "input_text": example.text,
        "input_tokens": list(example.tokens),
        "output_tokens": output_tokens,
        "output_scores": [float(out["next_logit"][p - 1]) for p in span],
        "output_logprobs": logprobs,
        "masks": masks,
        "pos_vector": pos_vector,
        "output_vector": out["vector"].reshape(-1).tolist(),
        **example.extra,
    }


def decode_result(encoder: SWEEncoder, result: dict) -> dict:
    """``result`` with the texts added: ``output_text`` first, and each mask's filled and candidate texts."""
    for mask in result["masks"]:
        mask["text"] = encoder.decode([mask["token"]])
        for candidate in mask["candidates"]:
            candidate["text"] = encoder.decode([candidate["token"]])
    return {"output_text": encoder.decode(result["output_tokens"]), **result}


def print_sections(result: dict) -> None:
    """The original's four stdout sections."""
    print("{OUTPUT TEXTS}")
    print(result["output_text"])
    print("{OUTPUT TOKENS}")
    print(result["output_tokens"])
    print("{OUTPUT SCORES}")
    print(result["output_scores"])
    print("{OUTPUT VECTOR SHAPE}")
    print((len(result["output_vector"]),))
