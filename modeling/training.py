"""Training GPTSAN: records in, Adam (or Adafactor) updates out, on any mesh (spec §9, §10).

The graph holds the whole step: read a batch (the tf.data iterator's position is saved in every
checkpoint), run the network, take the loss (LM loss with the output z-loss, plus the Switch
load-balancing loss), clip, update. Everything random is a stateless function of (seed, step), so
a run restarted from a checkpoint repeats exactly what the killed run would have done.
"""

from __future__ import annotations

import dataclasses
import math

from modeling import model as network
from modeling.config import ModelConfig
from modeling.mesh import MeshSetup
from modeling.mtf_compat import SimdMeshImpl, mtf, slice_variables, tf

ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8
LOSS_SCALE_START, LOSS_SCALE_GROWTH_INTERVAL = 2.0 ** 15, 2000
DECAYS = ("cosine", "linear", "inverse_sqrt", "constant")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to train; the command-line flags after defaults are applied."""

    input_files: list[str]
    batch_size: int = 16
    max_steps: int = 100_000
    learning_rate: float = 1e-4
    warmup_steps: int = 1000
    decay: str = "cosine"             # after warm-up, down to final_learning_rate at max_steps
    final_learning_rate: float = 0.1  # as a fraction of learning_rate
    optimizer: str = "adam"
    weight_decay: float = 0.01
    clip_gradients: float = 1.0       # global norm; 0 = off
    spout_vector: str = "none"
    precision: str = "float32"        # float32, bfloat16, float16 (dynamic loss scaling)
    seed: int = 0
    frozen: frozenset[str] = frozenset()   # variable names that get no gradient and no slots


def decays_weight(name: str) -> bool:
    """Weight decay applies to matrices and embeddings, not to LayerNorm gains/biases or biases (D13)."""
    return not name.endswith(("/g", "/b", "/bias", "/wob"))


def learning_rate(step: tf.Tensor, s: Settings) -> tf.Tensor:
    """Linear warm-up to ``learning_rate``, then a decay that really happens (D12)."""
    step = tf.cast(step, tf.float32)
    warmup = float(max(s.warmup_steps, 1))
    span = float(max(s.max_steps - s.warmup_steps, 1))
    progress = tf.clip_by_value((step - warmup) / span, 0.0, 1.0)
    floor = s.final_learning_rate
    after = {
        "cosine": floor + (1.0 - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress)),
        "linear": 1.0 - (1.0 - floor) * progress,
        "inverse_sqrt": tf.sqrt(warmup / tf.maximum(step, warmup)),
        "constant": tf.constant(1.0),
    }[s.decay]
    return s.learning_rate * tf.where(step < warmup, (step + 1.0) / warmup, after)


def record_length(path: str) -> int:
    """Tokens per record (the length of ``x``) in a TFRecord file, read from its first record; 0 if empty."""
    for raw in tf.io.tf_record_iterator(path):
        return len(tf.train.Example.FromString(raw).features.feature["x"].int64_list.value)
    return 0


def read_batches(files: list[str], batch_size: int, repeat: bool) -> tf.data.Dataset:
    """Records in file order (shuffling happens when records are written), as int32 tensors. They may be
    shorter than the model's num_contexts: a short record uses the first positions."""
    from modeling.records import parse_record  # noqa: PLC0415

    length = record_length(files[0])

    def parse(serialized):
        return {k: tf.cast(v, tf.int32) for k, v in parse_record(serialized, length).items()}

    dataset = tf.data.TFRecordDataset(files).map(parse)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch_size, drop_remainder=True)


def spout_inputs(mode: str, record_ids: tf.Tensor, num_spout: int, seed: tf.Tensor) -> tf.Tensor | None:
    """The spout vector of each example (spec §15.4); ``seed`` is [2] int64 (run seed, step)."""
    if mode == "none":
        return None
    batch = record_ids.shape[0]
    if mode == "uniform":
        return tf.random.stateless_uniform([batch, num_spout], seed=seed)
    if mode == "stateless_uniform":   # fixed per record: seeded by its id
        return tf.map_fn(lambda i: tf.random.stateless_uniform([num_spout], seed=tf.stack([tf.cast(i, tf.int64),
                                                                                            seed[0]])),
                         record_ids, fn_output_signature=tf.float32)
    if mode == "onehot":
        return tf.one_hot(record_ids % num_spout, num_spout)
    half = num_spout // 2
    return tf.concat([tf.one_hot(record_ids % half, half),
                      tf.random.stateless_uniform([batch, num_spout - half], seed=seed)], axis=1)


