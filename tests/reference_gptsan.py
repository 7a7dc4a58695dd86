"""A slow, plain-numpy (float64) GPTSAN forward pass written from the specification only.

Source: ``shared/spec/gptsan-model.md`` §3.2–3.9 (architecture) and §4.2/§4.3 (variable names), with
two original defects fixed as the project decided:

* D1: the prefix is counted in *token* coordinates. Memory column j holds token j − P (P = 1 with a
  spout, whose slot is column 0); column j is visible to query i iff j < P (the spout slot),
  j − P <= i (causal) or j − P < n_b (prefix).
* D18: padding positions (index >= the sequence's length) are routed to no expert, take no capacity
  and are left out of the load-balancing statistics. At inference every sequence is its own routing
  group with the capacity of its real length, as if it were run alone and unpadded; in training the
  B·T positions are flattened row-major and cut into G groups (§3.5).

Nothing here is taken from ``modeling/``; it is deliberately loop-heavy so that each formula can be
checked against the spec by eye. ``padding_takes_capacity=True`` gives the original D18 behaviour
(padding is routed and counted like any token), only to show that a test would notice it.
"""

from __future__ import annotations

import math

import numpy as np

# Defaults of our parameters.json keys (they reproduce the original, spec §3.5).
DEFAULTS = {"capacity_factor_train": 1.25, "capacity_factor_eval": 2.0, "min_expert_capacity": 4,
            "expert_group_size": 1024, "moe_loss_coef": 0.01, "layer_norm_epsilon": 1e-5}


def _param(model_params: dict, key: str):
    return model_params.get(key, DEFAULTS[key])


