"""The training step's own operations against numpy written from the spec: the embedding table's
gradient (a segment sum, summed across the devices that split the ids) and the fused AdamW update
(spec §10.1: no bias correction, decoupled weight decay where ``decays_weight``, a non-finite step
changes nothing), fused (CPU/GPU) and elementwise (the TPU form). Each runs on one device and on
two-device layouts that split the tensors involved.

Tolerances: the gradient sums at most a few float32 terms per entry (rtol 1e-6); Adam's fused kernel
orders its float32 operations differently from the formula, which numpy evaluates in float64 (rtol
1e-5, atol 1e-6: a few float32 ulps of weights near 1, 1e-4 of a step), and weighs g² in the second
moment by 1 - beta2 computed in float32, 0.00099998713 instead of 0.001 (v: rtol 3e-5)."""

from __future__ import annotations

import numpy as np
import pytest

from modeling import model as network
from modeling.mesh import make_mesh
from modeling.mtf_compat import mtf, tf
from modeling.config import ModelConfig
from modeling.training import ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON, Settings, adam_update, decays_weight, lm_loss

MESHES = [("", ""), ("batch:2", "batch:batch"), ("model:2", "d_model:model")]
BATCH, LENGTH, VOCAB, D = 4, 6, 11, 8


def _run(mesh_shape: str, layout: str, build, feeds: list[dict], fetch_masters: list[str]) -> list[dict]:
    """Lower ``build(mesh) -> (fetches, ops)`` on the mesh; run it once per feed, reading ``fetch_masters``
    (variable names) after each run through the masters."""
    setup = make_mesh(mesh_shape, layout)
    graph = tf.Graph()
    with graph.as_default():
        mesh_graph = mtf.Graph()
        mesh = mtf.Mesh(mesh_graph, "mesh")
        placeholders, fetches, ops = build(mesh)
        lowering = mtf.Lowering(mesh_graph, {mesh: setup.mesh_impl}, autostack=False)
        outputs = {k: lowering.export_to_tf_tensor(v) for k, v in fetches.items()}
        step = tf.group([lowering.lowered_operation(op) for op in ops])
        masters = {v.op.name: v for v in tf.global_variables()}
        init = tf.global_variables_initializer()
        to_slices, to_masters = lowering.copy_masters_to_slices(), lowering.copy_slices_to_masters()
    results = []
    with tf.Session(graph=graph, config=setup.session_config) as session:
        session.run(init)
        session.run(to_slices)
        for feed in feeds:
            out = session.run({**outputs, "_": step}, {placeholders[k]: v for k, v in feed.items()})
            session.run(to_masters)
            out.update(session.run({name: masters[name] for name in fetch_masters}))
            results.append(out)
    return results