def import_batch(mesh: mtf.Mesh, batch: dict[str, tf.Tensor], config: ModelConfig, s: Settings,
                 seed: tf.Tensor) -> tuple[network.Inputs, mtf.Tensor]:
    """A batch of records as network inputs and targets. With a spout, records lose their last token:
    the spout takes position 0 and positions are never clipped (D14); records shorter than num_contexts
    keep theirs. Padding is <|nottoken|>."""
    spout = spout_inputs(s.spout_vector, batch["i"][:, 0], config.num_spout, seed)
    if spout is not None:
        batch = {k: v[:, :config.num_contexts - 1] if k in ("x", "y") else v for k, v in batch.items()}
    b, t = mtf.Dimension("batch", s.batch_size), mtf.Dimension("length", batch["x"].shape[1])
    nonpadding = tf.cast(tf.not_equal(batch["x"], config.num_vocabulary - 4), tf.float32)
    inputs = network.Inputs(
        tokens=mtf.import_tf_tensor(mesh, batch["x"], mtf.Shape([b, t])),
        prefix=mtf.import_tf_tensor(mesh, batch["num_input"][:, 0], mtf.Shape([b])),
        nonpadding=mtf.import_tf_tensor(mesh, nonpadding, mtf.Shape([b, t])),
        spout=None if spout is None else mtf.import_tf_tensor(mesh, spout, mtf.Shape([b, network.Dims(config).spout])))
    return inputs, mtf.import_tf_tensor(mesh, batch["y"], mtf.Shape([b, t]))


