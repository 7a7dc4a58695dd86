"""The Mesh TensorFlow base: import shims, mesh strings, multi-device equality and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from modeling.mesh import MeshError, make_mesh, parse_layout, parse_mesh_shape
from modeling.mtf_compat import PlacementMeshImpl, einsum_as_matmul, mtf, tf
from tiny_mtf import train_tiny

MULTI = "batch:2;model:2"


def test_estimator_shim_has_what_mesh_tf_uses():
    assert tf.estimator.SessionRunHook is tf.train.SessionRunHook
    assert tf.estimator.CheckpointSaverListener is tf.train.CheckpointSaverListener
    assert tf.estimator.ModeKeys.TRAIN == "train"
    assert issubclass(mtf.MtfRestoreHook, tf.train.SessionRunHook)


@pytest.mark.parametrize("equation, a_shape, b_shape, as_matmul", [
    ("abc,cdef->abdef", [4, 6, 5], [5, 3, 4, 2], True),     # attention's qkv projection
    ("abcde,fcde->abf", [2, 3, 4, 5, 6], [7, 4, 5, 6], True),  # its input gradient (adjoint b)
    ("abcde,abf->fcde", [2, 3, 4, 5, 6], [2, 3, 7], True),  # its weight gradient (output swapped)
    ("abc,dc->abd", [2, 3, 4], [7, 4], True),               # the tied output layer
    ("abc,abd->cd", [2, 3, 7], [2, 3, 4], True),            # its weight gradient (adjoint a)
    ("abcd,ade->abce", [3, 2, 4, 5], [3, 5, 6], True),      # experts, batched over dim a
    ("abcd,aed->abce", [3, 2, 4, 6], [3, 5, 6], True),
    ("abcd,abce->aed", [3, 2, 4, 6], [3, 2, 4, 5], True),   # an expert's weight gradient
    ("ab,cd->abcd", [2, 3], [4, 5], True),                  # nothing contracted
    ("ab,ab->", [3, 4], [3, 4], True),                      # nothing left
    ("abcd,aced->acbe", [2, 6, 4, 3], [2, 4, 6, 3], False),  # batch dims not leading: tf.einsum
    ("abc,abde->daec", [2, 3, 4], [2, 3, 5, 6], False),
    ("abc,ac->b", [2, 3, 4], [2, 4], False),                # a dim summed in one operand only
])
def test_einsum_as_matmul_matches_numpy(equation, a_shape, b_shape, as_matmul):
    """The mesh's einsum lowering against numpy's einsum in float64 (tolerance: float32 rounding)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape).astype(np.float32), rng.standard_normal(b_shape).astype(np.float32)
    with tf.Graph().as_default(), tf.Session() as session:
        product = einsum_as_matmul(equation, tf.constant(a), tf.constant(b))
        assert (product is not None) == as_matmul
        lowered = session.run(PlacementMeshImpl(mtf.Shape([]), [], [""]).einsum(equation, tf.constant(a), tf.constant(b)))
    np.testing.assert_allclose(lowered, np.einsum(equation, a.astype(np.float64), b.astype(np.float64)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text, expected", [
    ("", [("batch", 1), ("model", 1)]),
    ("1x1", [("batch", 1), ("model", 1)]),
    ("2x4", [("batch", 2), ("model", 4)]),
    ("batch:2;model:2", [("batch", 2), ("model", 2)]),
    (" rows:4 ; cols:2 ", [("rows", 4), ("cols", 2)]),
])
def test_parse_mesh_shape(text, expected):
    assert [(d.name, d.size) for d in parse_mesh_shape(text).dims] == expected


@pytest.mark.parametrize("text", ["batch", "batch:0", "batch:x", "batch:2;batch:2", "2x", "9b:2"])
def test_bad_mesh_shape_is_a_clear_error(text):
    with pytest.raises(MeshError, match="mesh_shape"):
        parse_mesh_shape(text)


def test_layout_must_name_mesh_axes():
    shape = parse_mesh_shape("batch:2;model:2")
    rules = parse_layout("batch:batch;heads:model;experts:model", shape)
    assert rules.tensor_dimension_to_mesh_axis(mtf.Dimension("heads", 4), shape) == 1
    with pytest.raises(MeshError, match="'rows'"):
        parse_layout("batch:rows", shape)
    with pytest.raises(MeshError, match="layout"):
        parse_layout("batch", shape)


def test_make_mesh_uses_logical_cpu_devices():
    setup = make_mesh(MULTI)
    assert isinstance(setup.mesh_impl, PlacementMeshImpl)
    assert setup.mesh_impl.devices == [f"/device:CPU:{i}" for i in range(4)]
    assert setup.session_config.device_count["CPU"] == 4
    assert not setup.one_device and make_mesh("").one_device   # the one-device fast paths


def test_multi_device_training_matches_one_device():
    single, multi = train_tiny("1x1", steps=6), train_tiny(MULTI, steps=6)
    np.testing.assert_allclose(multi.losses, single.losses, rtol=1e-5)
    assert single.losses[-1] < single.losses[0]  # it really trains
    # Weights: Adam divides by sqrt(v) + 1e-6, so for a weight whose gradient is ~0 a rounding-level
    # difference in the gradient (the meshes sum in different orders) moves it by up to ~lr * 1e-3.
    for name, value in single.weights.items():
        np.testing.assert_allclose(multi.weights[name], value, rtol=1e-5, atol=1e-4, err_msg=name)


def test_repeated_multi_device_runs_are_bitwise_identical():
    """Without the read-once fix, a few percent of runs differ (benchmarks/read_race_demo.py)."""
    first = train_tiny(MULTI, steps=8).losses
    for _ in range(9):
        assert train_tiny(MULTI, steps=8).losses == first


def test_checkpoint_from_one_device_restores_on_multi_device(tmp_path):
    saved = train_tiny("1x1", steps=3, save_to=str(tmp_path / "model.ckpt"))
    restored = train_tiny(MULTI, steps=0, restore_from=saved.checkpoint_path)
    assert saved.weights.keys() == restored.weights.keys()
    for name, value in saved.weights.items():
        np.testing.assert_array_equal(restored.weights[name], value, err_msg=name)
