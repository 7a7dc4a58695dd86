"""Generation steps of one row on one device, in numpy over the model's variables in place.

Such a step multiplies one row by every weight it reaches, so its time is the bytes it reads.
TensorFlow's CPU kernels read weights at 15-25 GB/s in one-row products on our 2-core machine and
each ``Session.run`` adds about 2 ms of executor work around them; numpy's BLAS (OpenBLAS GEMV) reads
at 33-37 GB/s. So a one-row generator keeps its key/value cache in numpy and steps here, on views of
the variables' buffers (no copy: the model stays in memory once). With several rows the products
become small GEMMs, which oneDNN does at about 25 GB/s and OpenBLAS at 14-20, so batched steps stay
in TensorFlow (``modeling.inference``, or the mesh).

``step`` computes spec §3 for each row's new token against the cache (slot-major
[slots, batch, heads, d_kv]: the slots a query may see are a leading view) and is checked against
the numpy reference (``tests/test_generate.py``).
"""

from __future__ import annotations

import math

import numpy as np

from modeling import model as network
from modeling.config import ModelConfig
from modeling.mtf_compat import tf
from modeling.runtime import Runtime

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
    memory = slot_index[:, :keys[0].shape[0]]
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


class NumpyCache:
    """A generator's key/value cache as numpy arrays [layers, slots, batch, heads, d_kv], stepped by
    ``step`` over views of the model's variables.

    ``start`` takes the views (a py_func's inputs alias the variables' buffers: no copy) and empties
    the cache; it runs before every generation, so weights restored in between are seen. A view
    keeps its buffer alive: a variable assigned while a generation runs would keep its old value
    for that generation."""

    prompt_fetches = ("keys", "values")   # and the spout's, with a spout

    def __init__(self, runtime: Runtime, batch_size: int, slots: int, spout: bool):
        c = runtime.config
        self.runtime, self.spout_slot = runtime, spout
        shape = [c.num_layers, slots, batch_size, c.num_header, c.head_size]
        self.keys, self.values = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        if spout:
            self.prompt_fetches += ("spout_keys", "spout_values")
        with runtime.graph.as_default():
            variables = [v for v in tf.global_variables() if v.op.name.startswith("model/")]
            self._names = [v.op.name for v in variables]
            self._take = tf.numpy_function(self._hold, [v.read_value() for v in variables], tf.int32,
                                           name="weight_views")
        self.weights: Weights = {}

    def _hold(self, *arrays: np.ndarray) -> np.int32:
        self.weights = dict(zip(self._names, arrays))
        return np.int32(len(arrays))

    def start(self) -> None:
        self.runtime.start().run(self._take)
        self.keys[:] = 0.0
        self.values[:] = 0.0

    def write_prompt(self, out: dict[str, np.ndarray]) -> None:
        """The prompt pass's keys/values [L, B, H, T, d_kv] into slots first … first + T - 1."""
        first, length = int(self.spout_slot), out["keys"].shape[3]
        for cache, kind in ((self.keys, "keys"), (self.values, "values")):
            cache[:, first:first + length] = out[kind].transpose(0, 3, 1, 2, 4)
            if self.spout_slot:
                cache[:, 0] = out["spout_" + kind][:, :, :, 0]

    def step(self, tokens: np.ndarray, positions: np.ndarray, prefixes: np.ndarray, active: np.ndarray,
             slot_index: np.ndarray) -> np.ndarray:
        """The next token's logits [B, V]; the tokens' keys and values go to slot first + position."""
        visible = int(positions.max()) + int(self.spout_slot)
        logits, keys, values = step(self.runtime.config, self.weights, list(self.keys[:, :visible]),
                                    list(self.values[:, :visible]), tokens, positions, prefixes, active > 0,
                                    slot_index, self.spout_slot)
        rows = np.arange(len(tokens))
        self.keys[:, positions + int(self.spout_slot), rows] = keys
        self.values[:, positions + int(self.spout_slot), rows] = values
        return logits

    def reorder(self, parents: np.ndarray) -> None:
        self.keys = self.keys[:, :, parents]
        self.values = self.values[:, :, parents]