def class_separation(vectors: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """How far apart the spout puts different classes: the mean distance between the keys/values
    (``vectors`` [B, F]) of two examples of different ``classes``, over their mean norm. Near 0 the
    spout tells the model nothing about the class; NaN when the batch holds one class."""
    distances = tf.norm(vectors[:, None] - vectors[None], axis=-1)
    different = tf.cast(tf.not_equal(classes[:, None], classes[None]), tf.float32)
    mean_distance = tf.reduce_sum(distances * different) / tf.reduce_sum(different)
    return mean_distance / tf.reduce_mean(tf.norm(vectors, axis=-1))


def lm_loss(logits: mtf.Tensor, targets: mtf.Tensor, z_loss: float, fused: bool) -> mtf.Tensor:
    """Mean over targeted positions of -log p(y) + z_loss * (log Z)^2 (spec §9); y = -1 is ignored."""
    weight = mtf.cast(mtf.greater_equal(targets, 0), logits.dtype)
    per_token = token_losses(logits, targets, z_loss, fused)
    return mtf.reduce_sum(per_token * weight) / (mtf.reduce_sum(weight) + 1e-5)


def token_losses(logits: mtf.Tensor, targets: mtf.Tensor, z_loss: float, fused: bool) -> mtf.Tensor:
    """-log p(y) + z_loss * (log Z)^2 at every position; an ignored one (y < 0) gets a finite value for
    the caller to weight by 0. ``fused`` (the layout leaves the vocabulary whole): ``fused_token_losses``
    on each slice."""
    if fused:
        return mtf.slicewise(lambda l, y: fused_token_losses(l, y, z_loss), [logits, targets],
                             output_shape=targets.shape, output_dtype=logits.dtype, splittable_dims=targets.shape.dims)
    vocab = logits.shape.dims[-1]
    log_z = mtf.reduce_logsumexp(logits, vocab)
    target_logit = mtf.reduce_sum(logits * mtf.one_hot(targets, vocab, dtype=logits.dtype), reduced_dim=vocab)
    return log_z - target_logit + z_loss * mtf.square(log_z)


def fused_token_losses(logits: tf.Tensor, targets: tf.Tensor, z_loss: float) -> tf.Tensor:
    """``token_losses`` of tf tensors [..., V] in two fused XLA passes over the logits: forward (log Z
    and the target's logit) and backward (softmax·(1 + 2·z_loss·log Z) − onehot(y), times the incoming
    gradient). The mtf ops make about seven and write a one-hot and a broadcast gradient of the
    logits' size: 2.6x slower at [8, 256, 36000]."""
    labels = tf.maximum(targets, 0)

    @tf.custom_gradient
    def losses(x: tf.Tensor):
        with tf.xla.experimental.jit_scope():
            log_z = tf.reduce_logsumexp(x, -1)
            target_logit = tf.gather(x, labels[..., None], batch_dims=labels.shape.rank)[..., 0]
            value = log_z - target_logit + z_loss * tf.square(log_z)

        def gradient(dy: tf.Tensor) -> tf.Tensor:
            with tf.xla.experimental.jit_scope():
                return (tf.exp(x - log_z[..., None]) * (dy * (1.0 + 2.0 * z_loss * log_z))[..., None]
                        - tf.one_hot(labels, x.shape[-1], dtype=x.dtype) * dy[..., None])
        return value, gradient

    return losses(logits)


def select(condition: mtf.Tensor, if_true: mtf.Tensor, if_false: mtf.Tensor) -> mtf.Tensor:
    """``if_true`` where the scalar ``condition`` holds, else ``if_false``; unlike ``mtf.where``
    (a multiply) a NaN in the branch not taken does not leak through."""
    return mtf.slicewise(lambda c, a, b: tf.where_v2(c, a, b), [condition, if_true, if_false],
                         output_shape=if_true.shape, output_dtype=if_true.dtype,
                         splittable_dims=if_true.shape.dims)


def adam_update(variables: list[mtf.Variable], grads: list[mtf.Tensor], lr: mtf.Tensor, s: Settings,
                clip_scale: mtf.Tensor, finite: mtf.Tensor, fused: bool = True) -> list[mtf.Operation]:
    """AdamW as the original (no bias correction; spec §10.1), decoupled weight decay only where
    ``decays_weight``; slots ``<name>/adam_m``, ``<name>/adam_v`` as in the original checkpoints.

    Updates are float32 and applied to the float32 slices, so bfloat16 or float16 activations never
    round the weights. A step with a non-finite gradient (``finite`` = 0) leaves every variable and
    slot unchanged. ``fused``: TensorFlow's Adam kernel on each slice (``_AdamW``); otherwise mesh-tf
    elementwise ops, which a TPU's XLA fuses by itself."""
    ops = []
    for var, grad in zip(variables, grads):
        with tf.variable_scope(var.name):
            m = mtf.get_variable(var.mesh, "adam_m", var.shape, initializer=tf.zeros_initializer(), trainable=False)
            v = mtf.get_variable(var.mesh, "adam_v", var.shape, initializer=tf.zeros_initializer(), trainable=False)
        decay = s.weight_decay if decays_weight(var.name) else 0.0
        if fused:
            ops.append(_AdamW([var, m.operation, v.operation], grad, lr, clip_scale, finite, decay))
        else:
            ops += _adamw_elementwise(var, m, v, grad * clip_scale, lr, finite, decay)
    return ops


def _adamw_elementwise(var: mtf.Variable, m: mtf.Tensor, v: mtf.Tensor, grad: mtf.Tensor, lr: mtf.Tensor,
                       finite: mtf.Tensor, weight_decay: float) -> list[mtf.Operation]:
    new_m = m * ADAM_BETA1 + grad * (1.0 - ADAM_BETA1)
    new_v = v * ADAM_BETA2 + mtf.square(grad) * (1.0 - ADAM_BETA2)
    step = new_m / (mtf.sqrt(new_v) + ADAM_EPSILON)
    if weight_decay:
        step += mtf.cast(var.outputs[0], tf.float32) * weight_decay
    return [mtf.assign_sub(var, select(finite, step * lr, mtf.zeros_like(step))),
            *(mtf.assign(slot.operation, select(finite, new, slot)) for slot, new in ((m, new_m), (v, new_v)))]


class _AdamW(mtf.Operation):
    """One AdamW step of a variable and its slots, applied to every slice in place (``apply_adamw``):
    a few passes over memory where the same formula in mesh-tf elementwise ops takes a dozen."""

    def __init__(self, variables: list[mtf.Variable], grad: mtf.Tensor, lr: mtf.Tensor, clip_scale: mtf.Tensor,
                 finite: mtf.Tensor, weight_decay: float):
        super().__init__([grad, lr, clip_scale, finite], grad.mesh, name="adamw")
        self._variables, self._weight_decay = variables, weight_decay
        self._outputs = []

    def lower(self, lowering):
        var, m, v = (lowering.variables[x] for x in self._variables)
        grads, lrs, scales, finites = (lowering.tensors[t].to_laid_out_tensor().all_slices for t in self.inputs)
        moments = zip(slice_variables(m), slice_variables(v))

        def update(_, var_slice: tf.Variable, value: tuple) -> tf.Operation:
            (m_slice, v_slice), grad, lr, scale, finite = value
            return apply_adamw(var_slice, m_slice, v_slice, grad, lr, scale, finite, self._weight_decay)

        lowering.operations[self] = var.assign_to_slices(update, list(zip(moments, grads, lrs, scales, finites)))


def apply_adamw(var: tf.Variable, m: tf.Variable, v: tf.Variable, grad: tf.Tensor, lr: tf.Tensor,
                clip_scale: tf.Tensor, finite: tf.Tensor, weight_decay: float) -> tf.Operation:
    """var = var * (1 - lr * weight_decay) - lr * m' / (sqrt(v') + eps), m' and v' Adam's moments (no
    bias correction: TensorFlow's fused Adam with both beta powers 0; it computes 1 - beta2 in float32, so
    g² weighs 1.3e-5 less than in the formula). Where not ``finite``, the learning rate is 0 and both
    betas 1 and the gradient zeros, which leaves var, m and v exactly as they were; otherwise the
    gradient is ``grad * clip_scale`` (a ``cond``, not a select: one pass over the gradient, not three)."""
    grad = tf.cond(finite, lambda: grad * clip_scale, lambda: tf.zeros_like(grad))
    lr = tf.where(finite, lr, 0.0)
    decay = []
    if weight_decay:   # with the old weights, before Adam's step; as a new value, because an update
        # in place whose operand is the variable's own buffer copies it first (2x the memory passes)
        decay = [tf.raw_ops.AssignVariableOp(resource=var.handle,
                                             value=var.read_value() * (1.0 - lr * weight_decay))]
    with tf.control_dependencies(decay):
        return tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=m.handle, v=v.handle, beta1_power=0.0, beta2_power=0.0, lr=lr,
            beta1=tf.where(finite, ADAM_BETA1, 1.0), beta2=tf.where(finite, ADAM_BETA2, 1.0),
            epsilon=ADAM_EPSILON, grad=grad)


