"""The network for inference on one device, in plain TensorFlow over the model's own variables.

Mesh TensorFlow lowers every layer for any mesh; on one device that generality costs time: a
routed expert's weights are copied out of ``wi``/``wo`` for each token, every expert computes its
capacity slots whether a token is there or not, and one-hot dispatch/combine einsums move tokens in
and out. This module computes the same numbers (spec §3, with each sequence its own routing group,
as ``model.forward`` at inference) the direct way:

* a token reaches its expert by ``dynamic_partition``; an expert's kernels are dim-0 slices of the
  ``[E, …]`` variables, which TensorFlow hands out without copying, and an expert with no tokens
  multiplies an empty matrix (no work). A decoding step thus reads one expert per token, no more;
* attention to a key/value cache gathers only the slots that can be visible, in place.

It is checked against the same numpy reference as the mesh model (``tests/test_model.py``).
"""

from __future__ import annotations

import dataclasses
import math

from modeling import model as network
from modeling.config import ModelConfig
from modeling.mtf_compat import tf


@dataclasses.dataclass
class CacheRead:
    """Earlier tokens' keys and values, kept in variables of layout [slots, batch, heads, d_kv].

    ``index`` [batch, slots] is the token index of every slot (-1 for the spout, a huge value for a
    slot no query may see); ``visible_slots`` is how many leading slots any query can see.
    """

    keys: list[tf.Variable]
    values: list[tf.Variable]
    index: tf.Tensor
    visible_slots: tf.Tensor
    spout_slot: bool


@dataclasses.dataclass
class TrainingRouting:
    """Training-time routing (``model.forward(training=True)``): the batch's tokens, in row-major
    order, routed in ``groups`` equal groups with ``capacity`` slots per expert each, the router
    input multiplied by ``jitter[layer]`` [B*T, d] if given. Without it each sequence is its own group
    with the capacity of its real length (inference)."""

    groups: int
    capacity: int
    jitter: list[tf.Tensor] | None = None


@dataclasses.dataclass
class Layers:
    """What the layers give: the last output x [B*T, d], per layer its output and its inputs' keys and
    values [B, H, T, d_kv], the summed aux loss, and per Switch layer the routing statistics."""

    x: tf.Tensor
    hidden: list[tf.Tensor]
    keys: list[tf.Tensor]
    values: list[tf.Tensor]
    aux_loss: tf.Tensor
    expert_fraction: list[tf.Tensor]   # [experts] share of real tokens routed to each
    dropped_fraction: list[tf.Tensor]  # scalar share of real tokens over capacity


class Weights:
    """The model's weights by their checkpoint names: variables, each read once per graph (a gather
    from the variable itself would switch it to copy-on-read: every later read would copy it), or
    tensors already read."""

    def __init__(self, variables: list[tf.Variable] | dict[str, tf.Tensor]):
        self._variables = {} if isinstance(variables, dict) else {v.op.name: v for v in variables}
        self._reads: dict[str, tf.Tensor] = dict(variables) if isinstance(variables, dict) else {}

    def __call__(self, name: str) -> tf.Tensor:
        if name not in self._reads:
            self._reads[name] = self._variables[name].read_value()
        return self._reads[name]


def layer_norm(x: tf.Tensor, w: Weights, scope: str, epsilon: float) -> tf.Tensor:
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + epsilon) * w(f"{scope}/g") + w(f"{scope}/b")


def swish(x: tf.Tensor) -> tf.Tensor:
    return x * tf.sigmoid(x)


def visible(query_index: tf.Tensor, memory_index: tf.Tensor, prefix: tf.Tensor) -> tf.Tensor:
    """[batch, length, memory] bool: causal (m <= q) or in the bidirectional prefix (m < n_b)."""
    causal = memory_index[:, None, :] <= query_index[:, :, None]
    in_prefix = memory_index[:, None, :] < prefix[:, None, None]
    return tf.logical_or(causal, in_prefix)


