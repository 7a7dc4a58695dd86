"""Fine-tuning directories: a frozen base model plus N dense extra layers and the spout (spec §15).

``prepare`` makes the output directory on the first run: the base weights copied, N extra layers
appended after the existing ones (with ``ete`` if the base had none), the spout's output projection
re-created for the new layer count, ``parameters.json`` updated, ``ignore-params.json`` listing the
frozen variables in the original format, the tokenizer copied, and ``finetune.json`` recording the
base, so that a rerun resumes and another base is refused. New biases start at zero (D17).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import NamedTuple

import numpy as np

from modeling import checkpoint, runtime
from modeling.cli import UserError
from modeling.config import ModelConfig, Parameters, read_parameters, write_parameters
from modeling.files import write_json
from modeling.mtf_compat import tf

IGNORE_FILE, MARKER_FILE = "ignore-params.json", "finetune.json"
SEPARATED = 0.1   # smallest singular value of the spout MLP's one-hot outputs that keeps it (spout_separation)


def new_layer_shapes(config, layer: int) -> dict[str, tuple[int, ...]]:
    """Variables of one dense extra layer (spec §4.3)."""
    d, h = config.num_hidden, config.num_header
    return {f"model/att{layer}/qkv/kernel": (d, 3, h, d // h), f"model/att{layer}/o/kernel": (h, d // h, d),
            f"model/an{layer}/g": (d,), f"model/an{layer}/b": (d,), f"model/ln{layer}/g": (d,), f"model/ln{layer}/b": (d,),
            f"model/mlp{layer}/p1/kernel": (d, config.ext_size), f"model/mlp{layer}/p1/bias": (config.ext_size,),
            f"model/mlp{layer}/p2/kernel": (config.ext_size, d), f"model/mlp{layer}/p2/bias": (d,)}


def initial_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Kernels N(0, 0.02) as the converter, spout MLP kernels random orthogonal; LayerNorm gains 1;
    biases, LayerNorm offsets and ete 0."""
    if name.startswith("pasts/mlp"):
        q, r = np.linalg.qr(rng.standard_normal(shape))
        return (q * np.sign(np.diag(r))).astype(np.float32)
    if name.endswith("/g"):
        return np.ones(shape, np.float32)
    if name.endswith(("/b", "/bias", "/ete")):
        return np.zeros(shape, np.float32)
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)


def spout_separation(kernels: list[np.ndarray]) -> float:
    """How well the spout MLP keeps the classes apart: the smallest singular value of its outputs for
    the S one-hot inputs (rows). The output projection, the spout's trained part, maps these rows
    linearly, so it can give each class its own key and value, learned at a similar rate, only if the
    rows are far from linearly dependent. The original's N(0, 0.01) init gives about (0.01·sqrt(S))^8;
    uniform pretraining saturates the tanh layers into one output for every class; a random Gaussian
    init leaves some classes almost collinear. Random orthogonal kernels (``initial_value``) give 0.5-0.9."""
    h = np.eye(kernels[0].shape[0], dtype=np.float64)
    for kernel in kernels:
        h = np.tanh(h @ kernel)
    return float(np.linalg.svd(h, compute_uv=False).min())


def spout_mlp_names(config: ModelConfig) -> list[str]:
    return [f"pasts/mlp{k}/kernel" for k in range(8)] if config.num_spout else []


