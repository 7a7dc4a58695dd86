"""The GPTSAN network on Mesh TensorFlow (``../shared/spec/gptsan-model.md`` §3).

A stack of Switch layers, then optional dense "extra" layers. Every layer is the same skeleton,
with the LayerNorm on the sub-layer output before the residual add and no final norm::

    x += LN_an(SelfAttention(x));   x += LN_ln(FFN(x))

Attention is a hybrid prefix-LM mask: tokens before the segmenter see each other both ways, the rest
is causal. An optional spout vector becomes one extra key/value slot in front of every layer's
memory. Variable names and shapes are the original checkpoint's (``model/att0/qkv/kernel`` …).

Tensor dimensions are named; the layout maps ``batch``, ``heads`` and ``experts`` to mesh axes, so
the same code runs data- and model-parallel.
"""

from __future__ import annotations

import dataclasses
import math

from modeling import inference
from modeling.config import ModelConfig
from modeling.mtf_compat import mtf, tf

# ---------------------------------------------------------------------------------------------------
# Dimensions. Names that the layout may split: batch, heads, experts.
# ---------------------------------------------------------------------------------------------------


def dim(name: str, size: int) -> mtf.Dimension:
    return mtf.Dimension(name, size)


@dataclasses.dataclass(frozen=True)
class Dims:
    """The fixed-size dimensions of one model."""

    config: ModelConfig

    def __getattr__(self, name):  # only called for names not found normally
        c = self.config
        sizes = {"d_model": c.num_hidden, "d_model_out": c.num_hidden, "heads": c.num_header,
                 "d_kv": c.head_size, "qkv": 3, "experts": c.num_experts, "expert_hidden": c.expert_size,
                 "ext_hidden": c.ext_size, "vocab": c.num_vocabulary, "positions": c.num_contexts,
                 "spout": c.num_spout, "spout_out": c.num_spout,
                 "pasts_out": c.num_layers * 2 * c.num_hidden}
        if name not in sizes:
            raise AttributeError(name)
        return dim(name, sizes[name])


@dataclasses.dataclass
class Outputs:
    """What one forward pass exports."""

    logits: mtf.Tensor                  # [batch, length, vocab], float32
    hidden: list[mtf.Tensor]            # per layer: [batch, length, d_model] after the FFN residual
    aux_loss: mtf.Tensor                # scalar: load-balancing (+ router z) losses of all Switch layers
    presents: list[tuple[mtf.Tensor, mtf.Tensor]]  # per layer: keys, values of the inputs [b, heads, memory, d_kv]
    expert_fraction: list[mtf.Tensor]   # per Switch layer: [experts] share of real tokens routed there
    dropped_fraction: list[mtf.Tensor]  # per Switch layer: scalar share of real tokens over capacity
    spout_kv: list[tuple[mtf.Tensor, mtf.Tensor]] | None = None  # per layer: the spout's key/value slot


# ---------------------------------------------------------------------------------------------------
# Variables, named and initialised as the original (spec §3.10, §4.2).
# ---------------------------------------------------------------------------------------------------


def _normal(stddev: float) -> tf.keras.initializers.Initializer:
    return tf.random_normal_initializer(stddev=stddev)


def layer_weight_names(config: ModelConfig, layer: int) -> list[str]:
    """Checkpoint names of one layer's weights (spec §4.2); ``ete`` belongs to the first extra layer."""
    ffn = (("moe", "switch_gating/kernel", "wi/kernel", "wo/kernel", "softmlp/kernel")
           if layer < config.num_switch_layers else ("mlp", "p1/kernel", "p1/bias", "p2/kernel", "p2/bias"))
    names = [f"att{layer}/qkv/kernel", f"att{layer}/o/kernel", f"an{layer}/g", f"an{layer}/b", f"ln{layer}/g",
             f"ln{layer}/b", *(f"{ffn[0]}{layer}/{name}" for name in ffn[1:])]
    return [f"model/{name}" for name in names + (["ete"] if layer == config.num_switch_layers else [])]


def variable(mesh: mtf.Mesh, name: str, dims: list[mtf.Dimension], initializer, dtype) -> mtf.Tensor:
    return mtf.get_variable(mesh, name, mtf.Shape(dims), initializer=initializer, dtype=dtype)


def fan_in_truncated_normal(fan_in: int):
    """Mesh TensorFlow's default for expert kernels: truncated normal with std 1/sqrt(fan_in)."""
    return tf.truncated_normal_initializer(stddev=fan_in ** -0.5)


# ---------------------------------------------------------------------------------------------------
# Building blocks.
# ---------------------------------------------------------------------------------------------------


def layer_norm(x: mtf.Tensor, d_model: mtf.Dimension, epsilon: float, dtype) -> mtf.Tensor:
    """g * (x - mean) / sqrt(var + eps) + b over d_model, computed in float32 (variables ``g``, ``b``)."""
    g = variable(x.mesh, "g", [d_model], tf.ones_initializer(), dtype)
    b = variable(x.mesh, "b", [d_model], tf.zeros_initializer(), dtype)
    x32 = mtf.cast(x, tf.float32)
    centred = x32 - mtf.reduce_mean(x32, reduced_dim=d_model)
    variance = mtf.reduce_mean(mtf.square(centred), reduced_dim=d_model)
    normed = centred * mtf.rsqrt(variance + epsilon)
    return mtf.cast(normed * mtf.cast(g, tf.float32) + mtf.cast(b, tf.float32), x.dtype)


