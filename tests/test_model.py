"""The Mesh TensorFlow GPTSAN network against an independent float64 numpy reference.

``reference_gptsan.py`` is written from ``shared/spec/gptsan-model.md`` §3 only (with D1 and D18 fixed
as the project decided). Model directories are written by ``model_dirs.write_model_dir`` with plain
TensorFlow variables under the original names, so every test here also loads an original-format
checkpoint.

Tolerance: the model runs in float32, the reference in float64. For each output we require
max|ours − ref| <= 1e-5 · max|ref| over the real (non-padding) positions; the observed ratio is
below 1e-6 (worst cases: logits 7.6e-7, hidden states 5.6e-7, aux loss 2.1e-7), so 1e-5 leaves room
for summation order. Every deliberate model error we tried makes a test here fail (D1 or D18
reintroduced, ete left out, spout key/value swapped, LayerNorm epsilon 1e-3, gate not applied,
capacity + 1, one routing group for the whole batch at inference, eval capacity factor in
training, positions not shifted by the spout).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from model_dirs import TINY, original_shapes, original_weights, write_model_dir
from modeling.cli import UserError
from modeling.mesh import make_mesh
from modeling.runtime import Runtime, open_model_dir
from reference_gptsan import reference_forward, routing_groups

TOL = 1e-5            # relative to max|ref|, see the module docstring
V, T, B = 64, 10, 2   # small vocabulary; T + 1 (spout) <= num_contexts = 24
LENGTHS = [T, 7]      # the second sequence ends in 3 padding positions
PREFIXES = {"none": [0, 0], "partial": [4, 3], "full": LENGTHS}   # full: the whole sequence is prefix
NO_DROP = {"capacity_factor_eval": 100.0}   # c = min(S_g, ⌊S_g·100/E⌋) = S_g: nothing is ever dropped


def model_params(**changes) -> dict:
    return dict(TINY, num_vocabulary=V, **changes)


def inputs(seed: int, spout: bool, batch: int = B):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, V, (batch, T)).astype(np.int32)
    s = rng.rand(batch, TINY["num_spout"]).astype(np.float32) if spout else None
    return tokens, s


def with_new_padding(tokens: np.ndarray, lengths, seed: int) -> np.ndarray:
    """``tokens`` with different random ids at every padding position."""
    out = tokens.copy()
    rng = np.random.RandomState(seed)
    for b, n in enumerate(lengths):
        out[b, n:] = (out[b, n:] + rng.randint(1, V, T - n)) % V
    return out


def real_positions(x: np.ndarray, lengths, time_axis: int) -> np.ndarray:
    """The values at real positions of every sequence, concatenated (x has batch on axis 0)."""
    return np.concatenate([np.take(x[b], np.arange(n), axis=time_axis - 1).ravel() for b, n in enumerate(lengths)])


def relative_error(ours, ref) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def assert_matches_reference(out: dict, ref: dict, lengths) -> dict:
    errors = {"logits": relative_error(real_positions(out["logits"], lengths, 1),
                                       real_positions(ref["logits"], lengths, 1)),
              "hidden": relative_error(real_positions(out["hidden"], lengths, 2),
                                       real_positions(ref["hidden"], lengths, 2)),
              "aux_loss": relative_error(out["aux_loss"], ref["aux_loss"])}
    assert all(e <= TOL for e in errors.values()), errors
    # Routing must be unambiguous for the comparison to mean anything: float32 rounding (~1e-7)
    # cannot flip a top-1 choice whose margin is this large.
    assert ref["margin"] > 1e-5, ref["margin"]
    return errors


class Model:
    """One model directory, its weights, and a Runtime restored from it."""

    def __init__(self, path: str, params: dict, weights: dict, mesh: str = "", batch: int = B,
                 training: bool = False, direct: bool = True):
        self.path, self.params, self.weights = path, params, weights
        if not os.path.exists(os.path.join(path, "parameters.json")):
            write_model_dir(path, params, weights)
        model_dir = open_model_dir(path)
        self.runtime = Runtime(model_dir.config, make_mesh(mesh), direct=direct)
        self.forwards = {spout: self.runtime.forward(batch, T, spout=spout, training=training)
                         for spout in (False, True)}
        self.runtime.restore(model_dir.checkpoint)

    def run(self, tokens, prefix, lengths, spout=None) -> dict:
        return self.runtime.run(self.forwards[spout is not None], ["logits", "hidden", "aux_loss"],
                                tokens, np.array(prefix, np.int32), np.array(lengths, np.int32), spout)

    def reference(self, tokens, prefix, lengths, spout=None, **options) -> dict:
        return reference_forward(self.weights, self.params, tokens, prefix, lengths, spout, **options)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """ext layers -> Model with a capacity that drops nothing."""
    made = {}
    for ext in (0, 2):
        params = model_params(num_ext_layers=ext, **NO_DROP)
        made[ext] = Model(str(tmp_path_factory.mktemp(f"ext{ext}")), params, original_weights(params, seed=ext))
    yield made
    for m in made.values():
        m.runtime.close()


# ---------------------------------------------------------------------------------------------------
# Exactness against the reference.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", list(PREFIXES))
@pytest.mark.parametrize("spout", [False, True], ids=["no_spout", "spout"])
@pytest.mark.parametrize("ext", [0, 2], ids=["ext0", "ext2"])
def test_matches_reference(models, ext, spout, prefix):
    model = models[ext]
    tokens, s = inputs(seed=10 * ext + 2 * spout + len(prefix), spout=spout)
    out = model.run(tokens, PREFIXES[prefix], LENGTHS, s)
    ref = model.reference(tokens, PREFIXES[prefix], LENGTHS, s)
    assert not ref["dropped"].any()           # the capacity really is large enough
    assert_matches_reference(out, ref, LENGTHS)


@pytest.mark.parametrize("spout", [False, True], ids=["no_spout", "spout"])
def test_mesh_inference_path_on_one_device_matches_reference(models, spout):
    """``direct=False`` lowers inference through Mesh TensorFlow on one device too (the path every
    multi-device layout takes); the default single-device path is ``modeling/inference.py``."""
    one = models[2]
    model = Model(one.path, one.params, one.weights, direct=False)
    try:
        tokens, s = inputs(seed=40 + spout, spout=spout)
        out = model.run(tokens, PREFIXES["partial"], LENGTHS, s)
        assert_matches_reference(out, model.reference(tokens, PREFIXES["partial"], LENGTHS, s), LENGTHS)
    finally:
        model.runtime.close()


@pytest.mark.parametrize("ext", [0, 2], ids=["ext0", "ext2"])
def test_padding_does_not_change_real_positions(models, ext):
    model = models[ext]
    tokens, s = inputs(seed=7, spout=True)
    prefix = PREFIXES["partial"]
    out = model.run(tokens, prefix, LENGTHS, s)
    other = model.run(with_new_padding(tokens, LENGTHS, seed=8), prefix, LENGTHS, s)
    for key in ("logits", "hidden"):
        axis = 1 if key == "logits" else 2
        np.testing.assert_allclose(real_positions(other[key], LENGTHS, axis),
                                   real_positions(out[key], LENGTHS, axis), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(other["aux_loss"], out["aux_loss"], rtol=1e-6)
    # And the padded sequence alone, without padding, gives the same real positions: at inference a
    # sequence is its own routing group (D18), so batch composition does not matter either.
    alone = model.reference(tokens[1:, :LENGTHS[1]], prefix[1:], LENGTHS[1:], s[1:])
    assert relative_error(out["logits"][1, :LENGTHS[1]], alone["logits"][0]) <= TOL


def test_original_prefix_off_by_one_is_not_reproduced(models):
    """D1: with a spout, the last prefix token (index n_b − 1) is still seen by the whole prefix.

    Under the original column comparison that token would be causal-only: changing it would leave
    the earlier positions 0 … n_b − 2 untouched. Here they all change; and with prefix n_b − 1 (the
    token then really is causal) they do not.
    """
    model = models[0]
    tokens, s = inputs(seed=3, spout=True)
    n = 4
    changed = tokens.copy()
    changed[:, n - 1] = (changed[:, n - 1] + 1) % V
    a = model.run(tokens, [n, n], [T, T], s)["logits"]
    b = model.run(changed, [n, n], [T, T], s)["logits"]
    assert (np.abs(a - b).max(axis=-1) > 1e-4).all()         # every position sees token n − 1
    a = model.run(tokens, [n - 1, n - 1], [T, T], s)["logits"]
    b = model.run(changed, [n - 1, n - 1], [T, T], s)["logits"]
    np.testing.assert_allclose(a[:, :n - 1], b[:, :n - 1], rtol=1e-6, atol=1e-6)
    assert (np.abs(a[:, n - 1:] - b[:, n - 1:]).max(axis=-1) > 1e-4).all()


# ---------------------------------------------------------------------------------------------------
# Capacity: dropping at inference, and training-mode groups shared by the batch.
# ---------------------------------------------------------------------------------------------------


def test_dropped_tokens_match_reference(tmp_path):
    # c = max(1, min(10, ⌊10 · 0.5 / 4⌋)) = 1 slot per expert per sequence.
    params = model_params(num_ext_layers=0, capacity_factor_eval=0.5, min_expert_capacity=1)
    model = Model(str(tmp_path / "drop"), params, original_weights(params, seed=0))
    try:
        for spout in (False, True):
            tokens, s = inputs(seed=20 + spout, spout=spout)
            prefix = PREFIXES["partial"]
            out = model.run(tokens, prefix, LENGTHS, s)
            ref = model.reference(tokens, prefix, LENGTHS, s)
            assert ref["capacity"] == [1, 1]
            assert ref["dropped"].sum() >= 8, ref["dropped"].sum()   # many real tokens really dropped
            assert not ref["dropped"][:, 1, LENGTHS[1]:].any()        # padding is never "dropped"
            assert_matches_reference(out, ref, LENGTHS)
            # Without dropping the numbers are clearly different, so the test sees the capacity.
            no_drop = reference_forward(model.weights, dict(params, **NO_DROP), tokens, prefix, LENGTHS, s)
            assert relative_error(out["logits"][0], no_drop["logits"][0]) > 1e-2
    finally:
        model.runtime.close()


def test_each_sequence_has_the_capacity_of_its_real_length(tmp_path):
    """At inference a sequence keeps the tokens it would keep alone and unpadded (the original's batch-1
    run), however far a batch pads it: c = min(n, ⌊n·2/4⌋) is 5 for the 10-token sequence and 3 for the
    7-token one (5 if its padding counted). Its first dropped token sits at slot 3, which c = 5 keeps."""
    params = model_params(num_ext_layers=0, capacity_factor_eval=2.0, min_expert_capacity=1)
    model = Model(str(tmp_path / "real"), params, original_weights(params, seed=0))
    try:
        tokens, _ = inputs(seed=0, spout=False)   # 8 of its tokens are dropped
        out = model.run(tokens, PREFIXES["partial"], LENGTHS)
        ref = model.reference(tokens, PREFIXES["partial"], LENGTHS)
        assert ref["capacity"] == [5, 3] and ref["dropped"][:, 1].any()
        assert_matches_reference(out, ref, LENGTHS)
    finally:
        model.runtime.close()


@pytest.mark.parametrize("direct", [True, False], ids=["inference_py", "mesh"])
def test_training_groups_padding_takes_no_capacity(tmp_path, direct):
    """Training mode: both sequences share one routing group of 20 positions (expert_group_size
    32 → G = 1) with c = ⌊20 · 0.6 / 4⌋ = 3 slots per expert. The first sequence is mostly padding,
    which comes before the second sequence's tokens in group order. Under the original (D18) those
    padding positions would take slots from the second sequence; here they take none. Both the
    single-device network (``modeling/inference.py``, which fine-tuning runs the frozen layers on)
    and the mesh model are checked."""
    params = model_params(num_ext_layers=0, expert_group_size=32, capacity_factor_train=0.6,
                          min_expert_capacity=1)
    assert routing_groups(B, T, 32) == 1
    model = Model(str(tmp_path / "train"), params, original_weights(params, seed=0), training=True, direct=direct)
    try:
        lengths, prefix = [3, T], [2, 4]
        tokens, _ = inputs(seed=4, spout=False)
        out = model.run(tokens, prefix, lengths)
        ref = model.reference(tokens, prefix, lengths, training=True)
        assert set(ref["capacity"]) == {3} and ref["dropped"].any()
        assert_matches_reference(out, ref, lengths)
        # The original behaviour (padding routed and counted) drops more of the second sequence
        # and gives clearly different numbers there, so the comparison above would have caught it.
        original = model.reference(tokens, prefix, lengths, training=True, padding_takes_capacity=True)
        assert original["dropped"][:, 1].sum() > ref["dropped"][:, 1].sum()
        assert relative_error(out["logits"][1], original["logits"][1]) > 1e-2
        # Whatever the padding ids (and so their would-be experts), the real positions do not move.
        other = model.run(with_new_padding(tokens, lengths, seed=5), prefix, lengths)
        np.testing.assert_allclose(real_positions(other["logits"], lengths, 1),
                                   real_positions(out["logits"], lengths, 1), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(other["aux_loss"], out["aux_loss"], rtol=1e-6)
    finally:
        model.runtime.close()


@pytest.mark.parametrize("direct", [True, False], ids=["inference_py", "mesh"])
def test_training_groups_that_split_sequences_match_reference(tmp_path, direct):
    """Training mode with expert_group_size 5: G = 4 groups of 5 positions in row-major order, so each
    sequence is split in two groups (the second's last group is mostly padding), c = ⌊5 · 0.8 / 4⌋ = 1
    slot per expert per group: many tokens dropped. With a spout, as fine-tuning runs it."""
    params = model_params(num_ext_layers=2, expert_group_size=5, capacity_factor_train=0.8, min_expert_capacity=1)
    assert routing_groups(B, T, 5) == 4
    model = Model(str(tmp_path / "groups"), params, original_weights(params, seed=3), training=True, direct=direct)
    try:
        for spout in (False, True):
            tokens, s = inputs(seed=30 + spout, spout=spout)
            out = model.run(tokens, PREFIXES["partial"], LENGTHS, s)
            ref = model.reference(tokens, PREFIXES["partial"], LENGTHS, s, training=True)
            assert set(ref["capacity"]) == {1} and ref["dropped"].sum() >= 8, ref["dropped"].sum()
            assert_matches_reference(out, ref, LENGTHS)
    finally:
        model.runtime.close()


# ---------------------------------------------------------------------------------------------------
# Same numbers on any mesh.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mesh", ["batch:1;model:2", "batch:2;model:2"])
def test_same_numbers_on_any_mesh(models, mesh):
    """Heads and experts split over 'model', the batch over 'batch' (logical CPU devices).

    The splits change only the order of float32 sums (e.g. the all-reduce over heads and experts),
    so the results agree to a few ulps of the largest value. Observed max |mesh − one device|:
    logits 2.4e-6 … 3.3e-6 (max |logit| 4.7, i.e. <= 7e-7 relative), hidden states 4.5e-6 … 4.8e-6
    (max |h| 10.6, <= 4.5e-7 relative), aux loss identical; the float32-vs-float64 error of the
    one-device run itself is of the same size (1.8e-6 on logits). We allow 2e-6 relative to the
    largest value, five times tighter than the reference tolerance.
    """
    one = models[2]
    model = Model(one.path, one.params, one.weights, mesh=mesh)
    try:
        tokens, s = inputs(seed=30, spout=True)
        prefix = PREFIXES["partial"]
        expected = one.run(tokens, prefix, LENGTHS, s)
        got = model.run(tokens, prefix, LENGTHS, s)
        for key in ("logits", "hidden", "aux_loss"):
            assert got[key].shape == expected[key].shape
            assert relative_error(got[key], expected[key]) <= 2e-6, (key, relative_error(got[key], expected[key]))
    finally:
        model.runtime.close()


# ---------------------------------------------------------------------------------------------------
# Original checkpoint compatibility.
# ---------------------------------------------------------------------------------------------------


def test_original_directory_loads_with_original_names(models):
    model = models[2]
    assert model.runtime.variable_shapes() == {k: list(v) for k, v in original_shapes(model.params).items()}
    with open(os.path.join(model.path, "parameters.json")) as f:
        assert set(json.load(f)) == {"train_params", "model_params"}


def _restore(path: str) -> None:
    model_dir = open_model_dir(path)
    runtime = Runtime(model_dir.config, make_mesh(""))
    runtime.forward(1, 4)
    try:
        runtime.restore(model_dir.checkpoint)
    finally:
        runtime.close()


def test_wrong_shape_is_named(tmp_path):
    params = model_params()
    weights = original_weights(params)
    weights["model/att1/o/kernel"] = np.zeros((4, 8, 31), np.float32)
    write_model_dir(str(tmp_path), params, weights)
    with pytest.raises(UserError) as error:
        _restore(str(tmp_path))
    message = str(error.value)
    assert "model/att1/o/kernel" in message and "[4, 8, 31]" in message and "[4, 8, 32]" in message


def test_missing_variable_is_named(tmp_path):
    params = model_params()
    weights = original_weights(params)
    del weights["model/moe0/softmlp/kernel"]
    write_model_dir(str(tmp_path), params, weights)
    with pytest.raises(UserError, match="model/moe0/softmlp/kernel"):
        _restore(str(tmp_path))


@pytest.mark.parametrize("change, key", [
    ({"num_header": None}, "num_header"),
    ({"num_hidden": "32"}, "num_hidden"),
    ({"num_experts": 2.5}, "num_experts"),
])
def test_bad_parameters_json_names_the_key(tmp_path, change, key):
    params = {k: v for k, v in model_params(**change).items() if v is not None}
    write_model_dir(str(tmp_path), params, {"model/wob": np.zeros(V, np.float32)})
    with pytest.raises(UserError, match=key):
        open_model_dir(str(tmp_path))
