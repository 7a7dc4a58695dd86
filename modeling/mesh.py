"""From ``--mesh_shape`` / ``--layout`` strings to a Mesh TensorFlow implementation and a session.

The same graph runs on one CPU/GPU, several GPUs (PlacementMeshImpl) or a TPU slice (SimdMeshImpl):
only these two strings change. Both use Mesh TensorFlow's syntax::

    --mesh_shape "batch:2;model:2"      --layout "batch:batch;heads:model;experts:model"

``AxB`` is accepted as shorthand for ``batch:A;model:B`` (the original's data x model split), and an
empty mesh shape means one device (``batch:1;model:1``). On a CPU-only machine an N-device mesh runs on N logical CPU
devices of the one CPU, which is how the tests check multi-device layouts.
"""

from __future__ import annotations

import dataclasses
import re

from modeling.cli import DEFAULT_LAYOUT
from modeling.mtf_compat import PlacementMeshImpl, SimdMeshImpl, deterministic_session_config, mtf, tf


class MeshError(ValueError):
    """A --mesh_shape / --layout string that cannot be used; the message says how to fix it."""


def parse_mesh_shape(text: str) -> mtf.Shape:
    """``"batch:2;model:2"``, ``"2x2"`` or ``""`` (one device) as a Mesh TensorFlow shape."""
    text = text.strip() or "1x1"
    shorthand = re.fullmatch(r"(\d+)x(\d+)", text)
    if shorthand:
        text = f"batch:{shorthand[1]};model:{shorthand[2]}"
    dims = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, size = part.partition(":")
        if not re.fullmatch(r"[A-Za-z_]\w*", name.strip()) or not size.strip().isdigit() or int(size) < 1:
            raise MeshError(f"bad --mesh_shape entry {part!r}: write name:size pairs joined by ';', "
                            f"e.g. 'batch:2;model:2'")
        dims.append(mtf.Dimension(name.strip(), int(size)))
    if len({d.name for d in dims}) != len(dims):
        raise MeshError(f"--mesh_shape {text!r} names a mesh axis twice")
    return mtf.Shape(dims)


def parse_layout(text: str, mesh_shape: mtf.Shape) -> mtf.LayoutRules:
    """``"batch:batch;heads:model"`` as layout rules, checked against the mesh axes."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        tensor_dim, _, mesh_dim = (s.strip() for s in part.partition(":"))
        if not tensor_dim or not mesh_dim:
            raise MeshError(f"bad --layout entry {part!r}: write tensor_dim:mesh_axis pairs joined by "
                            f"';', e.g. '{DEFAULT_LAYOUT}'")
        pairs.append((tensor_dim, mesh_dim))
    for tensor_dim, mesh_dim in pairs:
        if mesh_dim not in mesh_shape.dimension_names:
            raise MeshError(f"--layout maps {tensor_dim!r} to mesh axis {mesh_dim!r}, which --mesh_shape "
                            f"does not have (axes: {', '.join(mesh_shape.dimension_names)})")
    return mtf.LayoutRules(pairs)


@dataclasses.dataclass(frozen=True)
class MeshSetup:
    """Everything needed to lower and run a Mesh TensorFlow graph on the chosen devices."""

    shape: mtf.Shape
    layout: mtf.LayoutRules
    mesh_impl: mtf.MeshImpl
    session_config: tf.ConfigProto
    master: str = ""  # session target: "" in process, grpc://… for a TPU

    @property
    def size(self) -> int:
        return self.shape.size

    @property
    def one_device(self) -> bool:
        """One CPU or GPU device: where the plain-TensorFlow fast paths apply (their dynamic shapes,
        e.g. tokens partitioned by expert, do not compile for a TPU core)."""
        return self.size == 1 and not isinstance(self.mesh_impl, SimdMeshImpl)

    @property
    def batch_split(self) -> int:
        """Size of the mesh axis that carries the ``batch`` dimension (1 if none)."""
        axis = self.mesh_impl.tensor_dimension_to_mesh_axis(mtf.Dimension("batch", 0))
        return 1 if axis is None else self.mesh_impl.shape[axis].size


def session_config(num_cpu_devices: int = 1) -> tf.ConfigProto:
    """A session config with ``num_cpu_devices`` logical CPU devices (``/cpu:0`` … ``/cpu:N-1``)."""
    config = tf.ConfigProto(device_count={"CPU": max(1, num_cpu_devices)},
                            allow_soft_placement=False)
    return deterministic_session_config(config)  # run-to-run identical sums, see mtf_compat


def _local_devices(size: int) -> tuple[list[str], tf.ConfigProto]:
    """GPU devices when there are enough, otherwise ``size`` logical CPU devices.

    One device is named "" so that mesh-tf uses the master variables as the slices (no second copy).
    """
    if size == 1:
        return [""], session_config(1)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < size:
            raise MeshError(f"the mesh needs {size} devices but only {len(gpus)} GPUs are visible: "
                            f"use a smaller --mesh_shape")
        return [f"/device:GPU:{i}" for i in range(size)], session_config(1)
    return [f"/device:CPU:{i}" for i in range(size)], session_config(size)


def _tpu_mesh(shape: mtf.Shape, layout: mtf.LayoutRules, tpu: str) -> MeshSetup:
    """SimdMeshImpl over a TPU slice found with a cluster resolver (``--tpu`` name or address)."""
    from tensorflow.python.tpu import device_assignment as tpu_device_assignment  # noqa: PLC0415

    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu)
    master = resolver.master()
    config = deterministic_session_config(tf.ConfigProto(isolate_session_state=True))
    cluster = resolver.cluster_spec()
    if cluster:
        config.cluster_def.CopyFrom(cluster.as_cluster_def())
    with tf.Graph().as_default(), tf.Session(master, config=config) as session:
        topology = tf.tpu.experimental.Topology(serialized=session.run(tf.tpu.initialize_system()))
    assignment = tpu_device_assignment.device_assignment(topology, num_replicas=shape.size)
    mesh_impl = SimdMeshImpl(shape, layout, None, assignment)
    return MeshSetup(shape, layout, mesh_impl, config, master)


def make_mesh(mesh_shape: str = "", layout: str = DEFAULT_LAYOUT, tpu: str = "") -> MeshSetup:
    """The mesh implementation for ``--mesh_shape``/``--layout``, on a TPU when ``tpu`` is given."""
    shape = parse_mesh_shape(mesh_shape)
    rules = parse_layout(layout, shape)
    if tpu:
        return _tpu_mesh(shape, rules, tpu)
    devices, config = _local_devices(shape.size)
    return MeshSetup(shape, rules, PlacementMeshImpl(shape, rules, devices), config)