class _EmbeddingLookup(mtf.Operation):
    """``weights[ids]`` by ``tf.gather`` on every device.

    ``mtf.gather`` multiplies a [..., vocab] one-hot by the table: for a 36k vocabulary that costs as
    much as the output layer, forward and backward. A gather gives the same numbers, and its gradient
    is a segment sum (``_EmbeddingGradient``). Both need the first (vocabulary) dimension of
    ``weights`` unsplit, which no layout of ours splits.
    """

    def __init__(self, weights: mtf.Tensor, ids: mtf.Tensor):
        super().__init__([weights, ids], name="embedding_lookup")
        self._table_dim = weights.shape.dims[0]
        self._outputs = [mtf.Tensor(self, ids.shape + weights.shape.dims[1:], weights.dtype)]
        self._splittable_dims, self._unsplittable_dims = self._initialize_splittable_and_unsplittable_dims(
            "splittable", [self._table_dim.name])

    def gradient(self, grad_ys):
        weights, ids = self.inputs
        return [_EmbeddingGradient(grad_ys[0], ids, weights.shape).outputs[0], None]

    def lower(self, lowering):
        mesh_impl = _whole_table(lowering, self, self._table_dim)
        weights, ids = (lowering.tensors[t] for t in self.inputs)
        lowering.set_tensor_lowering(self.outputs[0], mesh_impl.slicewise(
            lambda w, i: tf.gather(w, i, axis=0), weights, ids))