def adafactor_update(variables, grads, lr, clip_scale, finite) -> list[mtf.Operation]:
    """Mesh TensorFlow's Adafactor (factored second moments), with our clipping and overflow skip."""
    optimizer = mtf.optimize.AdafactorOptimizer(learning_rate=lr)
    ops = []
    for var, grad in zip(variables, grads):
        grad = select(finite, grad * clip_scale, mtf.zeros_like(grad))
        ops += optimizer.apply_grad(grad, var)
    return ops


@dataclasses.dataclass
class TrainGraph:
    """Everything the training loop runs."""

    graph: tf.Graph
    train_op: tf.Operation
    global_step: tf.Variable
    metrics: dict[str, tf.Tensor]      # scalars (and per-layer vectors) for logs and TensorBoard
    tokens_per_step: int
    lowering: mtf.Lowering
    saver: tf.train.Saver
    init_op: tf.Operation                  # fresh start; then copy_masters_to_slices
    copy_masters_to_slices: tf.Operation   # after a restore
    copy_slices_to_masters: tf.Operation   # before a save


def frozen_layers(config: ModelConfig, frozen: frozenset[str]) -> int:
    """How many leading layers, with the embeddings, have every weight frozen: on one device these run
    as the inference network (``model._DirectLayers``), about twice as fast as the lowered layers."""
    if not {"model/wte", "model/wpe"} <= frozen:
        return 0
    count = 0
    while count < config.num_layers and set(network.layer_weight_names(config, count)) <= frozen:
        count += 1
    return count


