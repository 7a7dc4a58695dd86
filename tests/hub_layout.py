"""The Hugging Face hub layout of GPTSAN, written from original-name weights (numpy only).

``port_tensors`` is the port's conversion (spec §17.4) written out independently of
``modeling/hub.py``, so tests that read what it writes check our reader against the spec, and
``benchmarks/port.py`` (which runs without TensorFlow) builds the port's model from it.
"""

from __future__ import annotations

import json
import os

import numpy as np

MODEL_TYPE = "gptsan-japanese"


def port_config(p: dict) -> dict:
    """``config.json`` fields (spec §17.2) for ``model_params`` ``p``."""
    d = p["num_hidden"]
    return {"vocab_size": p["num_vocabulary"], "max_position_embeddings": p["num_contexts"], "d_model": d,
            "d_ff": 8 * d, "d_ext": 4 * d, "d_spout": p.get("num_spout", 0),
            "num_switch_layers": p["num_switch_layers"], "num_ext_layers": p.get("num_ext_layers", 0),
            "num_heads": p["num_header"], "num_experts": p["num_experts"]}


def port_tensors(weights: dict[str, np.ndarray], p: dict) -> dict[str, np.ndarray]:
    """Original variable names -> the port's parameter names (spec §17.4; no ``lm_head.weight``)."""
    d, switch = p["num_hidden"], p["num_switch_layers"]
    out = {"model.embed_tokens.weight": weights["model/wte"],
           "model.position_embeddings.weight": weights["model/wpe"],
           "final_logits_bias": weights["model/wob"][None],
           "model.last_project.weight": weights["model/dense/kernel"].T,
           "model.last_project.bias": weights["model/dense_1/bias"]}
    if "model/ete" in weights:
        out["model.extra_position_embeddings.weight"] = weights["model/ete"]
    for layer in range(switch + p.get("num_ext_layers", 0)):
        block, att = f"model.blocks.{layer}", f"model/att{layer}"
        for i, name in enumerate("qkv"):
            out[f"{block}.self_attn.self_attn.{name}_proj.weight"] = weights[f"{att}/qkv/kernel"][:, i].reshape(d, d).T
        out[f"{block}.self_attn.self_attn.out_proj.weight"] = weights[f"{att}/o/kernel"].reshape(d, d).T
        out[f"{block}.self_attn.norm.weight"] = weights[f"model/an{layer}/g"]
        out[f"{block}.self_attn.norm.bias"] = weights[f"model/an{layer}/b"]
        out[f"{block}.feed_forward.norm.weight"] = weights[f"model/ln{layer}/g"]
        out[f"{block}.feed_forward.norm.bias"] = weights[f"model/ln{layer}/b"]
        if layer < switch:
            moe = f"model/moe{layer}"
            out[f"{block}.feed_forward.mlp.router.classifier.weight"] = weights[f"{moe}/switch_gating/kernel"].T
            out[f"{block}.feed_forward.soft_bypass_mlp.weight"] = weights[f"{moe}/softmlp/kernel"].T
            for e in range(p["num_experts"]):
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
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def write_hub_dir(path: str, weights: dict[str, np.ndarray], p: dict, dtype=np.float32, shards: int = 1,
                  vocabulary: str | None = None, emoji: str | None = None) -> None:
    """A hub-layout directory: config.json, safetensors (one file, or ``shards`` files and an index),
    and the tokenizer files when given."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    os.makedirs(path, exist_ok=True)
    config = dict(port_config(p), model_type=MODEL_TYPE, architectures=["GPTSanJapaneseForConditionalGeneration"],
                  torch_dtype="float16" if dtype == np.float16 else "float32")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = {k: v.astype(dtype) for k, v in port_tensors(weights, p).items()}
    if shards == 1:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(tensors)
        weight_map = {}
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = names[i::shards]
            save_file({n: tensors[n] for n in part}, os.path.join(path, file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    for source, name in ((vocabulary, "vocab.txt"), (emoji, "emoji.json")):
        if source:
            with open(source, "rb") as src, open(os.path.join(path, name), "wb") as dst:
                dst.write(src.read())