def attention(x: tf.Tensor, w: Weights, layer: int, config: ModelConfig, mask: tf.Tensor,
              past: tuple[tf.Tensor, tf.Tensor] | None) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
    """Self-attention (spec §3.4) of x [B*T, d] ordered by row; ``past`` keys/values [B, H, P, d_kv] go
    in front of the input's own. Returns the output and the input's keys/values [B, H, T, d_kv]."""
    heads, d_kv, d = config.num_header, config.head_size, config.num_hidden
    batch, length = tf.shape(mask)[0], tf.shape(mask)[1]
    qkv = tf.matmul(x, tf.reshape(w(f"model/att{layer}/qkv/kernel"), [d, 3 * d]))
    qkv = tf.transpose(tf.reshape(qkv, [batch, length, 3, heads, d_kv]), [2, 0, 3, 1, 4])  # [3, B, H, T, d_kv]
    q, k, v = tf.unstack(qkv)   # (its gradient is one stack; slices would each fill a zero tensor)
    keys, values = (k, v) if past is None else (tf.concat([past[0], k], 2), tf.concat([past[1], v], 2))
    scores = tf.matmul(q, keys, transpose_b=True) * (1.0 / math.sqrt(d_kv))
    seen = tf.cast(mask[:, None], tf.float32)
    weights = tf.nn.softmax(scores * seen - 10000.0 * (1.0 - seen))
    context = tf.reshape(tf.transpose(tf.matmul(weights, values), [0, 2, 1, 3]), [-1, d])
    return tf.matmul(context, tf.reshape(w(f"model/att{layer}/o/kernel"), [d, d])), (k, v)