class _EmbeddingGradient(mtf.Operation):
    """The table's gradient of a lookup: each id's incoming rows summed into its row
    (``unsorted_segment_sum``, no [tokens, vocabulary] one-hot), then summed over the mesh axes that
    split the ids."""

    def __init__(self, grad: mtf.Tensor, ids: mtf.Tensor, table_shape: mtf.Shape):
        super().__init__([grad, ids], name="embedding_gradient")
        self._table_dim, self._ids_dims = table_shape.dims[0], ids.shape.dims
        self._outputs = [mtf.Tensor(self, table_shape, grad.dtype)]
        self._splittable_dims, self._unsplittable_dims = self._initialize_splittable_and_unsplittable_dims(
            "splittable", [self._table_dim.name])

    def lower(self, lowering):
        mesh_impl = _whole_table(lowering, self, self._table_dim)
        grad, ids = (lowering.tensors[t] for t in self.inputs)
        rows = len(self._ids_dims)

        def segment_sum(g: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
            flat = tf.reshape(g, [-1] + g.shape.as_list()[rows:])
            return tf.math.unsorted_segment_sum(flat, tf.reshape(i, [-1]), self._table_dim.size)

        table = mesh_impl.slicewise(segment_sum, grad, ids)
        axes = [a for a in map(mesh_impl.tensor_dimension_to_mesh_axis, self._ids_dims) if a is not None]
        if axes:
            table = mesh_impl.allreduce(table, axes, "SUM")
        lowering.set_tensor_lowering(self.outputs[0], table)


def _whole_table(lowering, op: mtf.Operation, table_dim: mtf.Dimension):
    """The op's mesh implementation, after checking that the layout leaves ``table_dim`` unsplit."""
    mesh_impl = lowering.mesh_impl(op)
    axis = mesh_impl.tensor_dimension_to_mesh_axis(table_dim)
    if axis is not None and mesh_impl.shape[axis].size > 1:
        raise ValueError(f"the layout splits '{table_dim.name}', which embedding lookups need whole")
    return mesh_impl


def embed(weights: mtf.Tensor, ids: mtf.Tensor) -> mtf.Tensor:
    """Rows of ``weights`` [table, ...] at ``ids``: shape ids.shape + the row shape."""
    return _EmbeddingLookup(weights, ids).outputs[0]


def swish(x: mtf.Tensor) -> mtf.Tensor:
    return x * mtf.sigmoid(x)


@dataclasses.dataclass
class AttentionMask:
    """Which memory columns each query sees: ``m <= q`` (causal) or ``m < prefix`` (bidirectional prefix).

    ``query_index`` and ``memory_index`` are token indices (the spout slot has index -1, so every
    query sees it); ``prefix`` is n_b, the index of the segmenter. The prefix is counted in tokens,
    not memory columns, so a spout does not cost the last prefix token its bidirectionality (D1).
    """

    query_index: mtf.Tensor    # [length] or [batch, length], int32
    memory_index: mtf.Tensor   # [memory] or [batch, memory], int32
    prefix: mtf.Tensor         # [batch], int32

    def visible(self, dtype) -> mtf.Tensor:
        """1.0 where the query sees the memory column, else 0.0: [batch, length, memory]."""
        def union(*tensors: mtf.Tensor) -> mtf.Shape:
            dims = []
            for t in tensors:
                dims += [d for d in t.shape.dims if d not in dims]
            return mtf.Shape(dims)

        causal = mtf.cast(mtf.less_equal(self.memory_index, self.query_index,
                                         output_shape=union(self.query_index, self.memory_index)), dtype)
        prefix = mtf.cast(mtf.less(self.memory_index, self.prefix,
                                   output_shape=union(self.prefix, self.memory_index)), dtype)
        return causal + prefix - causal * prefix  # logical or, broadcast over batch and length


def attention(x: mtf.Tensor, dims: Dims, mask: AttentionMask, past: tuple[mtf.Tensor, mtf.Tensor] | None,
              dtype: mtf.VariableDType) -> tuple[mtf.Tensor, tuple[mtf.Tensor, mtf.Tensor]]:
    """Self-attention with a fused qkv kernel [d, 3, H, d_h] and output kernel [H, d_h, d] (no biases).

    ``past`` keys/values [batch, heads, memory, d_kv] go in front of this input's own. Returns the
    output and this input's keys/values (``present``).
    """
    batch, length = x.shape.dims[0], x.shape.dims[1]
    memory = dim("memory", length.size)
    w_qkv = variable(x.mesh, "qkv/kernel", [dims.d_model, dims.qkv, dims.heads, dims.d_kv], _normal(0.02), dtype)
    w_o = variable(x.mesh, "o/kernel", [dims.heads, dims.d_kv, dims.d_model], _normal(0.02), dtype)

    # one product for q, k and v, laid out as a plain matmul gives it; the keys and values are
    # transposed to the cache layout [batch, heads, memory, d_kv] (a copy of 2 x T x d, not a weight)
    qkv = mtf.einsum([x, w_qkv], mtf.Shape([batch, length, dims.qkv, dims.heads, dims.d_kv]))
    q, k, v = mtf.unstack(qkv, dims.qkv)
    k, v = (mtf.transpose(mtf.rename_dimension(t, "length", "memory"), [batch, dims.heads, memory, dims.d_kv])
            for t in (k, v))
    present = (k, v)
    if past is not None:
        k, v = (mtf.concat([mtf.cast(p, k.dtype), t], "memory") for p, t in zip(past, (k, v)))
        memory = k.shape.dims[2]
    scores = mtf.einsum([mtf.cast(q, tf.float32), mtf.cast(k, tf.float32)],
                        mtf.Shape([batch, dims.heads, length, memory])) * (1.0 / math.sqrt(dims.d_kv.size))
    visible = mask.visible(tf.float32)
    weights = mtf.softmax(scores * visible - 10000.0 * (1.0 - visible), memory)
    context = mtf.einsum([mtf.cast(weights, x.dtype), v], mtf.Shape([batch, length, dims.heads, dims.d_kv]))
    return mtf.einsum([context, w_o], x.shape), present


def routing_groups(batch: int, length: int, group_size: int, batch_split: int) -> int:
    """Number of routing groups G (spec §3.5): at least B*T / group_size, dividing B*T, a multiple of
    the mesh axis carrying ``batch``."""
    tokens = batch * length
    groups = max(1, tokens // group_size)
    while tokens % groups or groups % batch_split:
        groups += 1
    return groups


def expert_capacity(group_size: int, num_experts: int, factor: float, minimum: int) -> int:
    """Slots per expert per group: max(minimum, min(S_g, floor(S_g * factor / E)))."""
    return max(minimum, min(group_size, int(group_size * factor / num_experts)))


def training_routing(config: ModelConfig, batch: int, length: int, batch_split: int) -> tuple[int, int]:
    """Routing groups and slots per expert in each, in training."""
    groups = routing_groups(batch, length, config.expert_group_size, batch_split)
    return groups, expert_capacity(batch * length // groups, config.num_experts, config.capacity_factor_train,
                                   config.min_expert_capacity)


@dataclasses.dataclass
class Routing:
    """Top-1 routing of one group batch: dispatch/combine tensors, the auxiliary loss and statistics."""

    dispatch: mtf.Tensor       # [groups, group, experts, capacity] 0/1
    expert_index: mtf.Tensor   # [groups, group] the top-1 expert of each token
    combine: mtf.Tensor        # dispatch * gate
    aux_loss: mtf.Tensor
    expert_fraction: mtf.Tensor
    dropped_fraction: mtf.Tensor

    def token_gate(self, dtype) -> mtf.Tensor:
        """[groups, group] each token's gate, 0 for a dropped one: what its expert's output is scaled by."""
        return mtf.cast(mtf.reduce_sum(self.combine, output_shape=self.expert_index.shape), dtype)


def route(router_logits: mtf.Tensor, nonpadding: mtf.Tensor, dims: Dims, capacity: int,
          config: ModelConfig, capacity_by_length: list[int] | None = None) -> Routing:
    """Switch top-1 routing in float32; tokens enter their expert in group order up to ``capacity``.

    Padding (``nonpadding`` = 0) is routed nowhere and counts in no statistic, so it never takes a
    slot from a real token (an original defect, D18). With ``capacity_by_length`` (inference: one
    group per sequence; entry n is ``expert_capacity`` of n tokens) each group keeps as many tokens per
    expert as its *real* length allows, so a sequence's output does not depend on how far a batch pads
    it; ``capacity`` is then only the number of slots computed.
    """
    groups, group = router_logits.shape.dims[:2]
    experts = dims.experts
    capacity_dim = dim("capacity", capacity)
    probs = mtf.softmax(router_logits, experts)
    gate, index = mtf.top_1(probs, experts)
    expert_mask = mtf.one_hot(index, experts, dtype=tf.float32) * nonpadding     # [groups, group, experts]
    position = (mtf.cumsum(expert_mask, group) - 1.0) * expert_mask                 # slot in the expert
    limit = float(capacity)
    if capacity_by_length is not None:   # looked up by each group's real length
        lengths = dim("real_length", len(capacity_by_length))
        table = mtf.import_tf_tensor(router_logits.mesh, tf.constant(capacity_by_length, tf.float32),
                                     mtf.Shape([lengths]))
        real_length = mtf.cast(mtf.reduce_sum(nonpadding, reduced_dim=group), tf.int32)
        limit = mtf.reduce_sum(mtf.one_hot(real_length, lengths) * table, reduced_dim=lengths)
    kept = expert_mask * mtf.cast(mtf.less(position, limit), tf.float32)
    dispatch = kept * mtf.one_hot(mtf.cast(position, tf.int32), capacity_dim, dtype=tf.float32)
    tokens = mtf.maximum(mtf.reduce_sum(nonpadding, reduced_dim=group), 1.0)     # [groups]
    density = mtf.reduce_sum(expert_mask, reduced_dim=group) / tokens              # f: share routed to e
    density_proxy = mtf.reduce_sum(probs * nonpadding, reduced_dim=group) / tokens  # P: mean probability
    aux_loss = config.moe_loss_coef * experts.size ** 2 * mtf.reduce_mean(density * density_proxy)
    if config.router_z_loss_coef:
        z = mtf.square(mtf.reduce_logsumexp(router_logits, experts))
        aux_loss += config.router_z_loss_coef * mtf.reduce_sum(z * nonpadding) / mtf.maximum(
            mtf.reduce_sum(nonpadding), 1.0)
    real = mtf.maximum(mtf.reduce_sum(nonpadding), 1.0)
    return Routing(dispatch=dispatch, expert_index=index, combine=dispatch * gate, aux_loss=aux_loss,
                   expert_fraction=mtf.reduce_sum(expert_mask, output_shape=[experts]) / real,
                   dropped_fraction=1.0 - mtf.reduce_sum(kept) / real)


def switch_ffn(x: mtf.Tensor, dims: Dims, config: ModelConfig, nonpadding: mtf.Tensor, groups: int,
               capacity: int, jitter: mtf.Tensor | None, dtype: mtf.VariableDType,
               gather_experts: bool = False, capacity_by_length: list[int] | None = None,
               direct_experts: bool = False) -> tuple[mtf.Tensor, Routing]:
    """Top-1 mixture of ReLU experts plus the dense tanh "softmlp" bypass (spec §3.5).

    ``gather_experts`` (one token per group, experts not split over the mesh: a generation step)
    fetches each token's routed expert instead of running every expert's capacity slots, which
    would read all experts' weights for one token. ``direct_experts`` (one device) multiplies each
    kept token by its own expert only (``_DirectExperts``) instead of every capacity slot through the
    one-hot dispatch/combine products. The result is the same.
    """
    batch, length = x.shape.dims[:2]
    group = dim("group", batch.size * length.size // groups)
    grouped_shape = [dim("batch", groups), group]
    xg = mtf.reshape(x, grouped_shape + [dims.d_model])
    router_input = mtf.cast(xg, tf.float32)
    if jitter is not None:
        router_input *= mtf.reshape(jitter, grouped_shape + [dims.d_model])
    w_gate = variable(x.mesh, "switch_gating/kernel", [dims.d_model, dims.experts],
                      fan_in_truncated_normal(dims.d_model.size), dtype)
    router_logits = mtf.einsum([router_input, mtf.cast(w_gate, tf.float32)],
                               mtf.Shape(grouped_shape + [dims.experts]))
    routing = route(router_logits, mtf.reshape(nonpadding, grouped_shape), dims, capacity, config,
                    capacity_by_length)

    w_i = variable(x.mesh, "wi/kernel", [dims.experts, dims.d_model, dims.expert_hidden],
                   fan_in_truncated_normal(dims.d_model.size), dtype)
    w_o = variable(x.mesh, "wo/kernel", [dims.experts, dims.expert_hidden, dims.d_model],
                   fan_in_truncated_normal(dims.expert_hidden.size), dtype)
    if gather_experts:
        hidden = mtf.relu(mtf.einsum([xg, embed(w_i, routing.expert_index)],
                                     mtf.Shape(grouped_shape + [dims.expert_hidden])))
        expert_out = mtf.einsum([hidden, embed(w_o, routing.expert_index)], mtf.Shape(grouped_shape + [dims.d_model]))
        moe = expert_out * routing.token_gate(x.dtype)
    elif direct_experts:
        expert_out = _DirectExperts(xg, w_i, w_o, routing).outputs[0]
        moe = expert_out * routing.token_gate(x.dtype)
    else:
        slots = [dims.experts, grouped_shape[0], routing.dispatch.shape.dims[-1]]
        expert_in = mtf.einsum([xg, mtf.cast(routing.dispatch, x.dtype)], mtf.Shape(slots + [dims.d_model]))
        hidden = mtf.relu(mtf.einsum([expert_in, w_i], mtf.Shape(slots + [dims.expert_hidden])))
        expert_out = mtf.einsum([hidden, w_o], mtf.Shape(slots + [dims.d_model]))
        moe = mtf.einsum([expert_out, mtf.cast(routing.combine, x.dtype)], mtf.Shape(grouped_shape + [dims.d_model]))

    w_soft = variable(x.mesh, "softmlp/kernel", [dims.d_model, dims.d_model_out], _normal(0.01), dtype)
    bypass = mtf.tanh(mtf.einsum([x, w_soft], mtf.Shape([batch, length, dims.d_model_out])))
    return mtf.reshape(moe, x.shape) + mtf.rename_dimension(bypass, "d_model_out", "d_model"), routing


def ext_ffn(x: mtf.Tensor, dims: Dims, dtype: mtf.VariableDType) -> mtf.Tensor:
    """Dense FFN of the extra layers: swish(x W1 + b1) W2 + b2 (scopes ``p1``, ``p2``)."""
    batch, length = x.shape.dims[:2]
    w1 = variable(x.mesh, "p1/kernel", [dims.d_model, dims.ext_hidden], _normal(0.02), dtype)
    b1 = variable(x.mesh, "p1/bias", [dims.ext_hidden], tf.zeros_initializer(), dtype)
    w2 = variable(x.mesh, "p2/kernel", [dims.ext_hidden, dims.d_model], _normal(0.02), dtype)
    b2 = variable(x.mesh, "p2/bias", [dims.d_model], tf.zeros_initializer(), dtype)
    h = swish(mtf.einsum([x, w1], mtf.Shape([batch, length, dims.ext_hidden])) + b1)
    return mtf.einsum([h, w2], x.shape) + b2


def spout_pasts(spout: mtf.Tensor, dims: Dims, num_layers: int, dtype) -> list[tuple[mtf.Tensor, mtf.Tensor]]:
    """The spout MLP (scope ``pasts``): 8 tanh layers, then one projection to a key and a value per
    layer and head, used directly as a one-slot past (spec §3.7). The tanh layers start at std
    1/sqrt(S), not the original's 0.01: eight layers at 0.01 scale the input by (0.01·sqrt(S))^8, about
    1e-13 for S = 8, so the spout's gradients vanish below Adam's epsilon and it never learns."""
    batch = spout.shape.dims[0]
    h = mtf.cast(spout, tf.float32)
    with tf.variable_scope("pasts"):
        for k in range(8):
            w = variable(h.mesh, f"mlp{k}/kernel", [dims.spout, dims.spout_out],
                         fan_in_truncated_normal(dims.spout.size), dtype)
            h = mtf.rename_dimension(mtf.tanh(mtf.einsum([h, mtf.cast(w, tf.float32)],
                                                         mtf.Shape([batch, dims.spout_out]))), "spout_out", "spout")
        w_out = variable(h.mesh, "out/kernel", [dims.spout, dims.pasts_out], _normal(0.01), dtype)
        out = mtf.einsum([h, mtf.cast(w_out, tf.float32)], mtf.Shape([batch, dims.pasts_out]))
    layers, kv, one = dim("layers", num_layers), dim("kv", 2), dim("memory", 1)
    out = mtf.reshape(out, [batch, layers, kv, dims.heads, one, dims.d_kv])

    def pick(t: mtf.Tensor, d: mtf.Dimension, i: int) -> mtf.Tensor:
        return mtf.reshape(mtf.slice(t, i, 1, d.name), t.shape - d)

    return [tuple(pick(pick(out, layers, layer), kv, i) for i in range(2)) for layer in range(num_layers)]


# ---------------------------------------------------------------------------------------------------
# The whole network.
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cache:
    """Keys and values of earlier tokens, for generation one token at a time.

    ``index`` gives the token index of every memory slot: -1 for the spout, and for a slot that must
    not be seen (not written yet, or padding) an index larger than any query's.
    """

    keys: list[mtf.Tensor]     # per layer [batch, heads, memory, d_kv]
    values: list[mtf.Tensor]
    index: mtf.Tensor          # [batch, memory] int32
    spout_slot: bool           # the spout occupies a slot, so token positions are shifted by one


@dataclasses.dataclass
class Inputs:
    """One batch, as Mesh TensorFlow tensors."""

    tokens: mtf.Tensor                  # [batch, length] int32
    prefix: mtf.Tensor                  # [batch] int32: n_b, the index of the segmenter (0 = plain LM)
    nonpadding: mtf.Tensor              # [batch, length] float32: 0 at padding (takes no expert capacity)
    spout: mtf.Tensor | None = None     # [batch, spout] float32
    query_index: mtf.Tensor | None = None   # [batch, length] token indices of the inputs; default 0..T-1
    cache: Cache | None = None          # earlier tokens' keys and values (then no spout: it is in the cache)


def forward(mesh: mtf.Mesh, config: ModelConfig, inputs: Inputs, *, training: bool = False,
            batch_split: int = 1, experts_split: bool = True, jitter_seed: tf.Tensor | None = None,
            activation_dtype=tf.float32, direct_layers: int = 0, direct_experts: bool = False) -> Outputs:
    """The network from token ids to logits (spec §3).

    ``batch_split`` is the size of the mesh axis that carries ``batch`` (routing groups are a
    multiple of it). In training, tokens are routed in groups of ``expert_group_size`` across the
    batch, as the original; at inference each sequence is its own group, so a sequence's output does
    not depend on the rest of the batch. ``jitter_seed`` (a stateless-random seed, shape [2]) turns
    on the router-input jitter; the noise is drawn outside the mesh so every layout sees the same.
    ``experts_split`` says whether the layout splits the experts over the mesh (then one-token steps
    cannot fetch a single expert's weights and run every expert instead). ``direct_layers``: the
    first layers run as one op by ``modeling.inference`` (one device only, float32; see
    ``_DirectLayers``). ``direct_experts`` (one device only): the experts multiply
    kept tokens only (``switch_ffn``).
    """
    dims = Dims(config)
    dtype = mtf.VariableDType(tf.float32, tf.float32, activation_dtype)
    batch, length = inputs.tokens.shape.dims
    capacity_by_length = None
    if training:
        groups, capacity = training_routing(config, batch.size, length.size, batch_split)
        group_size = batch.size * length.size // groups
    else:   # no expert can receive more than the whole group: the same tokens are kept, fewer empty
        groups, group_size = batch.size, length.size   # slots computed (one token per step: 1 slot)
        capacity_by_length = [expert_capacity(n, config.num_experts, config.capacity_factor_eval,
                                              config.min_expert_capacity) for n in range(group_size + 1)]
        capacity = min(capacity_by_length[-1], group_size)
    gather = group_size == 1 and not training and not experts_split
    has_spout, cache = inputs.spout is not None, inputs.cache
    if has_spout and not config.num_spout:
        raise ValueError("this model has no spout (num_spout is 0)")
    offset = 1 if has_spout or (cache is not None and cache.spout_slot) else 0

    query_index = inputs.query_index if inputs.query_index is not None else mtf.range(mesh, length, tf.int32)
    memory_index = mtf.rename_dimension(query_index, "length", "memory")
    if cache is not None:
        memory_index = mtf.concat([cache.index, memory_index], "memory")
    elif has_spout:
        memory_index = mtf.concat([mtf.constant(mesh, -1, mtf.Shape([dim("memory", 1)]), tf.int32),
                                   memory_index], "memory")
    mask = AttentionMask(query_index, memory_index, inputs.prefix)
    positions = query_index + offset   # with a spout, token positions start at 1

    with tf.variable_scope("model"):
        wte = variable(mesh, "wte", [dims.vocab, dims.d_model], _normal(0.02), dtype)
        wpe = variable(mesh, "wpe", [dims.positions, dims.d_model], _normal(0.01), dtype)
        x = embed(wte, inputs.tokens) + embed(wpe, positions)
        x = mtf.cast(x, activation_dtype)
    if cache is not None:
        pasts = list(zip(cache.keys, cache.values))
    elif has_spout:
        pasts = spout_pasts(inputs.spout, dims, config.num_layers, dtype)
    else:
        pasts = [None] * config.num_layers

    hidden, presents, fractions, dropped, jitters = [], [], [], [], []
    aux_loss = mtf.constant(mesh, 0.0, dtype=tf.float32)
    with tf.variable_scope("model"):
        for layer in range(config.num_layers):
            if layer == config.num_switch_layers:  # the extra position embedding enters the first extra layer
                ete = variable(mesh, "ete", [dims.positions, dims.d_model], tf.zeros_initializer(), dtype)
                x += mtf.cast(embed(ete, positions), activation_dtype)
            with tf.variable_scope(f"att{layer}"):
                a, present = attention(x, dims, mask, pasts[layer], dtype)
            with tf.variable_scope(f"an{layer}"):
                x += layer_norm(a, dims.d_model, config.layer_norm_epsilon, dtype)
            if layer < config.num_switch_layers:
                jitter = None
                if training and jitter_seed is not None and config.router_jitter:
                    jitter = _jitter(mesh, [batch, length, dims.d_model], config.router_jitter,
                                     jitter_seed, layer)
                jitters.append(jitter)
                with tf.variable_scope(f"moe{layer}"):
                    f, routing = switch_ffn(x, dims, config, inputs.nonpadding, groups, capacity, jitter, dtype,
                                            gather_experts=gather, capacity_by_length=capacity_by_length,
                                            direct_experts=direct_experts)
                aux_loss += routing.aux_loss
                fractions.append(routing.expert_fraction)
                dropped.append(routing.dropped_fraction)
            else:
                with tf.variable_scope(f"mlp{layer}"):
                    f = ext_ffn(x, dims, dtype)
            with tf.variable_scope(f"ln{layer}"):
                x += layer_norm(f, dims.d_model, config.layer_norm_epsilon, dtype)
            hidden.append(x)
            presents.append(present)
            if layer + 1 == direct_layers:
                direct = _DirectLayers(config, inputs, direct_layers, pasts[:direct_layers] if has_spout else None,
                                       jitters, (groups, capacity), [x, *hidden, aux_loss, *fractions, *dropped,
                                                                     *(t for pair in presents for t in pair)])
                x, hidden, aux_loss, fractions, dropped, presents = direct.results()
        logits = output_head(x, wte, dims, dtype)
    return Outputs(logits, hidden, aux_loss, presents, fractions, dropped,
                   pasts if has_spout and cache is None else None)


class _DirectLayers(mtf.Operation):
    """The network's first layers computed by ``modeling.inference`` in plain TensorFlow on one device.

    Fine-tuning runs its frozen base this way: the inference network multiplies each token by its own
    expert only (no capacity slots, no one-hot dispatch), about twice as fast as the lowered layers on
    a CPU. The numbers are the same (training-time routing groups, capacity and jitter; tested against
    the mesh model and the numpy reference). ``forward`` still builds the mesh layers, which create the
    variables, and passes their outputs here as templates; nothing reads them, so they never run.
    Gradients flow to the spout's keys and values only (``_DirectGradient``).
    """

    def __init__(self, config: ModelConfig, inputs: Inputs, count: int, pasts: list | None, jitters: list,
                 routing: tuple[int, int], templates: list[mtf.Tensor]):
        mesh = inputs.tokens.mesh
        self._weights = sorted((v.name, v.outputs[0]) for v in mesh.graph.all_variables
                               if v.name.startswith("model/"))   # the frozen ones: no later layer exists yet
        self._pasts = [t for pair in pasts for t in pair] if pasts else []
        self._jitters = [j for j in jitters if j is not None]
        self._config, self._routing, self._count = config, routing, count
        super().__init__([inputs.tokens, inputs.prefix, inputs.nonpadding, *self._pasts, *self._jitters,
                          *(t for _, t in self._weights)], name="direct_layers")
        self._outputs = [mtf.Tensor(self, t.shape, t.dtype) for t in templates]
        self._splittable_dims, self._unsplittable_dims = self._initialize_splittable_and_unsplittable_dims(
            "unsplittable")

    def results(self) -> tuple:
        """x, hidden, aux_loss, expert fractions, dropped fractions, presents: as ``forward`` keeps them."""
        n, switch = self._count, min(self._count, self._config.num_switch_layers)
        x, *rest = self.outputs
        hidden, (aux, *rest) = rest[:n], rest[n:]
        fractions, dropped, kv = rest[:switch], rest[switch:2 * switch], rest[2 * switch:]
        return x, hidden, aux, fractions, dropped, [tuple(kv[2 * i:2 * i + 2]) for i in range(n)]

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        if mesh_impl.size != 1:
            raise ValueError("direct layers run on one device only")
        tokens, prefix, nonpadding, *rest = (lowering.tensors[t].to_laid_out_tensor().all_slices[0]
                                             for t in self.inputs)
        pasts, rest = rest[:len(self._pasts)], rest[len(self._pasts):]
        jitters, weights = rest[:len(self._jitters)], rest[len(self._jitters):]
        c, (batch, length) = self._config, tokens.shape.as_list()
        w = inference.Weights(dict(zip((name for name, _ in self._weights), weights)))
        mask, positions = inference.prefix_lm_inputs(tokens, prefix, bool(pasts))
        routing = inference.TrainingRouting(*self._routing, [tf.reshape(j, [-1, c.num_hidden]) for j in jitters]
                                            if jitters else None)
        with tf.get_default_graph().gradient_override_map({"MatMul": "StreamedWeightMatMul"}):
            net = inference.layers(inference.embed(w, tokens, positions), w, c, mask, positions,
                                   [tuple(pasts[2 * i:2 * i + 2]) for i in range(self._count)] if pasts
                                   else [None] * self._count, nonpadding, self._count, routing)
        rows = [tf.reshape(t, [batch, length, c.num_hidden]) for t in (net.x, *net.hidden)]
        values = [*rows, net.aux_loss, *net.expert_fraction, *net.dropped_fraction,
                  *(t for pair in zip(net.keys, net.values) for t in pair)]
        for output, value in zip(self.outputs, values):
            lowering.set_tensor_lowering(output, mesh_impl.LaidOutTensor([value]))

    def gradient(self, grad_ys):
        grads = iter(_DirectGradient(self, grad_ys, 3, len(self._pasts)).outputs)
        return [next(grads) if 3 <= i < 3 + len(self._pasts) else None for i in range(len(self.inputs))]


class _DirectExperts(mtf.Operation):
    """ReLU(x W_i^e) W_o^e of each kept token's expert e (0 for a dropped token), in plain TensorFlow
    on one device (``inference.kept_experts``).

    The capacity-slot einsums multiply every slot, empty or not: 25 % more rows than tokens when the
    routing is even, up to twice as many while it is not (an untrained model drops a third of its
    tokens). This multiplies the kept tokens only, as the port does; the numbers are the same."""

    def __init__(self, x: mtf.Tensor, w_i: mtf.Tensor, w_o: mtf.Tensor, routing: Routing):
        kept = mtf.reduce_sum(routing.dispatch, output_shape=routing.expert_index.shape)
        super().__init__([x, w_i, w_o, routing.expert_index, kept], name="direct_experts")
        self._outputs = [mtf.Tensor(self, x.shape, x.dtype)]
        self._splittable_dims, self._unsplittable_dims = self._initialize_splittable_and_unsplittable_dims(
            "unsplittable")

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        if mesh_impl.size != 1:
            raise ValueError("direct experts run on one device only")
        x, w_i, w_o, expert, kept = (lowering.tensors[t].to_laid_out_tensor().all_slices[0] for t in self.inputs)
        with tf.get_default_graph().gradient_override_map({"MatMul": "StreamedWeightMatMul"}):
            out = inference.kept_experts(tf.reshape(x, [-1, x.shape[-1]]), tf.reshape(expert, [-1]),
                                         tf.reshape(kept > 0, [-1]), w_i, w_o)
        lowering.set_tensor_lowering(self.outputs[0], mesh_impl.LaidOutTensor([tf.reshape(out, x.shape)]))

    def gradient(self, grad_ys):
        return [*_DirectGradient(self, grad_ys, 0, 3).outputs, None, None]


@tf.RegisterGradient("StreamedWeightMatMul")
def _streamed_weight_matmul_gradient(op: tf.Operation, grad: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The gradient of a plain x·W whose dx reads all of W for few rows (an expert's tokens): dx as
    a batched product of one matrix, which oneDNN runs with its matmul primitive instead of the
    sgemm of MatMul, and a wide W (d × d_ff) as (W·dyᵀ)ᵀ, a tall one as dy·Wᵀ. At 8-32 rows this
    reads a 2.8B expert 5-35 % faster than the best MatMul form; at 256 rows (attention) 25 % faster."""
    if op.get_attr("transpose_a") or op.get_attr("transpose_b"):
        raise NotImplementedError("the direct layers multiply by their weights without transposes")
    x, w = op.inputs
    if w.shape[0] < w.shape[1]:
        dx = tf.transpose(tf.matmul(w[None], grad[None], transpose_b=True)[0])
    else:
        dx = tf.matmul(grad[None], w[None], transpose_b=True)[0]
    return dx, tf.matmul(x, grad, transpose_a=True)


class _DirectGradient(mtf.Operation):
    """``tf.gradients`` of a one-device op's outputs with respect to its inputs ``first`` to
    ``first + count`` (mtf's generic gradient wants a gradient for every output and differentiates
    every input, frozen weights included)."""

    def __init__(self, forward: mtf.Operation, grad_ys: list, first: int, count: int):
        self._pairs = [(y, g) for y, g in zip(forward.outputs, grad_ys) if g is not None]
        self._wanted = forward.inputs[first:first + count]
        super().__init__([*self._wanted, *(y for y, _ in self._pairs), *(g for _, g in self._pairs)],
                         name="direct_gradient")
        self._outputs = [mtf.Tensor(self, t.shape, t.dtype) for t in self._wanted]

    def lower(self, lowering):
        def one(t: mtf.Tensor) -> tf.Tensor:
            return lowering.tensors[t].to_laid_out_tensor().all_slices[0]

        grads = tf.gradients([one(y) for y, _ in self._pairs], [one(t) for t in self._wanted],
                             grad_ys=[one(g) for _, g in self._pairs],
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
        for output, grad in zip(self.outputs, grads):
            lowering.set_tensor_lowering(output, lowering.mesh_impl(self).LaidOutTensor([grad]))


def output_head(x: mtf.Tensor, wte: mtf.Tensor, dims: Dims, dtype) -> mtf.Tensor:
    """swish(x W_d + b_d) · wteᵀ + wob, in float32 (``dense/kernel``, ``dense_1/bias``, tied ``wte``)."""
    batch, length = x.shape.dims[:2]
    w_d = variable(x.mesh, "dense/kernel", [dims.d_model, dims.d_model_out], _normal(0.02), dtype)
    b_d = variable(x.mesh, "dense_1/bias", [dims.d_model_out], tf.zeros_initializer(), dtype)
    wob = variable(x.mesh, "wob", [dims.vocab], tf.zeros_initializer(), dtype)
    x32 = mtf.cast(x, tf.float32)
    u = swish(mtf.einsum([x32, mtf.cast(w_d, tf.float32)], mtf.Shape([batch, length, dims.d_model_out]))
              + mtf.cast(b_d, tf.float32))
    u = mtf.rename_dimension(u, "d_model_out", "d_model")
    return mtf.einsum([u, mtf.cast(wte, tf.float32)], mtf.Shape([batch, length, dims.vocab])) + mtf.cast(wob, tf.float32)


def _jitter(mesh: mtf.Mesh, dims: list[mtf.Dimension], amount: float, seed: tf.Tensor, layer: int) -> mtf.Tensor:
    """Multiplicative router noise U(1 - amount, 1 + amount), the same on every mesh layout."""
    noise = tf.random.stateless_uniform([d.size for d in dims], seed=seed + [0, 1 + layer],
                                        minval=1.0 - amount, maxval=1.0 + amount)
    return mtf.import_tf_tensor(mesh, noise, mtf.Shape(dims))
