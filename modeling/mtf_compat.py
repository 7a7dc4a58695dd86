"""The one door through which the project imports TensorFlow and Mesh TensorFlow.

mesh-tensorflow 0.1.21 (its last release, 2021) does not import on current TensorFlow, and its
PlacementMeshImpl has a read/write race. This module fixes both, minimally, before anything else
touches the library:

1. TF >= 2.13 moved ``register_tensor_conversion_function`` from ``tensorflow.python.framework.ops``
   to ``tensor_conversion_registry``; ``mesh_tensorflow.tpu_variables`` still calls the old name.
2. TF >= 2.16 dropped ``tf.compat.v1.estimator``; mesh-tf only uses ``SessionRunHook``,
   ``CheckpointSaverListener`` and ``ModeKeys`` from it. The first two live on in
   ``tf.compat.v1.train``; ``ModeKeys`` is three strings.
3. ``PlacementMeshImpl.LaidOutVariable`` hands the slice *variables* to every consumer, so each
   consumer issues its own read, unordered against the optimizer's assignments in the same
   ``session.run``: gradients are sometimes computed from already-updated weights. Our
   ``PlacementMeshImpl`` reads every slice once per step, shares that read with all consumers, and
   makes every assignment wait for it. Resource variables copy on write, so the shared read keeps
   the step's old value.
4. Grappler's arithmetic optimizer (its ``AddOpsRewrite`` stage) fuses trees of ``Add`` (the
   placement allreduce, residual adds, gradient accumulation, across Recvs from the other logical
   devices) into multi-input ``AddN`` nodes, and TensorFlow's CPU ``AddN`` kernel reuses the first
   input whose buffer nobody else holds *and moves it to the front of the sum*. Whether a Recv'd or
   shared input is still held elsewhere depends on thread scheduling, so the summation order, and
   thus the last bits of activations and gradients, changed from run to run (replicated slices such
   as ``wte`` even drifted apart across devices). ``deterministic_session_config`` turns that
   optimizer off; mesh-tf itself never emits ``AddN``, so every sum is then a two-input ``AddV2``,
   which is commutative and bitwise reproducible whichever buffer it reuses.

Graphs are built under an explicit ``tf.Graph()`` and run with ``tf.compat.v1.Session``; v2
behaviour stays on (ref variables would make the race unfixable).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import types


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow without its C++ start-up lines, unless TF_CPP_MIN_LOG_LEVEL asks for them (0 or 1).

    Current TensorFlow prints oneDNN/CUDA notices through absl before TF_CPP_MIN_LOG_LEVEL is read,
    so the process's stderr is muted for the duration of the import (a Python error still shows:
    its traceback is printed after stderr is restored). The level we set is inherited by child
    processes, which therefore stay quiet too.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") in ("0", "1"):
        import tensorflow  # noqa: F401, PLC0415
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401, PLC0415
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()

import tensorflow.compat.v1 as tf  # noqa: E402
from tensorflow.core.protobuf import rewriter_config_pb2 as _rewriter_config  # noqa: E402
from tensorflow.python.framework import ops as _tf_ops  # noqa: E402
from tensorflow.python.framework import tensor_conversion_registry as _registry  # noqa: E402

__all__ = ["tf", "mtf", "PlacementMeshImpl", "SimdMeshImpl", "deterministic_session_config", "slice_variables"]


def _install_import_shims() -> None:
    """Give current TensorFlow the two names mesh-tf 0.1.21 expects."""
    if not hasattr(_tf_ops, "register_tensor_conversion_function"):
        _tf_ops.register_tensor_conversion_function = _registry.register_tensor_conversion_function
    if "tensorflow.compat.v1.estimator" not in sys.modules and not hasattr(tf, "estimator"):
        estimator = types.ModuleType("tensorflow.compat.v1.estimator")
        estimator.SessionRunHook = tf.train.SessionRunHook
        estimator.CheckpointSaverListener = tf.train.CheckpointSaverListener
        estimator.ModeKeys = types.SimpleNamespace(TRAIN="train", EVAL="eval", PREDICT="infer")
        sys.modules[estimator.__name__] = estimator
        tf.estimator = estimator


_install_import_shims()

import mesh_tensorflow as mtf  # noqa: E402
from mesh_tensorflow import placement_mesh_impl as _placement  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # mesh-tf logs every lowered op at INFO
tf.logging.set_verbosity(tf.logging.ERROR)


class _ReadOnceLaidOutVariable(_placement.PlacementMeshImpl.LaidOutVariable):
    """Slice variables read once per step; assignments ordered after that read."""

    _slice_reads: tuple = ()  # empty while the base constructor builds copy_master_to_slices

    def __init__(self, variable, mesh_impl):
        super().__init__(variable, mesh_impl)  # self._laid_out_tensor keeps the slice variables
        reads = []
        for device, slice_variable in zip(mesh_impl.devices, self._laid_out_tensor.all_slices):
            with tf.device(device):
                reads.append(slice_variable.read_value())
        self._slice_reads = tuple(reads)

    @property
    def laid_out_tensor(self):
        """What every consumer sees: the one shared read of each slice."""
        return self._mesh_impl.LaidOutTensor(list(self._slice_reads))

    def assign_to_slices(self, assign_fn, values):
        with tf.control_dependencies(self._slice_reads):
            return tf.group(mtf.parallel(
                self._mesh_impl.devices, assign_fn, [self._variable] * len(values),
                self._laid_out_tensor.all_slices, values))


def slice_variables(laid_out_variable) -> list:
    """The TensorFlow variables holding a lowered variable's slices, one per device (for updates in
    place; consumers read them through ``laid_out_tensor``)."""
    return laid_out_variable._laid_out_tensor.all_slices  # noqa: SLF001  (mesh-tf keeps them there)


def einsum_as_matmul(equation: str, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor | None:
    """``tf.einsum(equation, a, b)`` as one matmul of reshaped operands, or None if that would need a
    transpose.

    TensorFlow's CPU einsum transposes an operand whose contracted dimensions lead (the weight
    gradients x·dy summed over batch and length) before multiplying; a matmul with its adjoint flag
    reads it as it lies: a bench-width expert's weight gradient in 57-61 against 95-143 ms. Cases:
    each operand is [shared batch dims, then its own dims and the contracted ones as two blocks, in
    either order], and the output is [batch dims, then the two operands' own blocks in either order]."""
    inputs, out = equation.split("->")
    x, y = inputs.split(",")
    batch = "".join(c for c in out if c in x and c in y)
    k = "".join(c for c in x if c in y and c not in out)
    m, n = "".join(c for c in x if c not in y), "".join(c for c in y if c not in x)
    lead = len(batch)
    if not (x[:lead] == y[:lead] == out[:lead] == batch and x[lead:] in (m + k, k + m)
            and y[lead:] in (k + n, n + k) and out[lead:] in (m + n, n + m)):
        return None
    size = dict(zip(x, a.shape.as_list())) | dict(zip(y, b.shape.as_list()))

    def matrix(t: tf.Tensor, rows: str, cols: str) -> tf.Tensor:
        return tf.reshape(t, [size[c] for c in batch] + [math.prod(size[c] for c in rows),
                                                         math.prod(size[c] for c in cols)])

    a_km, b_nk = x[lead:] != m + k, y[lead:] != k + n   # stored [k, m] / [n, k]: read with the adjoint flag
    a2 = matrix(a, k, m) if a_km else matrix(a, m, k)
    b2 = matrix(b, n, k) if b_nk else matrix(b, k, n)
    if out[lead:] == m + n:
        product = tf.matmul(a2, b2, adjoint_a=a_km, adjoint_b=b_nk)
    else:   # [n, m] = bᵀ·aᵀ
        product = tf.matmul(b2, a2, adjoint_a=not b_nk, adjoint_b=not a_km)
    return tf.reshape(product, [size[c] for c in out])


class PlacementMeshImpl(_placement.PlacementMeshImpl):
    """mesh-tf's CPU/GPU mesh with the read-once fix (see the module docstring); its two-operand
    einsums are matmuls where no transpose is needed (``einsum_as_matmul``)."""

    LaidOutVariable = _ReadOnceLaidOutVariable

    def einsum(self, equation: str, *slices: tf.Tensor) -> tf.Tensor:
        product = einsum_as_matmul(equation, *slices) if len(slices) == 2 else None
        return tf.einsum(equation, *slices) if product is None else product


SimdMeshImpl = mtf.simd_mesh_impl.SimdMeshImpl


def deterministic_session_config(config: tf.ConfigProto) -> tf.ConfigProto:
    """Turn off Grappler's arithmetic optimizer in ``config`` (in place) and return it.

    Its ``AddOpsRewrite`` builds multi-input ``AddN`` nodes, whose CPU kernel sums in an order that
    depends on which input buffer happens to be reusable at run time (point 4 of the module
    docstring). Every other Grappler pass stays on.
    """
    config.graph_options.rewrite_options.arithmetic_optimization = _rewriter_config.RewriterConfig.OFF
    return config