def build(config: ModelConfig, s: Settings, mesh: MeshSetup) -> TrainGraph:
    """The training graph for ``config`` on ``mesh``."""
    activation_dtype = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}[s.precision]
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(s.seed)
        global_step = tf.train.get_or_create_global_step()
        iterator = tf.data.make_one_shot_iterator(
            read_batches(s.input_files, s.batch_size, repeat=True))
        tf.add_to_collection(tf.GraphKeys.SAVEABLE_OBJECTS,
                             tf.data.experimental.make_saveable_from_iterator(iterator))
        seed = tf.stack([tf.constant(s.seed, tf.int64), global_step])
        mesh_graph = mtf.Graph()
        m = mtf.Mesh(mesh_graph, "mesh")
        batch = iterator.get_next()
        inputs, targets = import_batch(m, batch, config, s, seed)
        direct = frozen_layers(config, s.frozen) if mesh.one_device and activation_dtype == tf.float32 else 0
        outputs = network.forward(m, config, inputs, training=True, batch_split=mesh.batch_split,
                                  jitter_seed=seed, activation_dtype=activation_dtype, direct_layers=direct,
                                  direct_experts=mesh.one_device)
        lm = lm_loss(outputs.logits, targets, config.output_z_loss_coef, _vocabulary_whole(mesh, outputs.logits))
        total = lm + outputs.aux_loss

        variables = [v for v in mesh_graph.trainable_variables if v.name not in s.frozen]
        loss_scale = _loss_scale_variable() if s.precision == "float16" else None
        scaled = total * mtf.import_tf_tensor(m, loss_scale, mtf.Shape([])) if loss_scale is not None else total
        grads = [mtf.cast(g, tf.float32) for g in mtf.gradients([scaled], [v.outputs[0] for v in variables])]
        if loss_scale is not None:
            unscale = mtf.import_tf_tensor(m, 1.0 / loss_scale, mtf.Shape([]))
            grads = [g * unscale for g in grads]
        squares = [mtf.reduce_sum(mtf.square(g)) for g in grads]
        grad_norm = mtf.sqrt(mtf.add_n(squares))
        finite = mtf.less(grad_norm, float("inf"))      # False for inf and NaN
        if s.clip_gradients > 0:
            clip_scale = mtf.minimum(s.clip_gradients / mtf.maximum(grad_norm, 1e-12), 1.0)
        else:
            clip_scale = mtf.ones(m, mtf.Shape([]))
        lr = learning_rate(global_step, s)
        lr_mesh = mtf.import_tf_tensor(m, lr, mtf.Shape([]))
        if s.optimizer == "adam":
            fused = not isinstance(mesh.mesh_impl, SimdMeshImpl)   # TPU: XLA fuses the elementwise form
            assignments = adam_update(variables, grads, lr_mesh, s, clip_scale, finite, fused)
        else:
            assignments = adafactor_update(variables, grads, lr_mesh, clip_scale, finite)

        lowering = mtf.Lowering(mesh_graph, {m: mesh.mesh_impl}, autostack=False)
        export = lowering.export_to_tf_tensor
        update = tf.group([lowering.lowered_operation(op) for op in assignments])
        tf_finite = export(finite)
        steps = [update]
        if loss_scale is not None:
            steps.append(_adjust_loss_scale(loss_scale, tf_finite))
        with tf.control_dependencies(steps):
            train_op = tf.assign_add(global_step, 1).op
        metrics = {
            "loss": export(total), "lm_loss": export(lm), "aux_loss": export(outputs.aux_loss),
            "learning_rate": lr, "grad_norm": export(grad_norm), "finite": tf_finite,
            "expert_fraction": tf.stack([export(f) for f in outputs.expert_fraction]) if outputs.expert_fraction
            else tf.zeros([0, config.num_experts]),
            "dropped_fraction": tf.stack([export(d) for d in outputs.dropped_fraction]) if outputs.dropped_fraction
            else tf.zeros([0]),
        }
        if loss_scale is not None:
            metrics["loss_scale"] = tf.identity(loss_scale)
        if s.spout_vector in ("onehot", "half_onehot"):
            spout_kv = tf.concat([tf.reshape(export(t), [s.batch_size, -1]) for pair in outputs.spout_kv for t in pair], 1)
            metrics["spout_separation"] = class_separation(spout_kv, batch["i"][:, 0])
        saver = tf.train.Saver(max_to_keep=None, save_relative_paths=True)  # keeping K is done by the caller
        return TrainGraph(graph, train_op, global_step, metrics, inputs.tokens.shape.size, lowering, saver,
                          tf.global_variables_initializer(), lowering.copy_masters_to_slices(),
                          lowering.copy_slices_to_masters())