def layer_norm(z: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """§3.3: g ⊙ (z − mean(z)) / sqrt(var(z) + eps) + b over the last axis (biased variance)."""
    mean = z.mean(axis=-1, keepdims=True)
    var = ((z - mean) ** 2).mean(axis=-1, keepdims=True)
    return g * (z - mean) / np.sqrt(var + eps) + b


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def swish(z: np.ndarray) -> np.ndarray:
    return z * sigmoid(z)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def attention_mask(T: int, P: int, n_b: int) -> np.ndarray:
    """M_b(i, j) for queries i ∈ [0, T) and memory columns j ∈ [0, T + P) (§3.4 with D1 fixed)."""
    M = np.zeros((T, T + P))
    for i in range(T):
        for j in range(T + P):
            if j < P:                # the spout slot: seen by every query
                M[i, j] = 1.0
                continue
            token = j - P            # memory column j holds token j − P
            if token <= i or token < n_b:
                M[i, j] = 1.0
    return M


def routing_groups(B: int, T: int, group_size: int, batch_split: int = 1) -> int:
    """§3.5 grouping rule: G starts at max(1, ⌊B·T / group_size⌋) and grows until it divides B·T and
    is a multiple of the size of the mesh axis carrying 'batch'."""
    G = max(1, (B * T) // group_size)
    while (B * T) % G != 0 or G % batch_split != 0:
        G += 1
    return G


def capacity(S_g: int, E: int, cf: float, min_cap: int) -> int:
    """§3.5: c = max(min_cap, min(S_g, ⌊S_g · cf / E⌋))."""
    return max(min_cap, min(S_g, int(math.floor(S_g * cf / E))))


def spout_pasts(w: dict, s: np.ndarray, L: int, H: int, dh: int) -> np.ndarray:
    """§3.7: 8 tanh layers, then a linear map; returns [L, 2, H, d_h] (kv 0 = key, 1 = value)."""
    h = s.astype(np.float64)
    for k in range(8):
        h = np.tanh(h @ w[f"pasts/mlp{k}/kernel"])
    o = h @ w["pasts/out/kernel"]
    pasts = np.zeros((L, 2, H, dh))
    for layer in range(L):
        for kv in range(2):
            for head in range(H):
                for k in range(dh):
                    pasts[layer, kv, head, k] = o[((layer * 2 + kv) * H + head) * dh + k]
    return pasts


def self_attention(w: dict, layer: int, x: np.ndarray, M: np.ndarray, past: np.ndarray | None,
                   H: int, dh: int) -> np.ndarray:
    """§3.4 for one sequence: x [T, d], M [T, T + P], past [2, H, d_h] or None; returns [T, d]."""
    T = x.shape[0]
    W = w[f"model/att{layer}/qkv/kernel"]   # [d, 3, H, d_h]
    Wo = w[f"model/att{layer}/o/kernel"]    # [H, d_h, d]
    out = np.zeros_like(x)
    for h in range(H):
        q = x @ W[:, 0, h, :]               # [T, d_h]
        k = x @ W[:, 1, h, :]
        v = x @ W[:, 2, h, :]
        if past is not None:                # the past slot goes in front of the current keys/values
            k = np.concatenate([past[0, h][None, :], k], axis=0)
            v = np.concatenate([past[1, h][None, :], v], axis=0)
        s = (q @ k.T) / math.sqrt(dh)       # [T, T + P]
        s = s * M - 10000.0 * (1.0 - M)
        a = softmax(s)
        out += (a @ v) @ Wo[h]
    return out


def expert(w: dict, layer: int, e: int, x: np.ndarray) -> np.ndarray:
    """§3.5: y_e(x) = ReLU(x · W_i^e) · W_o^e."""
    return np.maximum(x @ w[f"model/moe{layer}/wi/kernel"][e], 0.0) @ w[f"model/moe{layer}/wo/kernel"][e]


def switch_layer(w: dict, layer: int, x: np.ndarray, real: np.ndarray, groups: list[list[tuple[int, int]]],
                 capacities: list[int], coef: float, padding_takes_capacity: bool):
    """§3.5 for the whole batch x [B, T, d]. ``groups`` lists (b, t) positions in group order;
    ``capacities`` gives each group's slots per expert.

    Returns FFN output [B, T, d], the layer's aux loss, a [B, T] 'dropped' mask (routed but over
    capacity), the smallest top-1/top-2 probability gap among routed tokens, and the largest slot
    count any expert reached in a group.
    """
    B, T, d = x.shape
    E = w[f"model/moe{layer}/switch_gating/kernel"].shape[1]
    out = np.zeros_like(x)
    dropped = np.zeros((B, T), dtype=bool)
    margin = np.inf
    group_losses = []
    for members, c in zip(groups, capacities):
        counter = [0] * E                          # explicit cumulative count per expert
        routed = []                                # positions that take part in routing
        f_count = np.zeros(E)
        p_sum = np.zeros(E)
        for (b, t) in members:
            xt = x[b, t]
            p = softmax(xt @ w[f"model/moe{layer}/switch_gating/kernel"])
            e_star = int(np.argmax(p))
            gate = p[e_star]
            soft = np.tanh(xt @ w[f"model/moe{layer}/softmlp/kernel"])   # the dense bypass, always
            takes_part = real[b, t] or padding_takes_capacity
            m = np.zeros(d)
            if takes_part:
                routed.append((b, t))
                f_count[e_star] += 1
                p_sum += p
                top2 = np.sort(p)[-2:]
                margin = min(margin, top2[1] - top2[0])
                if counter[e_star] < c:
                    counter[e_star] += 1
                    m = gate * expert(w, layer, e_star, xt)
                else:
                    dropped[b, t] = True   # over capacity: no expert output
            out[b, t] = m + soft
        n = len(routed)
        if n == 0:
            group_losses.append(0.0)
        else:
            f = f_count / n
            P = p_sum / n
            group_losses.append(np.mean(f * P))   # mean over e; averaged over groups below
    aux = coef * E ** 2 * float(np.mean(group_losses))
    return out, aux, dropped, margin


def ext_ffn(w: dict, layer: int, x: np.ndarray) -> np.ndarray:
    """§3.6: swish(x W1 + b1) W2 + b2."""
    p = f"model/mlp{layer}"
    return swish(x @ w[f"{p}/p1/kernel"] + w[f"{p}/p1/bias"]) @ w[f"{p}/p2/kernel"] + w[f"{p}/p2/bias"]


def reference_forward(weights: dict, model_params: dict, tokens, prefix, lengths, spout=None,
                      training: bool = False, batch_split: int = 1, padding_takes_capacity: bool = False) -> dict:
    """The GPTSAN forward pass (§3) in float64.

    tokens [B, T] ids; prefix [B] = n_b; lengths [B] real tokens (the rest is padding); spout [B, S]
    or None. Returns logits [B, T, V], hidden [B, L, T, d] (after each layer's FFN residual),
    aux_loss (sum over Switch layers), dropped [L_s, B, T] (real tokens over capacity), margin
    (smallest router top-1/top-2 gap: a tiny one would make float32 vs float64 routing ambiguous)
    and capacity.
    """
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    d, H = model_params["num_hidden"], model_params["num_header"]
    dh = d // H
    E = model_params["num_experts"]
    L_s, L_e = model_params["num_switch_layers"], model_params.get("num_ext_layers", 0)
    L = L_s + L_e
    C = model_params["num_contexts"]
    eps = _param(model_params, "layer_norm_epsilon")
    P = 0 if spout is None else 1

    # §3.2 embeddings: pos_t = t without a past, clip(t + P, P, C − 1) with one.
    positions = [t if P == 0 else min(max(t + P, P), C - 1) for t in range(T)]
    x = np.zeros((B, T, d))
    for b in range(B):
        for t in range(T):
            x[b, t] = w["model/wte"][tokens[b, t]] + w["model/wpe"][positions[t]]

    real = np.zeros((B, T), dtype=bool)
    for b in range(B):
        real[b, :lengths[b]] = True

    # §3.5 routing groups and capacity.
    if training:
        G = routing_groups(B, T, _param(model_params, "expert_group_size"), batch_split)
        flat = [(b, t) for b in range(B) for t in range(T)]            # row-major
        S_g = B * T // G
        groups = [flat[g * S_g:(g + 1) * S_g] for g in range(G)]
        cf = _param(model_params, "capacity_factor_train")
        sizes = [S_g] * G
    else:
        groups = [[(b, t) for t in range(T)] for b in range(B)]        # one group per sequence
        cf = _param(model_params, "capacity_factor_eval")
        sizes = [int(n) for n in lengths] if not padding_takes_capacity else [T] * B   # its real length
    c = [capacity(size, E, cf, _param(model_params, "min_expert_capacity")) for size in sizes]

    masks = [attention_mask(T, P, int(prefix[b])) for b in range(B)]
    pasts = None
    if spout is not None:
        pasts = [spout_pasts(w, np.asarray(spout[b]), L, H, dh) for b in range(B)]

    hidden = np.zeros((B, L, T, d))
    aux_loss = 0.0
    dropped = []
    margin = np.inf
    for layer in range(L):
        if layer == L_s:   # §3.6: ete is added once, entering the first extra layer
            for b in range(B):
                for t in range(T):
                    x[b, t] += w["model/ete"][positions[t]]
        # §3.3: a = SelfAttn(x); x ← x + LN_an(a)
        for b in range(B):
            past = None if pasts is None else pasts[b][layer]
            a = self_attention(w, layer, x[b], masks[b], past, H, dh)
            x[b] = x[b] + layer_norm(a, w[f"model/an{layer}/g"], w[f"model/an{layer}/b"], eps)
        # f = FFN(x); x ← x + LN_ln(f)
        if layer < L_s:
            f, aux, drop, gap = switch_layer(w, layer, x, real, groups, c, _param(model_params, "moe_loss_coef"),
                                             padding_takes_capacity)
            aux_loss += aux
            dropped.append(drop & real)
            margin = min(margin, gap)
        else:
            f = np.stack([ext_ffn(w, layer, x[b]) for b in range(B)])
        x = x + layer_norm(f, w[f"model/ln{layer}/g"], w[f"model/ln{layer}/b"], eps)
        hidden[:, layer] = x

    # §3.8 output head: u = swish(x W_d + b_d); logits = u · wteᵀ + wob.
    u = swish(x @ w["model/dense/kernel"] + w["model/dense_1/bias"])
    logits = u @ w["model/wte"].T + w["model/wob"]
    return {"logits": logits, "hidden": hidden, "aux_loss": aux_loss,
            "dropped": np.array(dropped).reshape(L_s, B, T), "margin": margin, "capacity": c}