def created_variables(base: ModelConfig, config: ModelConfig, reader: tf.train.CheckpointReader,
                      base_dir: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the variables the fine-tuning directory creates instead of copying: the added
    layers, ``ete`` if new, the spout projection for the new layer count (or if the base has none), and
    a spout MLP that the base lacks or that gives every class the same output."""
    shapes = {}
    for layer in range(base.num_layers, config.num_layers):
        shapes.update(new_layer_shapes(config, layer))
    if config.num_layers > base.num_layers and not base.num_ext_layers:
        shapes["model/ete"] = (config.num_contexts, config.num_hidden)
    stored = reader.get_variable_to_shape_map()
    if config.num_spout and (config.num_layers > base.num_layers or "pasts/out/kernel" not in stored):
        shapes["pasts/out/kernel"] = (config.num_spout, config.num_layers * 2 * config.num_hidden)
    mlp = spout_mlp_names(config)
    if mlp and not has_spout_weights(config, reader):
        print(f"note: {base_dir} has no spout weights (pretrained without --spout_vector); the spout is created "
              "fresh", file=sys.stderr)
    elif mlp and spout_separation([reader.get_tensor(n) for n in mlp]) < SEPARATED:
        print(f"note: the spout MLP of {base_dir} gives (almost) the same output for different classes (original "
              "initialisation, or pretrained on noise); it is re-initialised (random orthogonal)", file=sys.stderr)
    else:
        return shapes
    shapes.update({name: (config.num_spout, config.num_spout) for name in mlp})
    return shapes


def has_spout_weights(config: ModelConfig, reader: tf.train.CheckpointReader) -> bool:
    stored = reader.get_variable_to_shape_map()
    return all(name in stored for name in spout_mlp_names(config))


def shifted_positions(table: np.ndarray) -> np.ndarray:
    """A [positions, d] embedding one place up (row p + 1 = row p). A spout takes position 0, so a
    token sits one position later than in pretraining without one; this way the frozen layers still
    see each token with the embedding they were trained with."""
    return np.concatenate([table[:1], table[:-1]])


def frozen_names(directory: str) -> frozenset[str]:
    with tf.io.gfile.GFile(os.path.join(directory, IGNORE_FILE), "r") as f:
        return frozenset(json.load(f))


class Prepared(NamedTuple):
    parameters: Parameters
    frozen: frozenset[str]   # variable names that are not trained


def prepare(base: runtime.ModelDir, output: str, add_layers: int, vocabulary: str | None, emoji: str | None,
            seed: int, progress: bool = True, spout: bool = False) -> Prepared:
    """The fine-tuning directory ``output`` for the (opened) base model: created on the first run,
    checked after. ``spout``: the fine-tuning feeds a spout (then a base without spout weights gets its
    position embeddings moved, see ``shifted_positions``)."""
    if add_layers < 0:
        raise UserError(f"--add_layers must be >= 0, got {add_layers}")
    marker = {"base_model": base.path, "base_checkpoint": os.path.basename(base.checkpoint), "add_layers": add_layers}
    marker_path = os.path.join(output, MARKER_FILE)
    if tf.io.gfile.exists(marker_path):
        with tf.io.gfile.GFile(marker_path, "r") as f:
            found = json.load(f)
        if {k: found.get(k) for k in marker} != marker:
            raise UserError(f"{output} is a fine-tune of {found.get('base_model')} ({found.get('base_checkpoint')}, "
                            f"--add_layers {found.get('add_layers')}), not of this base: choose another --output")
        return Prepared(read_parameters(os.path.join(output, runtime.PARAMETERS_FILE)), frozen_names(output))
    if tf.io.gfile.exists(output) and tf.io.gfile.listdir(output):
        raise UserError(f"{output} exists and is not a fine-tuning directory: choose a new --output")
    staging = output.rstrip("/") + ".tmp-prepare"   # renamed into place only when complete
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)

    config = base.config.replace(num_ext_layers=base.config.num_ext_layers + add_layers,
                                 input_punctuation="separator")   # trained on our records from now on
    reader = runtime.checkpoint_reader(base.checkpoint)   # a TF checkpoint or a hub directory
    base_names = sorted(n for n in reader.get_variable_to_shape_map() if checkpoint.is_model_variable(n))
    rng = np.random.default_rng(seed)
    try:
        new_shapes = created_variables(base.config, config, reader, base.path)
    except checkpoint.READ_ERRORS as error:
        raise checkpoint.unreadable(base.checkpoint, error) from None
    copied = [n for n in base_names if n not in new_shapes]
    moved = {"model/wpe", "model/ete"} if spout and config.num_spout and not has_spout_weights(config, reader) else set()
    if moved:
        print("note: the position embeddings move one place up, where the spout puts the tokens", file=sys.stderr)

    def tensors():
        from tqdm import tqdm  # noqa: PLC0415

        with tqdm(total=len(copied) + len(new_shapes), desc=f"preparing {output}", unit="var",
                  disable=not progress, dynamic_ncols=True) as bar:
            for name in copied:
                value = reader.get_tensor(name)
                yield name, shifted_positions(value) if name in moved else value
                bar.update(1)
            for name, shape in new_shapes.items():
                yield name, initial_value(name, shape, rng)
                bar.update(1)
        yield "global_step", np.int64(0)

    tf.io.gfile.makedirs(staging)
    try:
        checkpoint.write_checkpoint(os.path.join(staging, "model.ckpt-0"), tensors())
    except checkpoint.READ_ERRORS as error:
        tf.io.gfile.rmtree(staging)
        raise checkpoint.unreadable(base.checkpoint, error) from None
    checkpoint.write_checkpoint_state(staging, ["model.ckpt-0"])
    # the spout MLP stays fixed: training it saturates its tanh layers into one output for every class
    frozen = sorted({n for n in copied if not n.startswith("pasts/")} | set(spout_mlp_names(config)))
    write_json(os.path.join(staging, IGNORE_FILE), frozen)
    parameters = dataclasses.replace(base.parameters, model=config)
    runtime.install_tokenizer(staging, config, *runtime.tokenizer_files(base.path, vocabulary, emoji))
    write_parameters(os.path.join(staging, runtime.PARAMETERS_FILE), parameters)
    write_json(os.path.join(staging, MARKER_FILE), marker)
    if tf.io.gfile.exists(output):
        tf.io.gfile.rmtree(output)   # empty, checked above
    tf.io.gfile.rename(staging, output)
    return Prepared(parameters, frozenset(frozen))