def _vocabulary_whole(mesh: MeshSetup, logits: mtf.Tensor) -> bool:
    """Whether the fused loss applies: the layout leaves the vocabulary whole, and not on TPU (where
    XLA fuses the mtf ops anyway)."""
    return (not isinstance(mesh.mesh_impl, SimdMeshImpl)
            and mesh.mesh_impl.tensor_dimension_to_mesh_axis(logits.shape.dims[-1]) is None)


def _loss_scale_variable() -> tf.Variable:
    """Dynamic loss scale for float16 (D22), saved with the checkpoint."""
    return tf.get_variable("loss_scale", initializer=LOSS_SCALE_START, trainable=False)


def _adjust_loss_scale(scale: tf.Variable, finite: tf.Tensor) -> tf.Operation:
    """Halve the scale after an overflowing step (which was skipped); double it every
    LOSS_SCALE_GROWTH_INTERVAL good steps."""
    good = tf.get_variable("loss_scale_good_steps", initializer=0, trainable=False)
    grow = tf.logical_and(finite, tf.equal((good + 1) % LOSS_SCALE_GROWTH_INTERVAL, 0))
    new_scale = tf.where(finite, tf.where(grow, scale * 2.0, scale), tf.maximum(scale * 0.5, 1.0))
    return tf.group(tf.assign(scale, new_scale), tf.assign(good, tf.where(finite, good + 1, 0)))


@dataclasses.dataclass
class Evaluation:
    """Held-out loss and perplexity over up to ``batches`` batches of the eval records."""

    reset: tf.Operation
    sums: dict[str, tf.Tensor]         # summed negative log-likelihood and target count of one batch
    sync: list[tf.Operation]           # training slices -> masters -> this graph's slices
    batches: int

    def run(self, session: tf.Session) -> dict[str, float]:
        for op in self.sync:
            session.run(op)
        session.run(self.reset)
        nll = count = 0.0
        for _ in range(self.batches):
            try:
                out = session.run(self.sums)
            except tf.errors.OutOfRangeError:
                break
            nll, count = nll + float(out["nll"]), count + float(out["count"])
        loss = nll / max(count, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def build_evaluation(config: ModelConfig, s: Settings, mesh: MeshSetup, train: TrainGraph, files: list[str],
                     batches: int) -> Evaluation:
    """A second lowering in the training graph, sharing its variables, that scores ``files``."""
    with train.graph.as_default(), tf.variable_scope("", reuse=True):
        iterator = tf.data.make_initializable_iterator(
            read_batches(files, s.batch_size, repeat=False))
        mesh_graph = mtf.Graph()
        m = mtf.Mesh(mesh_graph, "mesh")
        inputs, targets = import_batch(m, iterator.get_next(), config, s, tf.constant([s.seed, -1], tf.int64))
        outputs = network.forward(m, config, inputs, batch_split=mesh.batch_split, direct_experts=mesh.one_device)
        nll = token_losses(outputs.logits, targets, 0.0, _vocabulary_whole(mesh, outputs.logits))
        weight = mtf.cast(mtf.greater_equal(targets, 0), tf.float32)
        totals = {"nll": mtf.reduce_sum(nll * weight), "count": mtf.reduce_sum(weight)}
        lowering = mtf.Lowering(mesh_graph, {m: mesh.mesh_impl}, autostack=False)
        sums = {name: lowering.export_to_tf_tensor(total) for name, total in totals.items()}
        return Evaluation(iterator.initializer, sums,
                          [train.copy_slices_to_masters, lowering.copy_masters_to_slices()], batches)
