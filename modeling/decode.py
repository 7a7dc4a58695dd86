"""One generation step of one row on one device: numpy over the model's variables, in place.

Such a step multiplies one row by every weight it reaches, so its time is the bytes it reads.
TensorFlow's CPU kernels read weights at 15-25 GB/s in one-row products on our 2-core machine,
numpy's BLAS (OpenBLAS GEMV) at 33-37 GB/s. So the step graph of a one-row generator is a single
``tf.numpy_function``: a py_func's inputs alias the tensors, so it gets the variables' buffers
without a copy and the model stays in memory once; sampling and the cache writes stay in the graph
around it. With several rows the products become small GEMMs, which oneDNN does at about 25 GB/s and
OpenBLAS at 14-20, so batched steps stay in ``modeling.inference``.

It computes spec §3 for the row's new token against the key/value cache (slot-major
[slots, batch, heads, d_kv]) and is checked against the numpy reference (``tests/test_generate.py``).
"""

from __future__ import annotations

import math

import numpy as np

from modeling import model as network
from modeling.config import ModelConfig
from modeling.mtf_compat import tf

Weights = dict[str, np.ndarray]


def layer_norm(x: np.ndarray, w: Weights, scope: str, epsilon: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    variance = np.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * w[f"{scope}/g"] + w[f"{scope}/b"]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def swish(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def attention(x: np.ndarray, w: Weights, layer: int, config: ModelConfig, keys: np.ndarray, values: np.ndarray,
              seen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [B, d] attends to the cache's visible slots ``keys``/``values`` [n, B, H, d_kv] (``seen`` [B, n])
    and to itself. Returns the output and the token's own key and value [B, H, d_kv]."""
    heads, d_kv, d = config.num_header, config.head_size, config.num_hidden
    qkv = (x @ w[f"model/att{layer}/qkv/kernel"].reshape(d, 3 * d)).reshape(-1, 3, heads, d_kv)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    # [B, H, 1, d_kv] x [B, H, d_kv, n]: every (row, head) product reads its slots in place (strided BLAS)
    scores = (q[:, :, None] @ keys.transpose(1, 2, 3, 0))[:, :, 0]                 # [B, H, n]
    scores = np.concatenate([scores, np.sum(q * k, -1, keepdims=True)], -1) * (1.0 / math.sqrt(d_kv))
    seen = np.concatenate([seen, np.ones_like(seen[:, :1])], -1)[:, None]         # the token sees itself
    weights = softmax(scores * seen - 10000.0 * (1.0 - seen))
    context = (weights[:, :, None, :-1] @ values.transpose(1, 2, 0, 3))[:, :, 0] + weights[..., -1:] * v
    return context.reshape(-1, d) @ w[f"model/att{layer}/o/kernel"].reshape(d, d), k, v


def switch_ffn(x: np.ndarray, w: Weights, layer: int, config: ModelConfig, active: np.ndarray) -> np.ndarray:
    """Top-1 experts plus the tanh softmlp (spec §3.5); each row's token is its own routing group, so it
    is kept when the capacity of a one-token group is at least one (and the row is active)."""
    scope = f"model/moe{layer}"
    probs = softmax(x @ w[f"{scope}/switch_gating/kernel"])
    expert, gate = probs.argmax(-1), probs.max(-1)
    capacity = network.expert_capacity(1, config.num_experts, config.capacity_factor_eval,
                                       config.min_expert_capacity)
    kept = active & (capacity > 0)
    moe = np.zeros_like(x)
    for e in np.unique(expert[kept]):
        rows = np.flatnonzero(kept & (expert == e))
        moe[rows] = np.maximum(x[rows] @ w[f"{scope}/wi/kernel"][e], 0.0) @ w[f"{scope}/wo/kernel"][e]
    return moe * gate[:, None] + np.tanh(x @ w[f"{scope}/softmlp/kernel"])


def ext_ffn(x: np.ndarray, w: Weights, layer: int) -> np.ndarray:
    scope = f"model/mlp{layer}"
    return swish(x @ w[f"{scope}/p1/kernel"] + w[f"{scope}/p1/bias"]) @ w[f"{scope}/p2/kernel"] + w[f"{scope}/p2/bias"]


def step(config: ModelConfig, w: Weights, keys: list[np.ndarray], values: list[np.ndarray], tokens: np.ndarray,
         query_index: np.ndarray, prefix: np.ndarray, active: np.ndarray, slot_index: np.ndarray,
         spout_slot: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits [B, V] of the token after ``tokens`` [B] at token indices ``query_index`` [B], and the
    tokens' keys and values [L, B, H, d_kv]. ``keys``/``values`` hold per layer the cache's leading
    slots [n, B, H, d_kv], as many as any query may see; ``slot_index`` [B, slots] is the token index
    of every cache slot (as ``model.Cache``)."""
    n = keys[0].shape[0]
    memory = slot_index[:, :n]
    seen = ((memory <= query_index[:, None]) | (memory < prefix[:, None])).astype(np.float32)
    positions = query_index + int(spout_slot)
    x = w["model/wte"][tokens] + w["model/wpe"][positions]
    new_keys, new_values = [], []
    for layer in range(config.num_layers):
        if layer == config.num_switch_layers:
            x = x + w["model/ete"][positions]
        a, k, v = attention(x, w, layer, config, keys[layer], values[layer], seen)
        x = x + layer_norm(a, w, f"model/an{layer}", config.layer_norm_epsilon)
        if layer < config.num_switch_layers:
            f = switch_ffn(x, w, layer, config, active)
        else:
            f = ext_ffn(x, w, layer)
        x = x + layer_norm(f, w, f"model/ln{layer}", config.layer_norm_epsilon)
        new_keys.append(k)
        new_values.append(v)
    u = swish(x @ w["model/dense/kernel"] + w["model/dense_1/bias"])
    return u @ w["model/wte"].T + w["model/wob"], np.stack(new_keys), np.stack(new_values)


def forward(variables: list[tf.Variable], config: ModelConfig, cache: list[tuple[tf.Variable, tf.Variable]],
            placeholders: dict[str, tf.Tensor], spout_slot: bool) -> dict[str, tf.Tensor]:
    """The step graph around ``step``: ``next_logits`` (and ``logits``) [B(, 1), V], ``keys``/``values``
    [L, B, H, 1, d_kv]. The placeholders are ``Runtime.forward``'s for one token per row with a cache."""
    weights = {v.op.name: v for v in variables if v.op.name.startswith("model/")}
    names = sorted(weights)
    batch = placeholders["tokens"].shape[0]
    reads = [weights[name].read_value() for name in names]   # aliased by the py_func: no copy
    # the slots some query may see, gathered: a dense read would copy the whole cache, since the
    # scatters that write it put the variables in copy-on-read mode
    visible = tf.range(tf.reduce_max(placeholders["query_index"]) + int(spout_slot))
    caches = [var.sparse_read(visible) for pair in cache for var in pair]

    def run(tokens, query_index, prefix, active, slot_index, *arrays):
        w = dict(zip(names, arrays[:len(names)]))
        pairs = arrays[len(names):]
        return step(config, w, list(pairs[0::2]), list(pairs[1::2]), tokens[:, 0], query_index[:, 0], prefix,
                    active > 0, slot_index, spout_slot)

    p = placeholders
    logits, keys, values = tf.numpy_function(
        run, [p["tokens"], p["query_index"], p["prefix"], p["lengths"], p["slot_index"], *reads, *caches],
        [tf.float32] * 3, stateful=False, name="decode_step")
    kv_shape = [config.num_layers, batch, config.num_header, 1, config.head_size]
    logits = tf.ensure_shape(logits, [batch, config.num_vocabulary])
    return {"next_logits": logits, "logits": logits[:, None],
            "keys": tf.reshape(keys, kv_shape), "values": tf.reshape(values, kv_shape)}