@pytest.mark.parametrize("mesh_shape,layout", MESHES)
def test_embedding_gradient_is_each_rows_summed_incoming_gradient(mesh_shape, layout):
    rng = np.random.RandomState(0)
    ids = rng.randint(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    ids[0, :3] = 5                                   # repeated ids sum; some rows get nothing
    upstream = rng.randn(BATCH, LENGTH, D).astype(np.float32)
    table = rng.randn(VOCAB, D).astype(np.float32)

    def build(mesh):
        batch, length = mtf.Dimension("batch", BATCH), mtf.Dimension("length", LENGTH)
        vocab, d = mtf.Dimension("vocab", VOCAB), mtf.Dimension("d_model", D)
        p = {"ids": tf.placeholder(tf.int32, ids.shape), "up": tf.placeholder(tf.float32, upstream.shape)}
        w = mtf.get_variable(mesh, "table", [vocab, d], initializer=tf.constant_initializer(table))
        looked_up = network.embed(w, mtf.import_tf_tensor(mesh, p["ids"], mtf.Shape([batch, length])))
        loss = mtf.reduce_sum(looked_up * mtf.import_tf_tensor(mesh, p["up"], mtf.Shape([batch, length, d])))
        [grad] = mtf.gradients([loss], [w])
        return p, {"grad": grad, "looked_up": looked_up}, []

    [out] = _run(mesh_shape, layout, build, [{"ids": ids, "up": upstream}], [])
    expected = np.zeros_like(table)
    np.add.at(expected, ids.reshape(-1), upstream.reshape(-1, D))
    np.testing.assert_allclose(out["grad"], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["looked_up"], table[ids])


def _numpy_adamw(w, m, v, g, lr, clip, decay):
    g = g * clip
    m = ADAM_BETA1 * m + (1 - ADAM_BETA1) * g
    v = ADAM_BETA2 * v + (1 - ADAM_BETA2) * g * g
    return w - lr * (m / (np.sqrt(v) + ADAM_EPSILON) + decay * w), m, v


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "elementwise"])
@pytest.mark.parametrize("mesh_shape,layout", MESHES)
def test_adamw_steps_match_the_formula_and_a_non_finite_step_changes_nothing(mesh_shape, layout, fused):
    rng = np.random.RandomState(1)
    names = {"layer/kernel": [BATCH, D], "layer/bias": [D]}   # decayed / not decayed
    initial = {n: rng.randn(*shape).astype(np.float32) for n, shape in names.items()}
    as64 = {n: w.astype(np.float64) for n, w in initial.items()}
    settings = Settings(input_files=[], weight_decay=0.1)

    def build(mesh):
        dims = {BATCH: mtf.Dimension("batch", BATCH), D: mtf.Dimension("d_model", D)}
        p = {"lr": tf.placeholder(tf.float32, []), "clip": tf.placeholder(tf.float32, []),
             "finite": tf.placeholder(tf.bool, [])}
        variables, grads = [], []
        for name, shape in names.items():
            mtf_shape = mtf.Shape([dims[s] for s in shape])
            variables.append(mtf.get_variable(mesh, name, mtf_shape, initializer=tf.constant_initializer(initial[name]))
                             .operation)
            p[name] = tf.placeholder(tf.float32, shape)
            grads.append(mtf.import_tf_tensor(mesh, p[name], mtf_shape))
        scalar = {k: mtf.import_tf_tensor(mesh, p[k], mtf.Shape([])) for k in ("lr", "clip", "finite")}
        ops = adam_update(variables, grads, scalar["lr"], settings, scalar["clip"], scalar["finite"], fused)
        return p, {}, ops

    feeds, expected = [], []
    state = {n: (as64[n], np.zeros_like(as64[n]), np.zeros_like(as64[n])) for n in names}
    for step, finite in enumerate([True, True, False, True]):
        grads = {n: rng.randn(*shape).astype(np.float32) * 10 ** step for n, shape in names.items()}
        if not finite:
            grads["layer/kernel"][0, 0] = np.nan
        lr, clip = 1e-2 * (step + 1), 0.5
        feeds.append({"lr": lr, "clip": clip, "finite": finite, **grads})
        if finite:
            state = {n: _numpy_adamw(*state[n], grads[n], lr, clip, settings.weight_decay * decays_weight(n))
                     for n in names}
        expected.append(state)
    slots = [f"{n}{suffix}" for n in names for suffix in ("", "/adam_m", "/adam_v")]
    results = _run(mesh_shape, layout, build, feeds, slots)
    for step, (out, want) in enumerate(zip(results, expected)):
        for name in names:
            for suffix, value, rtol in zip(("", "/adam_m", "/adam_v"), want[name], (1e-5, 1e-5, 3e-5)):
                np.testing.assert_allclose(out[name + suffix], value, rtol=rtol, atol=1e-6,
                                           err_msg=f"{name}{suffix} after step {step}")
    for name in slots:   # the skipped step: bitwise unchanged
        np.testing.assert_array_equal(results[2][name], results[1][name])