def switch_ffn(x: tf.Tensor, w: Weights, layer: int, config: ModelConfig, nonpadding: tf.Tensor,
               routing: TrainingRouting | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Top-1 experts plus the tanh softmlp bypass (spec §3.5) of x [B*T, d]: each sequence its own
    routing group with the capacity of its real length (``nonpadding`` [B, T]), or ``routing``'s
    groups. Returns the output, the layer's load-balancing loss, the share of real tokens routed to
    each expert and the share dropped (over capacity)."""
    E = config.num_experts
    scope = f"model/moe{layer}"
    groups = tf.shape(nonpadding)[0] if routing is None else routing.groups
    router_input = x if routing is None or routing.jitter is None else x * routing.jitter[layer]
    router_logits = tf.matmul(router_input, w(f"{scope}/switch_gating/kernel"))
    probs = tf.reshape(tf.nn.softmax(router_logits), [groups, -1, E])                  # [G, S, E]
    expert = tf.argmax(probs, -1, output_type=tf.int32)
    gate = tf.reduce_max(probs, -1)
    real = tf.reshape(nonpadding, [groups, -1])
    routed = tf.one_hot(expert, E) * real[..., None]                            # padding goes nowhere
    slot = tf.reduce_sum((tf.cumsum(routed, axis=1) - 1.0) * routed, -1)        # place in its expert's queue
    if routing is None:
        real_length = tf.cast(tf.reduce_sum(real, 1), tf.int32)
        limit = tf.gather(_capacity_table(config, tf.shape(real)[1]), real_length)[:, None]   # [B, 1]
    else:
        limit = routing.capacity
    kept = tf.logical_and(real > 0, slot < tf.cast(limit, tf.float32))
    x = tf.ensure_shape(x, [nonpadding.shape[0] * nonpadding.shape[1], x.shape[1]])   # static token count
    expert, kept_rows = tf.reshape(expert, [-1]), tf.reshape(kept, [-1])
    if routing is None:   # a dropped token (rare) joins the first token's expert: no extra expert read
        moe = experts(x, tf.where_v2(kept_rows, expert, expert[0]), w, scope, E)
    else:   # training drops many more (62-79 % per layer in an untrained model): they multiply nothing
        moe = kept_experts(x, expert, kept_rows, w(f"{scope}/wi/kernel"), w(f"{scope}/wo/kernel"))
    moe *= tf.reshape(gate * tf.cast(kept, tf.float32), [-1, 1])              # dropped tokens: no expert output
    bypass = tf.tanh(tf.matmul(x, w(f"{scope}/softmlp/kernel")))

    count = tf.maximum(tf.reduce_sum(real, 1, keepdims=True), 1.0)              # [G, 1]
    density = tf.reduce_sum(routed, 1) / count
    density_proxy = tf.reduce_sum(probs * real[..., None], 1) / count
    aux = config.moe_loss_coef * E ** 2 * tf.reduce_mean(density * density_proxy)
    total = tf.maximum(tf.reduce_sum(real), 1.0)
    if config.router_z_loss_coef:
        z = tf.reshape(tf.square(tf.reduce_logsumexp(router_logits, -1)), tf.shape(real))
        aux += config.router_z_loss_coef * tf.reduce_sum(z * real) / total
    fraction = tf.reduce_sum(routed, [0, 1]) / total
    dropped = 1.0 - tf.reduce_sum(tf.cast(kept, tf.float32)) / total
    return moe + bypass, aux, fraction, dropped


def experts(x: tf.Tensor, part: tf.Tensor, w: Weights, scope: str, num_experts: int) -> tf.Tensor:
    """ReLU(x W_i^e) W_o^e for each token's expert ``part``.

    The experts used are numbered in order of appearance and the tokens partitioned by that number
    into min(N, E) groups (E when N is known only at run time), so a graph for N tokens holds
    min(N, E) expert multiplications: one for a one-token step. A group's kernels are dim-0 slices of
    ``wi``/``wo`` (no copy); an empty group multiplies an empty matrix (no work)."""
    used, group = tf.unique(part)
    groups = min(x.shape[0] or num_experts, num_experts)
    rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), group, groups)
    tokens = tf.dynamic_partition(x, group, groups)
    w_i, w_o = w(f"{scope}/wi/kernel"), w(f"{scope}/wo/kernel")
    outputs = []
    for g in range(groups):
        e = used[tf.minimum(g, tf.size(used) - 1)]
        outputs.append(tf.matmul(tf.nn.relu(tf.matmul(tokens[g], w_i[e])), w_o[e]))
    return tf.dynamic_stitch(rows, outputs)


def kept_experts(x: tf.Tensor, expert: tf.Tensor, kept: tf.Tensor, w_i: tf.Tensor, w_o: tf.Tensor) -> tf.Tensor:
    """ReLU(x W_i^e) W_o^e for each token's ``expert`` where ``kept``, 0 elsewhere; a dropped token
    multiplies nothing. With weight gradients: an expert's kernels are ``unstack`` outputs (views; their
    gradient stacks the experts' once, where a slice's gradient would be a whole [E, …] tensor per
    expert)."""
    experts = w_i.shape[0]
    part = tf.where_v2(kept, expert, experts)   # the dropped go to an extra partition
    rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), part, experts + 1)
    tokens = tf.dynamic_partition(x, part, experts + 1)
    outputs = [tf.matmul(tf.nn.relu(tf.matmul(t, a)), b) for t, a, b in zip(tokens, tf.unstack(w_i), tf.unstack(w_o))]
    return tf.dynamic_stitch(rows, outputs + [tf.zeros_like(tokens[-1])])


def _capacity_table(config: ModelConfig, length: tf.Tensor) -> tf.Tensor:
    """Entry n: how many tokens an expert keeps of an n-token sequence (``model.expert_capacity``)."""
    table = [network.expert_capacity(n, config.num_experts, config.capacity_factor_eval,
                                     config.min_expert_capacity) for n in range(config.num_contexts + 1)]
    return tf.constant(table, tf.int32)[:length + 1]


def ext_ffn(x: tf.Tensor, w: Weights, layer: int) -> tf.Tensor:
    scope = f"model/mlp{layer}"
    h = swish(tf.matmul(x, w(f"{scope}/p1/kernel")) + w(f"{scope}/p1/bias"))
    return tf.matmul(h, w(f"{scope}/p2/kernel")) + w(f"{scope}/p2/bias")


def spout_pasts(spout: tf.Tensor, w: Weights, config: ModelConfig) -> tf.Tensor:
    """The spout MLP (spec §3.7): per layer a key and a value slot, [L, 2, B, H, 1, d_kv]."""
    h = spout
    for k in range(8):
        h = tf.tanh(tf.matmul(h, w(f"pasts/mlp{k}/kernel")))
    out = tf.reshape(tf.matmul(h, w("pasts/out/kernel")),
                     [-1, config.num_layers, 2, config.num_header, 1, config.head_size])
    return tf.transpose(out, [1, 2, 0, 3, 4, 5])


def output_head(x: tf.Tensor, w: Weights) -> tf.Tensor:
    """swish(x W_d + b_d) · wteᵀ + wob (spec §3.8), for x [N, d]."""
    u = swish(tf.matmul(x, w("model/dense/kernel")) + w("model/dense_1/bias"))
    # wte · uᵀ, then transposed: the same product, read row by row (1.7x faster at 8 rows on CPU)
    return tf.transpose(tf.matmul(w("model/wte"), u, transpose_b=True)) + w("model/wob")


def embed(w: Weights, tokens: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """Token plus position embeddings (spec §3.2), [B*T, d] ordered by row."""
    return tf.gather(w("model/wte"), tf.reshape(tokens, [-1])) + tf.gather(w("model/wpe"), tf.reshape(positions, [-1]))


def layers(x: tf.Tensor, w: Weights, config: ModelConfig, mask: tf.Tensor, positions: tf.Tensor,
           pasts: list[tuple[tf.Tensor, tf.Tensor] | None], nonpadding: tf.Tensor, count: int,
           routing: TrainingRouting | None = None) -> Layers:
    """The first ``count`` layers (spec §3.3) on the embedded x [B*T, d]."""
    hidden, keys, values, fractions, dropped, aux_loss = [], [], [], [], [], tf.constant(0.0)
    for layer in range(count):
        if layer == config.num_switch_layers:
            x += tf.gather(w("model/ete"), tf.reshape(positions, [-1]))
        a, (k, v) = attention(x, w, layer, config, mask, pasts[layer])
        x += layer_norm(a, w, f"model/an{layer}", config.layer_norm_epsilon)
        if layer < config.num_switch_layers:
            f, aux, fraction, drop = switch_ffn(x, w, layer, config, nonpadding, routing)
            aux_loss += aux
            fractions.append(fraction)
            dropped.append(drop)
        else:
            f = ext_ffn(x, w, layer)
        x += layer_norm(f, w, f"model/ln{layer}", config.layer_norm_epsilon)
        hidden.append(x)
        keys.append(k)
        values.append(v)
    return Layers(x, hidden, keys, values, aux_loss, fractions, dropped)


def prefix_lm_inputs(tokens: tf.Tensor, prefix: tf.Tensor, spout: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """Mask [B, T, P + T] and positions [B, T] of whole sequences (no cache), the spout in slot 0."""
    batch, length = tf.shape(tokens)[0], tf.shape(tokens)[1]
    query_index = tf.tile(tf.range(length)[None], [batch, 1])
    memory_index = tf.concat([tf.fill([batch, 1], -1), query_index], 1) if spout else query_index
    return visible(query_index, memory_index, prefix), query_index + int(spout)


def forward(variables: list[tf.Variable], config: ModelConfig, tokens: tf.Tensor, prefix: tf.Tensor,
            lengths: tf.Tensor, length: int, spout: tf.Tensor | None = None, query_index: tf.Tensor | None = None,
            cache: CacheRead | None = None, routing: TrainingRouting | None = None) -> dict[str, tf.Tensor]:
    """Logits [B, T, V], ``next_logits`` [B, V] at each row's last real token (the head run on those
    positions only), hidden states [B, L, T, d], aux_loss and the inputs' keys/values [L, B, H, T, d_kv]
    (plus the spout's, ``spout_keys``/``spout_values``, with a spout and no cache). ``lengths`` [B]
    counts each row's real tokens; the rest of its ``length`` positions is padding. ``query_index``
    [B, T] goes with a ``cache``; ``routing``: as in training (else each sequence is its own group)."""
    w = Weights(variables)
    nonpadding = tf.sequence_mask(lengths, length, tf.float32)
    batch = tf.shape(tokens)[0]
    pasts, spout_kv = [None] * config.num_layers, None
    if cache is not None:
        n = cache.visible_slots
        mask = visible(query_index, tf.concat([cache.index[:, :n], query_index], 1), prefix)
        positions = query_index + int(cache.spout_slot)
        pasts = [tuple(tf.transpose(var.sparse_read(tf.range(n)), [1, 2, 0, 3]) for var in pair)
                 for pair in zip(cache.keys, cache.values)]
    else:
        mask, positions = prefix_lm_inputs(tokens, prefix, spout is not None)
        if spout is not None:
            spout_kv = spout_pasts(spout, w, config)
            pasts = [(spout_kv[layer, 0], spout_kv[layer, 1]) for layer in range(config.num_layers)]
    net = layers(embed(w, tokens, positions), w, config, mask, positions, pasts, nonpadding, config.num_layers,
                 routing)
    last = tf.gather(net.x, tf.range(batch) * length + tf.maximum(lengths - 1, 0))
    d, vocab = config.num_hidden, config.num_vocabulary
    out = {"logits": tf.reshape(output_head(net.x, w), [batch, length, vocab]), "next_logits": output_head(last, w),
           "hidden": tf.transpose(tf.reshape(tf.stack(net.hidden, 1), [batch, length, config.num_layers, d]),
                                  [0, 2, 1, 3]),
           "aux_loss": net.aux_loss, "keys": tf.stack(net.keys), "values": tf.stack(net.values)}
    if spout_kv is not None:
        out.update(spout_keys=spout_kv[:, 0], spout_values=spout_kv[:, 1])
    return out
