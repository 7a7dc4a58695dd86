"""Saving and restoring Mesh TensorFlow weights as plain TF checkpoints.

Checkpoints hold only the *master* variables, under their Mesh TensorFlow names (``model/wte``,
``model/att0/qkv/kernel``, …), so a checkpoint written on one mesh restores on any other and on the
original GPTSAN release. The per-device slice variables are copies made after each restore and
folded back before each save.
"""

from __future__ import annotations

from modeling.cli import UserError
from modeling.mtf_compat import tf


def make_saver(max_to_keep: int = 5) -> tf.train.Saver:
    """A saver over the master variables of the current graph (slice variables are not global)."""
    return tf.train.Saver(tf.global_variables(), max_to_keep=max_to_keep, sharded=False,
                          save_relative_paths=True)


def save(session: tf.Session, saver: tf.train.Saver, prefix: str, to_masters: tf.Operation,
         global_step: int | None = None) -> str:
    """Fold the slices into the masters (``to_masters``: a lowering's ``copy_slices_to_masters()``,
    built once), then write the checkpoint; returns its path.

    TF writes the data file, then the index, then the ``checkpoint`` state file atomically, so a
    checkpoint cut short never becomes the latest one.
    """
    session.run(to_masters)
    return saver.save(session, prefix, global_step=global_step, write_meta_graph=False)


READ_ERRORS = (tf.errors.OpError, IndexError)   # what TF raises for a truncated or damaged data file


def unreadable(path: str, error: Exception) -> UserError:
    """The one-line error for a checkpoint whose data cannot be read (interrupted copy, full disk)."""
    lines = [line.strip() for line in getattr(error, "message", str(error)).splitlines() if line.strip()]
    after_node = [line for previous, line in zip(lines, lines[1:]) if previous.startswith("Node:")]
    # TF's reason follows its "Node: …" line; other errors say it first
    reason = after_node[-1] if after_node else lines[0] if lines else type(error).__name__
    return UserError(f"checkpoint {path} cannot be read ({reason[:160]}): its data file is truncated or damaged; "
                     "copy or download it again")


def restore(session: tf.Session, saver: tf.train.Saver, path: str, to_slices) -> None:
    """Load the masters from ``path`` and lay them out over the mesh (``to_slices``: the lowerings'
    ``copy_masters_to_slices()`` ops)."""
    try:
        saver.restore(session, path)
    except READ_ERRORS as error:
        raise unreadable(path, error) from None
    session.run(to_slices)


def write_checkpoint(prefix: str, tensors) -> None:
    """Save ``(name, value)`` pairs as one TF checkpoint at ``prefix``, one variable at a time, so
    that writing a model needs memory for its largest variable only."""
    parts = []
    for index, (name, value) in enumerate(tensors):
        part = f"{prefix}.part-{index:05d}"
        tf.raw_ops.SaveV2(prefix=part, tensor_names=[name], shape_and_slices=[""], tensors=[value])
        parts.append(part)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=prefix, delete_old_dirs=False)


def is_model_variable(name: str) -> bool:
    """Network weights (``model/…``, ``pasts/…``) as opposed to optimizer slots and loop state."""
    return name.startswith(("model/", "pasts/")) and not name.endswith(
        ("/adam_m", "/adam_v", "_slot_vc", "_slot_vr", "_slot_v", "_slot_m"))


def export_release(source_prefix: str, target: str, step: int) -> str:
    """Copy the network weights (and ``global_step``) of ``source_prefix`` to ``target/model.ckpt-<step>``
    with a ``checkpoint`` state file: what the original's release script did (no Adam slots)."""
    reader = tf.train.load_checkpoint(source_prefix)
    names = sorted(n for n in reader.get_variable_to_shape_map() if is_model_variable(n) or n == "global_step")
    prefix = f"{target}/model.ckpt-{step}"
    write_checkpoint(prefix, ((name, reader.get_tensor(name)) for name in names))
    write_checkpoint_state(target, [f"model.ckpt-{step}"])
    return prefix


def write_checkpoint_state(directory: str, names: list[str]) -> None:
    """The ``checkpoint`` state file naming ``names`` (the last is the latest), relative to
    ``directory`` so that the directory can be moved; written atomically."""
    from modeling.files import atomic_output  # noqa: PLC0415

    with atomic_output(f"{directory}/checkpoint") as f:
        f.write(f'model_checkpoint_path: "{names[-1]}"\n'
                + "".join(f'all_model_checkpoint_paths: "{name}"\n' for name in names))