def test_direct_experts_and_their_gradients_match_numpy():
    """``switch_ffn``'s one-device expert layer (``model._DirectExperts``: only kept tokens multiplied,
    in plain TensorFlow) and its gradients for the input and both kernels, against numpy in float64:
    top-1 routing in group order up to 2 slots per expert, padding routed nowhere, one expert that no
    token chooses. Tolerance rtol 1e-5 / atol 1e-6 (float32 sums of at most 32 products)."""
    groups, group, experts, hidden, capacity = 2, 6, 4, 32, 2
    config = ModelConfig(num_contexts=group, num_switch_layers=1, num_hidden=D, num_header=2,
                         num_experts=experts, expert_hidden=hidden)
    rng = np.random.RandomState(1)
    x = rng.randn(groups, group, D).astype(np.float32)
    w_i = rng.randn(experts, D, hidden).astype(np.float32)
    w_o = rng.randn(experts, hidden, D).astype(np.float32)
    upstream = rng.randn(groups, group, D).astype(np.float32)
    choice = np.array([[0, 0, 0, 1, 2, 0], [2, 2, 1, 2, 0, 1]])   # expert 3 unused; 0 and 2 overflow
    logits = (np.eye(experts)[choice] * 3 + rng.rand(groups, group, experts)).astype(np.float32)
    nonpadding = np.ones((groups, group), np.float32)
    nonpadding[1, 4:] = 0

    def build(mesh):
        dims = network.Dims(config)
        g_dim, s_dim = mtf.Dimension("batch", groups), mtf.Dimension("group", group)
        ph = {k: tf.placeholder(tf.float32, v.shape) for k, v in
              {"x": x, "w_i": w_i, "w_o": w_o, "upstream": upstream, "logits": logits, "nonpadding": nonpadding}.items()}
        shapes = {"x": [g_dim, s_dim, dims.d_model], "w_i": [dims.experts, dims.d_model, dims.expert_hidden],
                  "w_o": [dims.experts, dims.expert_hidden, dims.d_model], "upstream": [g_dim, s_dim, dims.d_model],
                  "logits": [g_dim, s_dim, dims.experts], "nonpadding": [g_dim, s_dim]}
        t = {k: mtf.import_tf_tensor(mesh, ph[k], mtf.Shape(shapes[k])) for k in ph}
        routing = network.route(t["logits"], t["nonpadding"], dims, capacity, config)
        out = network._DirectExperts(t["x"], t["w_i"], t["w_o"], routing).outputs[0]
        loss = mtf.reduce_sum(out * t["upstream"])
        grads = mtf.gradients([loss], [t["x"], t["w_i"], t["w_o"]])
        return ph, {"out": out, **dict(zip(["dx", "dw_i", "dw_o"], grads))}, []

    got = _run("", "", build, [dict(x=x, w_i=w_i, w_o=w_o, upstream=upstream, logits=logits,
                                    nonpadding=nonpadding)], [])[0]
    want = {"out": np.zeros(x.shape), "dx": np.zeros(x.shape), "dw_i": np.zeros(w_i.shape), "dw_o": np.zeros(w_o.shape)}
    kept = 0
    for g in range(groups):
        taken = np.zeros(experts, int)
        for s in range(group):
            e = choice[g, s]
            if not nonpadding[g, s] or taken[e] == capacity:
                continue
            taken[e] += 1
            kept += 1
            pre = x[g, s].astype(np.float64) @ w_i[e]
            h = np.maximum(pre, 0)
            want["out"][g, s] = h @ w_o[e]
            dh = (w_o[e] @ upstream[g, s]) * (pre > 0)
            want["dw_o"][e] += np.outer(h, upstream[g, s])
            want["dw_i"][e] += np.outer(x[g, s], dh)
            want["dx"][g, s] = w_i[e] @ dh
    assert kept == 7   # 3 tokens over capacity and 2 padding positions dropped
    assert not want["dw_i"][3].any() and got["dw_i"].shape == w_i.shape
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "mtf"])
@pytest.mark.parametrize("mesh_shape,layout", MESHES[:2])
def test_lm_loss_and_its_gradient_match_numpy(mesh_shape, layout, fused):
    """The training loss (spec §9: mean over targeted positions of -log p(y) + z (log Z)^2, y = -1
    ignored) and its gradient for the logits, in both forms, against numpy in float64. Logits up to
    ±30 (a softmax that overflows unless shifted); tolerance rtol 1e-5 / atol 1e-7."""
    z = 0.01
    rng = np.random.RandomState(2)
    logits = (rng.randn(BATCH, LENGTH, VOCAB) * 10).astype(np.float32)
    targets = rng.randint(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    targets[1, 2:] = -1

    def build(mesh):
        b, t, v = (mtf.Dimension(n, s) for n, s in (("batch", BATCH), ("length", LENGTH), ("vocab", VOCAB)))
        ph = {"logits": tf.placeholder(tf.float32, logits.shape), "targets": tf.placeholder(tf.int32, targets.shape)}
        x = mtf.import_tf_tensor(mesh, ph["logits"], mtf.Shape([b, t, v]))
        loss = lm_loss(x, mtf.import_tf_tensor(mesh, ph["targets"], mtf.Shape([b, t])), z, fused)
        return ph, {"loss": loss, "grad": mtf.gradients([loss], [x])[0]}, []

    got = _run(mesh_shape, layout, build, [dict(logits=logits, targets=targets)], [])[0]
    x = logits.astype(np.float64)
    log_z = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    weight = (targets >= 0).astype(np.float64)
    onehot = np.eye(VOCAB)[np.maximum(targets, 0)] * weight[..., None]
    target_logit = (x * onehot).sum(-1)
    denominator = weight.sum() + 1e-5
    loss = ((log_z - target_logit + z * log_z ** 2) * weight).sum() / denominator
    softmax = np.exp(x - log_z[..., None])
    grad = (softmax * (1 + 2 * z * log_z[..., None]) * weight[..., None] - onehot) / denominator
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(got["grad"], grad, rtol=1e-5, atol=1e-7)
