"""A tiny Mesh TensorFlow network (attention + feed-forward, Adam) to exercise the mesh machinery.

Shared by ``tests/test_mesh.py`` and ``benchmarks/read_race_demo.py`` (which runs it without the
read-once fix to show that the race is real).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modeling import checkpoint
from modeling.mesh import make_mesh
from modeling.mtf_compat import mtf, tf

LAYOUT = "batch:batch;heads:model;d_ff:model"
BATCH, LENGTH, D_MODEL, HEADS, D_KV, D_FF, VOCAB = 4, 8, 16, 4, 4, 32, 32


@dataclasses.dataclass
class TinyRun:
    losses: list[float]
    weights: dict[str, np.ndarray]  # values seen through the mesh (slices combined), by variable name
    checkpoint_path: str | None = None


def _batches(steps: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, VOCAB, size=(steps, BATCH, LENGTH + 1)).astype(np.int32)


def _network(mesh: mtf.Mesh, tokens: tf.Tensor) -> mtf.Tensor:
    """Embedding, one causal self-attention, one ReLU feed-forward, tied output; returns the loss."""
    batch, length = mtf.Dimension("batch", BATCH), mtf.Dimension("length", LENGTH)
    memory = mtf.Dimension("memory", LENGTH)
    d_model, heads = mtf.Dimension("d_model", D_MODEL), mtf.Dimension("heads", HEADS)
    d_kv, d_ff, vocab = mtf.Dimension("d_kv", D_KV), mtf.Dimension("d_ff", D_FF), mtf.Dimension("vocab", VOCAB)
    init = tf.random_normal_initializer(stddev=0.3, seed=1)

    ids = mtf.import_tf_tensor(mesh, tokens, mtf.Shape([batch, mtf.Dimension("length", LENGTH + 1)]))
    inputs = mtf.slice(ids, 0, LENGTH, "length")
    targets = mtf.slice(ids, 1, LENGTH, "length")
    wte = mtf.get_variable(mesh, "wte", [vocab, d_model], initializer=init)
    x = mtf.gather(wte, inputs, vocab)

    wq, wk, wv = (mtf.get_variable(mesh, n, [d_model, heads, d_kv], initializer=init) for n in "qkv")
    wo = mtf.get_variable(mesh, "o", [heads, d_kv, d_model], initializer=init)
    q = mtf.einsum([x, wq], mtf.Shape([batch, heads, length, d_kv]))
    k = mtf.rename_dimension(mtf.einsum([x, wk], mtf.Shape([batch, heads, length, d_kv])), "length", "memory")
    v = mtf.rename_dimension(mtf.einsum([x, wv], mtf.Shape([batch, heads, length, d_kv])), "length", "memory")
    scores = mtf.einsum([q, k], mtf.Shape([batch, heads, length, memory])) * (D_KV ** -0.5)
    future = mtf.cast(mtf.greater(mtf.range(mesh, memory, tf.int32), mtf.range(mesh, length, tf.int32)),
                      tf.float32)
    weights = mtf.softmax(scores - 1e4 * future, memory)
    x += mtf.einsum([mtf.einsum([weights, v], mtf.Shape([batch, heads, length, d_kv])), wo],
                    mtf.Shape([batch, length, d_model]))

    wi = mtf.get_variable(mesh, "wi", [d_model, d_ff], initializer=init)
    wf = mtf.get_variable(mesh, "wf", [d_ff, d_model], initializer=init)
    x += mtf.einsum([mtf.relu(mtf.einsum([x, wi], mtf.Shape([batch, length, d_ff]))), wf],
                    mtf.Shape([batch, length, d_model]))

    logits = mtf.einsum([x, wte], mtf.Shape([batch, length, vocab]))
    loss = mtf.layers.softmax_cross_entropy_with_logits(logits, mtf.one_hot(targets, vocab), vocab)
    return mtf.reduce_mean(loss)


def train_tiny(mesh_shape: str, steps: int, seed: int = 0, restore_from: str | None = None,
               save_to: str | None = None) -> TinyRun:
    """Train ``steps`` Adam steps on ``mesh_shape``; optionally restore first and save at the end."""
    setup = make_mesh(mesh_shape, LAYOUT)
    data = _batches(steps, seed)
    with tf.Graph().as_default():
        tf.set_random_seed(seed)
        tokens = tf.placeholder(tf.int32, [BATCH, LENGTH + 1])
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        loss = _network(mesh, tokens)
        variables = graph.trainable_variables
        grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
        update_ops = mtf.optimize.AdamWeightDecayOptimizer(learning_rate=0.01).apply_grads(grads, variables)
        lowering = mtf.Lowering(graph, {mesh: setup.mesh_impl})
        tf_loss = lowering.export_to_tf_tensor(loss)
        tf_update = tf.group([lowering.lowered_operation(op) for op in update_ops])
        tf_weights = {v.name: lowering.export_to_tf_tensor(v.outputs[0]) for v in variables}
        saver = checkpoint.make_saver()
        with tf.Session(config=setup.session_config) as session:
            session.run(tf.global_variables_initializer())
            session.run(lowering.copy_masters_to_slices())
            if restore_from:
                checkpoint.restore(session, saver, restore_from, lowering.copy_masters_to_slices())
            losses = [float(session.run([tf_loss, tf_update], {tokens: batch})[0]) for batch in data]
            path = checkpoint.save(session, saver, save_to, lowering.copy_slices_to_masters()) if save_to else None
            return TinyRun(losses, session.run(tf_weights), path)
