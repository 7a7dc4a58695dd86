"""Saving and restoring Mesh TensorFlow weights as plain TF checkpoints.

Checkpoints hold only the *master* variables, under their Mesh TensorFlow names (``model/wte``,
``model/att0/qkv/kernel``, …), so a checkpoint written on one mesh restores on any other and on the
original GPTSAN release. The per-device slice variables are copies made after each restore and
folded back before each save.
"""

from __future__ import annotations

from modeling.mtf_compat import mtf, tf


def make_saver(max_to_keep: int = 5) -> tf.train.Saver:
    """A saver over the master variables of the current graph (slice variables are not global)."""
    return tf.train.Saver(tf.global_variables(), max_to_keep=max_to_keep, sharded=False,
                          save_relative_paths=True)


def save(session: tf.Session, lowering: mtf.Lowering, saver: tf.train.Saver, prefix: str,
         global_step: int | None = None) -> str:
    """Fold the slices into the masters, then write the checkpoint; returns its path.

    TF writes the data file, then the index, then the ``checkpoint`` state file atomically, so a
    checkpoint cut short never becomes the latest one.
    """
    session.run(lowering.copy_slices_to_masters())
    return saver.save(session, prefix, global_step=global_step, write_meta_graph=False)


def restore(session: tf.Session, lowering: mtf.Lowering, saver: tf.train.Saver, path: str) -> None:
    """Load the masters from ``path`` and lay them out over the mesh."""
    saver.restore(session, path)
    session.run(lowering.copy_masters_to_slices())
