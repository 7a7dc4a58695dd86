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

import numpy as np
import torch
from transformers import GPTSanJapaneseConfig, GPTSanJapaneseForConditionalGeneration, LogitsProcessor


def port_state_dict(weights: dict[str, np.ndarray], config: dict) -> dict[str, torch.Tensor]:
    """Original variable names -> the port's parameter names (spec §17.4)."""
    d, switch = config["d_model"], config["num_switch_layers"]
    out = {"model.embed_tokens.weight": weights["model/wte"], "lm_head.weight": weights["model/wte"],
           "model.position_embeddings.weight": weights["model/wpe"],
           "final_logits_bias": weights["model/wob"][None],
           "model.last_project.weight": weights["model/dense/kernel"].T,
           "model.last_project.bias": weights["model/dense_1/bias"]}
    if "model/ete" in weights:
        out["model.extra_position_embeddings.weight"] = weights["model/ete"]
    for layer in range(switch + config["num_ext_layers"]):
        block, src = f"model.blocks.{layer}", f"model/att{layer}"
        for i, name in enumerate("qkv"):
            out[f"{block}.self_attn.self_attn.{name}_proj.weight"] = weights[f"{src}/qkv/kernel"][:, i].reshape(d, d).T
        out[f"{block}.self_attn.self_attn.out_proj.weight"] = weights[f"{src}/o/kernel"].reshape(d, d).T
        out[f"{block}.self_attn.norm.weight"] = weights[f"model/an{layer}/g"]
        out[f"{block}.self_attn.norm.bias"] = weights[f"model/an{layer}/b"]
        out[f"{block}.feed_forward.norm.weight"] = weights[f"model/ln{layer}/g"]
        out[f"{block}.feed_forward.norm.bias"] = weights[f"model/ln{layer}/b"]
        if layer < switch:
            moe = f"model/moe{layer}"
            out[f"{block}.feed_forward.mlp.router.classifier.weight"] = weights[f"{moe}/switch_gating/kernel"].T
            out[f"{block}.feed_forward.soft_bypass_mlp.weight"] = weights[f"{moe}/softmlp/kernel"].T
            for e in range(config["num_experts"]):
                expert = f"{block}.feed_forward.mlp.experts.expert_{e}"
                out[f"{expert}.wi.weight"] = weights[f"{moe}/wi/kernel"][e].T
                out[f"{expert}.wo.weight"] = weights[f"{moe}/wo/kernel"][e].T
        else:
            for ours, theirs in (("p1", "wi"), ("p2", "wo")):
                out[f"{block}.feed_forward.mlp.{theirs}.weight"] = weights[f"model/mlp{layer}/{ours}/kernel"].T
                out[f"{block}.feed_forward.mlp.{theirs}.bias"] = weights[f"model/mlp{layer}/{ours}/bias"]
    for k in range(8):
        if f"pasts/mlp{k}/kernel" in weights:
            out[f"model.spout.{2 * k}.weight"] = weights[f"pasts/mlp{k}/kernel"].T
    if "pasts/out/kernel" in weights:
        out["model.spout.16.weight"] = weights["pasts/out/kernel"].T
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


class Stamps(LogitsProcessor):
    """Records when each token's logits are ready (one call per generated token)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="JSON of GPTSanJapaneseConfig fields")
    p.add_argument("--weights", default=None, help=".npz of original-name variables")
    p.add_argument("--prompt", required=True, help="JSON list of token ids (rows of equal length)")
    p.add_argument("--tokens", type=int, default=64, help="tokens to generate per row")
    p.add_argument("--sample", action="store_true", help="top_p 0.9, temperature 0.8 instead of greedy")
    p.add_argument("--forward_lengths", default="", help="comma-separated lengths to time one forward pass of")
    args = p.parse_args()
    torch.set_num_threads(2)
    config = json.loads(args.config)
    started = time.perf_counter()
    model = GPTSanJapaneseForConditionalGeneration(GPTSanJapaneseConfig(**config)).eval()
    if args.weights:
        missing, unexpected = model.load_state_dict(port_state_dict(dict(np.load(args.weights)), config), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    result = {"load_seconds": time.perf_counter() - started}
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
