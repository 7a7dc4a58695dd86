"""Running a model directory: find its files, check its checkpoint, lower the network on a mesh, restore.

A model directory is the original's: ``parameters.json``, a TF ``checkpoint`` state file and its
checkpoint, optionally its own ``ja-swe36k.txt`` and ``emoji.json``. Weights are restored straight
into the variables (no initialiser runs first) and, on a one-device mesh, the slices *are* the master
variables, so a model occupies its checkpoint size in memory once.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from modeling import checkpoint, hub
from modeling import inference
from modeling import model as network
from modeling.cli import UserError
from modeling.config import ModelConfig, Parameters, read_parameters
from modeling.mesh import MeshSetup
from modeling.mtf_compat import mtf, tf
from modeling.tokenizer import DEFAULT_EMOJI, DEFAULT_VOCABULARY, SWEEncoder, TokenizerError

PARAMETERS_FILE = "parameters.json"
VOCABULARY_FILE = "ja-swe36k.txt"
EMOJI_FILE = "emoji.json"


@dataclasses.dataclass(frozen=True)
class ModelDir:
    path: str
    parameters: Parameters
    checkpoint: str          # checkpoint prefix

    @property
    def config(self) -> ModelConfig:
        return self.parameters.model


def latest_checkpoint(directory: str) -> str | None:
    """The prefix named by ``directory/checkpoint`` (relative names resolved against the directory)."""
    return tf.train.latest_checkpoint(directory)


def open_model_dir(path: str) -> ModelDir:
    """Read and check a model directory (ours, the original's, or the Hugging Face hub layout); every
    problem is a one-line UserError. For a hub directory ``checkpoint`` is the directory itself."""
    if not tf.io.gfile.isdir(path):
        raise UserError(f"model directory {path} not found: pass --model DIR (a directory with "
                        f"parameters.json and a checkpoint, or config.json and model.safetensors)")
    if hub.is_hub_dir(path):
        parameters = hub.read_config(path)
        hub.HubWeights(path, parameters.model)   # checked now: a bad download fails before any work
        return ModelDir(path, parameters, path)
    parameters = read_parameters(os.path.join(path, PARAMETERS_FILE))
    prefix = latest_checkpoint(path)
    if prefix is None or not tf.io.gfile.exists(prefix + ".index"):
        raise UserError(f"{path} has no checkpoint (no 'checkpoint' file naming an existing "
                        f"<prefix>.index): train or export a model into it first")
    return ModelDir(path, parameters, prefix)


def tokenizer_files(directory: str, vocabulary: str | None, emoji: str | None) -> tuple[str, str]:
    """Explicit files, else the directory's own copies (``vocab.txt`` in the hub layout), else the project's."""
    def pick(explicit: str | None, names: tuple[str, ...], default: os.PathLike) -> str:
        if explicit:
            return explicit
        own = [os.path.join(directory, name) for name in names if tf.io.gfile.exists(os.path.join(directory, name))]
        return own[0] if own else str(default)

    return (pick(vocabulary, (VOCABULARY_FILE, hub.VOCAB_FILE), DEFAULT_VOCABULARY),
            pick(emoji, (EMOJI_FILE,), DEFAULT_EMOJI))


def _checked_tokenizer(vocabulary: str, emoji: str, config: ModelConfig) -> SWEEncoder:
    try:
        encoder = SWEEncoder.from_files(vocabulary, emoji)
        encoder.check_gptsan_layout()
    except TokenizerError as error:
        raise UserError(str(error)) from None
    if encoder.vocab_size != config.num_vocabulary:
        raise UserError(f"vocabulary {vocabulary} has {encoder.vocab_size} tokens but the model has "
                        f"{config.num_vocabulary}: pass the model's own --vocabulary")
    return encoder


def load_tokenizer(model_dir: ModelDir, vocabulary: str | None = None, emoji: str | None = None) -> SWEEncoder:
    """The tokenizer for ``model_dir``: explicit files, else the directory's own copies, else the project's."""
    return _checked_tokenizer(*tokenizer_files(model_dir.path, vocabulary, emoji), model_dir.config)


def install_tokenizer(directory: str, config: ModelConfig, vocabulary: str | None, emoji: str | None) -> None:
    """Copy the (checked) vocabulary and emoji table into a new model directory, so it is self-contained."""
    vocabulary, emoji = tokenizer_files(directory, vocabulary, emoji)
    _checked_tokenizer(vocabulary, emoji, config)
    tf.io.gfile.makedirs(directory)
    for source, name in ((vocabulary, VOCABULARY_FILE), (emoji, EMOJI_FILE)):
        target = os.path.join(directory, name)
        if source != target:
            tf.io.gfile.copy(source, target, overwrite=True)


def checkpoint_reader(path: str):
    """A reader of the original variables (``get_tensor``, ``get_variable_to_shape_map``) of a TF
    checkpoint prefix or a hub directory."""
    return hub.HubWeights(path, hub.read_config(path).model) if hub.is_hub_dir(path) else tf.train.load_checkpoint(path)


def check_checkpoint(path: str, expected: dict[str, list[int]]) -> None:
    """Every variable the graph needs is in the checkpoint ``path`` with the same shape."""
    try:
        found = dict(tf.train.list_variables(path))
    except (tf.errors.OpError, ValueError) as error:
        raise UserError(f"cannot read checkpoint {path}: {error.__class__.__name__}") from None
    missing = sorted(set(expected) - set(found))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"checkpoint {path} lacks {', '.join(missing[:3])}{more}: "
                        f"it does not match parameters.json")
    for name, shape in expected.items():
        if list(found[name]) != list(shape):
            raise UserError(f"checkpoint {path}: {name} has shape {list(found[name])}, parameters.json "
                            f"implies {list(shape)}")


@dataclasses.dataclass
class Forward:
    """One lowered forward pass of a fixed batch and length."""

    graph: tf.Graph         # add ops to it under graph.as_default()
    batch_size: int
    length: int
    placeholders: dict[str, tf.Tensor]
    tensors: dict[str, tf.Tensor]   # logits [B, T, V], hidden [B, L, T, d], aux_loss, and any added by callers


class Runtime:
    """A TF graph holding one model's variables and any number of lowered forward passes over them."""

    def __init__(self, config: ModelConfig, mesh: MeshSetup, seed: int = 0, direct: bool = True):
        self.config, self.mesh = config, mesh
        self._direct_inference = direct
        self._variable_lowerings: set[tuple[int, int, bool]] = set()
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(seed)  # initialisers draw their op seeds from it when created
        self.session: tf.Session | None = None
        self._lowerings: list[mtf.Lowering] = []

    def forward(self, batch_size: int, length: int, spout: bool = False, training: bool = False,
                cache: list[tuple[tf.Variable, tf.Variable]] | None = None) -> Forward:
        """Lower the network for [batch_size, length] inputs (with a spout input if asked).

        ``training`` switches to training-time routing (groups across the batch, training capacity
        factor); the router jitter needs a seed and belongs to the training loop. With ``cache``
        (per layer key and value variables [slots, batch, heads, d_kv]) the inputs attend to those
        slots too: extra placeholders ``query_index`` [batch, length] (token indices of the inputs)
        and ``slot_index`` [batch, slots] (see model.Cache); ``spout`` then means the cache holds a
        spout slot. The exports include ``next_logits`` [batch, vocab] (at each row's last real
        token), this input's keys and values (``keys``, ``values``: [layers, batch, heads, length,
        d_kv]) and, with a spout and no cache, the spout's (``spout_keys``, ``spout_values``).

        On one device this runs ``modeling.inference`` (same numbers, no mesh overhead) unless the
        runtime was made with ``direct=False``; on a mesh, Mesh TensorFlow lowers it.
        """
        c = self.config
        if length + int(spout) > c.num_contexts:  # positions are never clipped (D14)
            raise UserError(f"{length} tokens{' plus the spout slot' if spout else ''} exceed the model's "
                            f"{c.num_contexts} positions: shorten the input")
        if batch_size % self.mesh.batch_split:
            raise UserError(f"batch size {batch_size} is not a multiple of the mesh's batch axis "
                            f"({self.mesh.batch_split}): change --batch_size or --mesh_shape")
        with self.graph.as_default(), tf.variable_scope("", reuse=tf.AUTO_REUSE):
            placeholders = {
                "tokens": tf.placeholder(tf.int32, [batch_size, length], "tokens"),
                "prefix": tf.placeholder(tf.int32, [batch_size], "prefix"),
                "lengths": tf.placeholder(tf.int32, [batch_size], "lengths"),
            }
            if spout and cache is None:
                placeholders["spout"] = tf.placeholder(tf.float32, [batch_size, c.num_spout], "spout")
            if cache is not None:
                placeholders["query_index"] = tf.placeholder(tf.int32, [batch_size, length], "query_index")
                placeholders["slot_index"] = tf.placeholder(tf.int32, [batch_size, cache[0][0].shape[0]],
                                                            "slot_index")
            if self.direct:
                self._lower(1, 1, spout=spout)   # creates the variables (once), never run
                routing = None
                if training:   # no jitter: it needs a seed and belongs to the training loop
                    routing = inference.TrainingRouting(*network.training_routing(c, batch_size, length, 1))
                tensors = self._direct(placeholders, length, spout, cache, routing)
            else:
                tensors = self._lower(batch_size, length, spout, training, cache, placeholders)
        return Forward(self.graph, batch_size, length, placeholders, tensors)

    @property
    def direct(self) -> bool:
        return self._direct_inference and self.mesh.one_device

    def _direct(self, placeholders: dict[str, tf.Tensor], length: int, spout: bool,
                cache: list[tuple[tf.Variable, tf.Variable]] | None,
                routing: inference.TrainingRouting | None) -> dict[str, tf.Tensor]:
        """``modeling.inference`` on the placeholders; a cached step reads only the slots it may see."""
        read = None
        if cache is not None:
            query_index = placeholders["query_index"]
            read = inference.CacheRead(keys=[k for k, _ in cache], values=[v for _, v in cache],
                                       index=placeholders["slot_index"], spout_slot=spout,
                                       visible_slots=self._slots_read(tf.reduce_max(query_index) + int(spout),
                                                                      cache[0][0].shape[0]))
        return inference.forward(tf.global_variables(), self.config, placeholders["tokens"], placeholders["prefix"],
                                 placeholders["lengths"], length,
                                 spout=placeholders.get("spout"), query_index=placeholders.get("query_index"),
                                 cache=read, routing=routing)

    @staticmethod
    def _slots_read(visible: tf.Tensor, slots: int, step: int = 128) -> tf.Tensor:
        """``visible`` rounded up to a multiple of ``step``: the attention's shapes then change every
        ``step`` tokens, not every token (oneDNN builds a kernel per shape; the extra slots are masked)."""
        return tf.minimum((visible + step - 1) // step * step, slots)

    def _lower(self, batch_size: int, length: int, spout: bool = False, training: bool = False,
               cache: list[tuple[tf.Variable, tf.Variable]] | None = None,
               placeholders: dict[str, tf.Tensor] | None = None) -> dict[str, tf.Tensor]:
        """The Mesh TensorFlow network on ``placeholders`` (new ones if None), lowered on the mesh."""
        c = self.config
        if placeholders is None:
            if (batch_size, length, spout) in self._variable_lowerings:
                return {}
            self._variable_lowerings.add((batch_size, length, spout))
            placeholders = {"tokens": tf.zeros([batch_size, length], tf.int32),
                            "prefix": tf.zeros([batch_size], tf.int32), "lengths": tf.ones([batch_size], tf.int32)}
            if spout:
                placeholders["spout"] = tf.zeros([batch_size, c.num_spout])
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        dims = network.Dims(c)
        batch, time = mtf.Dimension("batch", batch_size), mtf.Dimension("length", length)

        def imported(name: str, dims_: list) -> mtf.Tensor:
            return mtf.import_tf_tensor(mesh, placeholders[name], mtf.Shape(dims_))

        nonpadding = tf.sequence_mask(placeholders["lengths"], length, tf.float32)
        inputs = network.Inputs(
            tokens=imported("tokens", [batch, time]), prefix=imported("prefix", [batch]),
            nonpadding=mtf.import_tf_tensor(mesh, nonpadding, mtf.Shape([batch, time])),
            spout=imported("spout", [batch, dims.spout]) if "spout" in placeholders else None)
        if cache is not None:
            slots = mtf.Dimension("memory", cache[0][0].shape[0])
            shape = mtf.Shape([batch, dims.heads, slots, dims.d_kv])

            def read(var: tf.Variable) -> mtf.Tensor:
                return mtf.import_tf_tensor(mesh, tf.transpose(var.read_value(), [1, 2, 0, 3]), shape)

            inputs.query_index = imported("query_index", [batch, time])
            inputs.cache = network.Cache(keys=[read(k) for k, _ in cache], values=[read(v) for _, v in cache],
                                         index=imported("slot_index", [batch, slots]), spout_slot=spout)
        axis = self.mesh.mesh_impl.tensor_dimension_to_mesh_axis(dims.experts)
        experts_split = axis is not None and self.mesh.mesh_impl.shape[axis].size > 1
        outputs = network.forward(mesh, c, inputs, training=training, batch_split=self.mesh.batch_split,
                                  experts_split=experts_split, direct_experts=self.mesh.one_device)
        lowering = mtf.Lowering(graph, {mesh: self.mesh.mesh_impl})
        self._lowerings.append(lowering)
        export = lowering.export_to_tf_tensor

        def stacked(pairs, i: int) -> tf.Tensor:
            return tf.stack([export(pair[i]) for pair in pairs])

        tensors = {
            "logits": export(outputs.logits),
            "hidden": tf.stack([export(h) for h in outputs.hidden], axis=1),
            "aux_loss": export(outputs.aux_loss),
            "keys": stacked(outputs.presents, 0), "values": stacked(outputs.presents, 1),
        }
        last = tf.maximum(placeholders["lengths"] - 1, 0)
        tensors["next_logits"] = tf.gather(tensors["logits"], last, axis=1, batch_dims=1)
        if outputs.spout_kv is not None:
            tensors.update(spout_keys=stacked(outputs.spout_kv, 0), spout_values=stacked(outputs.spout_kv, 1))
        return tensors

    def variable_shapes(self) -> dict[str, list[int]]:
        with self.graph.as_default():
            return {v.op.name: v.shape.as_list() for v in tf.global_variables()}

    def start(self) -> tf.Session:
        if self.session is None:
            self.session = tf.Session(self.mesh.master, graph=self.graph, config=self.mesh.session_config)
        return self.session

    def restore(self, checkpoint_path: str) -> None:
        """Load every variable from ``checkpoint_path`` (original names; or a hub directory, see
        ``modeling/hub.py``) and lay it out over the mesh."""
        with self.graph.as_default():
            copies = [lowering.copy_masters_to_slices() for lowering in self._lowerings]
            if hub.is_hub_dir(checkpoint_path):
                self._load_hub(checkpoint_path)
                self.start().run(copies)
                return
            check_checkpoint(checkpoint_path, self.variable_shapes())
            saver = tf.train.Saver(tf.global_variables())
            checkpoint.restore(self.start(), saver, checkpoint_path, copies)

    def _load_hub(self, directory: str) -> None:
        """Each variable from the hub layout, converted to float32 one at a time (peak: the model plus
        one layer's tensor), fed through the variable's initializer."""
        session = self.start()
        variables = {v.op.name: v for v in tf.global_variables()}
        weights = hub.HubWeights(directory, self.config)
        for name, variable in sorted(variables.items()):
            value = weights.get_tensor(name)
            if list(value.shape) != variable.shape.as_list():
                raise UserError(f"{directory}: {name} comes out as {list(value.shape)}, the model needs "
                                f"{variable.shape.as_list()}")
            session.run(variable.initializer, {variable.initializer.inputs[1]: value})

    def initialize(self) -> None:
        """Random weights from the original's initialisers (tests, benchmarks, new models)."""
        with self.graph.as_default():
            init = tf.global_variables_initializer()
            copies = [lowering.copy_masters_to_slices() for lowering in self._lowerings]
        session = self.start()
        session.run(init)
        session.run(copies)

    def run(self, forward: Forward, fetches: list[str], tokens: np.ndarray, prefix: np.ndarray,
            lengths: np.ndarray, spout: np.ndarray | None = None, **more: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``forward`` on one batch; ``more`` feeds placeholders added by callers (by name).
        Returns the requested tensors as numpy arrays."""
        arrays = dict(tokens=tokens, prefix=prefix, lengths=lengths, spout=spout, **more)
        feed = {placeholder: arrays[name] for name, placeholder in forward.placeholders.items()
                if arrays.get(name) is not None}   # fetches that need no such input run without it
        return self.start().run({name: forward.tensors[name] for name in fetches}, feed)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
