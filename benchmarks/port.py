#!/usr/bin/env python3
"""The anchor: the Hugging Face PyTorch port of GPTSAN, timed on the same shapes (benchmark-only).

Runs in its own environment, never the toolkit's (CPU torch + transformers 4.51.3, the last release
whose GPTSAN port still has ``generate()``)::

    python3 -m venv /tmp/portenv && /tmp/portenv/bin/pip install torch==2.13.0 transformers==4.51.3

``bench_generate.py --port_python /tmp/portenv/bin/python`` starts it as a child. Weights come from
an ``.npz`` of original-name variables (spec §4.2), mapped to the port's names by spec §17.4, or,
without one, the port's own random initialisation (timing only). It prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import os
import sys

import numpy as np
import torch
from transformers import GPTSanJapaneseConfig, GPTSanJapaneseForConditionalGeneration, LogitsProcessor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from hub_layout import port_config, port_tensors  # noqa: E402  (numpy only: the spec's name mapping)


class Stamps(LogitsProcessor):
    """Records when each token's logits are ready (one call per generated token)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def train(model, steps: int, batch: int, length: int) -> dict:
    """AdamW steps on random tokens; seconds per step. The loss is the language-model loss alone: the
    port's ``output_router_logits=True`` path fails in 4.51.3 (``'tuple' object has no attribute
    'append'``), so its router losses, a small part of a step, cannot be added."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(steps):
        ids = torch.randint(0, 30000, (batch, length + 1), generator=generator)
        inputs, labels = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        start = time.perf_counter()
        model(inputs, token_type_ids=torch.zeros_like(inputs), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    return {"train_step_seconds": seconds, "tokens_per_step": batch * length}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", required=True, help="JSON of our model_params (parameters.json)")
    p.add_argument("--weights", default=None, help=".npz of original-name variables")
    p.add_argument("--prompt", required=True, help="JSON list of token ids (rows of equal length)")
    p.add_argument("--tokens", type=int, default=64, help="tokens to generate per row")
    p.add_argument("--sample", action="store_true", help="top_p 0.9, temperature 0.8 instead of greedy")
    p.add_argument("--forward_lengths", default="", help="comma-separated lengths to time one forward pass of")
    p.add_argument("--train_steps", type=int, default=0, help="instead: time this many AdamW training steps")
    p.add_argument("--train_batch", default="8,256", help="with --train_steps: batch size, sequence length")
    args = p.parse_args()
    torch.set_num_threads(2)
    params = json.loads(args.params)
    started = time.perf_counter()
    model = GPTSanJapaneseForConditionalGeneration(GPTSanJapaneseConfig(**port_config(params))).eval()
    if args.weights:
        tensors = {k: torch.from_numpy(v) for k, v in port_tensors(dict(np.load(args.weights)), params).items()}
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    result = {"load_seconds": time.perf_counter() - started}
    if args.train_steps:
        result.update(train(model, args.train_steps, *map(int, args.train_batch.split(","))))
        print(json.dumps(result))
        return
    rows = torch.tensor(json.loads(args.prompt))
    types = torch.zeros_like(rows)
    types[:, 0] = 1   # [SOT] is the bidirectional prefix, as in ours
    with torch.inference_mode():
        stamps = Stamps()
        sampling = dict(do_sample=True, top_p=0.9, temperature=0.8, top_k=0) if args.sample else dict(do_sample=False)
        out = model.generate(rows, token_type_ids=types, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                             logits_processor=[stamps], **sampling)
        result["step_seconds"] = np.diff(stamps.times).tolist()
        result["tokens"] = out[:, rows.shape[1]:].tolist()
        for length in filter(None, args.forward_lengths.split(",")):
            ids = torch.randint(0, 30000, (1, int(length)))
            model(ids, token_type_ids=torch.ones_like(ids))
            timed = []
            for _ in range(3):
                start = time.perf_counter()
                model(ids, token_type_ids=torch.ones_like(ids))
                timed.append(time.perf_counter() - start)
            result[f"forward_{length}"] = min(timed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
