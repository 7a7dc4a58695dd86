"""GPTSAN as the Hugging Face hub distributes it (``Tanrei/GPTSAN-japanese``), read as it is.

Such a directory holds the port's ``config.json`` (spec §17.2), its weights in safetensors under the
port's parameter names (§17.4; float16 on the hub; one file, or shards listed in
``model.safetensors.index.json``), ``vocab.txt`` (the original ``ja-swe36k.txt``) and ``emoji.json``.
``read_config`` maps the configuration to ours; ``HubWeights`` gives every original variable
(``model/att0/qkv/kernel`` …) as float32, built from the port's tensors one at a time (transposes,
the fused qkv kernel, experts stacked), so loading holds the model once plus one layer's tensor.
``export`` writes the same layout from any of our model directories.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import numpy as np

from modeling.cli import UserError
from modeling.config import ModelConfig, Parameters, validated

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MODEL_TYPE = "gptsan-japanese"


def is_hub_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and not os.path.isfile(os.path.join(path, "parameters.json"))


def read_config(path: str) -> Parameters:
    """``config.json`` as our configuration (``expert_capacity`` has no counterpart: capacity follows
    the original's rule, spec §3.5)."""
    where = os.path.join(path, CONFIG_FILE)
    try:
        with open(where, encoding="utf-8") as f:
            c = json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {where}: {error}") from None
    if not isinstance(c, dict) or c.get("model_type") != MODEL_TYPE:
        found = c.get("model_type") if isinstance(c, dict) else None
        raise UserError(f"{where} describes model_type {found!r}, not {MODEL_TYPE!r}: pass a GPTSAN directory")
    try:
        d = int(c.get("d_model", 1024))
        config = ModelConfig(
            num_contexts=int(c.get("max_position_embeddings", 1280)), num_switch_layers=int(c.get("num_switch_layers", 10)),
            num_ext_layers=int(c.get("num_ext_layers", 0)), num_hidden=d, num_header=int(c.get("num_heads", 16)),
            num_experts=int(c.get("num_experts", 16)), num_vocabulary=int(c.get("vocab_size", 36000)),
            num_spout=int(c.get("d_spout") or 0),
            expert_hidden=0 if int(c.get("d_ff", 8 * d)) == 8 * d else int(c["d_ff"]),
            ext_hidden=0 if int(c.get("d_ext", 4 * d)) == 4 * d else int(c["d_ext"]),
            layer_norm_epsilon=float(c.get("layer_norm_epsilon", 1e-5)))
    except (TypeError, ValueError) as error:
        raise UserError(f"{where}: {error}") from None
    return Parameters(model=validated(config, where))


# ---------------------------------------------------------------------------------------------------
# Names: each original variable from the port's tensors (spec §17.4).
# ---------------------------------------------------------------------------------------------------

Recipe = tuple[list[str], Callable[[Callable[[str], np.ndarray], list[str]], np.ndarray]]


def recipes(config: ModelConfig) -> dict[str, Recipe]:
    """Original name -> (the port's tensor names, how to build ours from them)."""
    d, h = config.num_hidden, config.num_header

    def same(get, names):
        return get(names[0])

    def transposed(get, names):
        return get(names[0]).T

    out: dict[str, Recipe] = {
        "model/wte": (["model.embed_tokens.weight"], same),
        "model/wpe": (["model.position_embeddings.weight"], same),
        "model/wob": (["final_logits_bias"], lambda get, names: get(names[0]).reshape(-1)),
        "model/dense/kernel": (["model.last_project.weight"], transposed),
        "model/dense_1/bias": (["model.last_project.bias"], same),
    }
    if config.num_ext_layers:
        out["model/ete"] = (["model.extra_position_embeddings.weight"], same)
    for layer in range(config.num_layers):
        block = f"model.blocks.{layer}"
        attn = f"{block}.self_attn.self_attn"
        out[f"model/att{layer}/qkv/kernel"] = (
            [f"{attn}.{n}_proj.weight" for n in "qkv"],
            lambda get, names: np.stack([get(n).T for n in names], axis=1).reshape(d, 3, h, d // h))
        out[f"model/att{layer}/o/kernel"] = ([f"{attn}.out_proj.weight"],
                                             lambda get, names: get(names[0]).T.reshape(h, d // h, d))
        for ours, theirs in (("an", "self_attn.norm"), ("ln", "feed_forward.norm")):
            out[f"model/{ours}{layer}/g"] = ([f"{block}.{theirs}.weight"], same)
            out[f"model/{ours}{layer}/b"] = ([f"{block}.{theirs}.bias"], same)
        ff = f"{block}.feed_forward"
        if layer < config.num_switch_layers:
            experts = [f"{ff}.mlp.experts.expert_{e}" for e in range(config.num_experts)]
            out[f"model/moe{layer}/switch_gating/kernel"] = ([f"{ff}.mlp.router.classifier.weight"], transposed)
            out[f"model/moe{layer}/softmlp/kernel"] = ([f"{ff}.soft_bypass_mlp.weight"], transposed)
            out[f"model/moe{layer}/wi/kernel"] = ([f"{e}.wi.weight" for e in experts], _stacked_transposes)
            out[f"model/moe{layer}/wo/kernel"] = ([f"{e}.wo.weight" for e in experts], _stacked_transposes)
        else:
            for ours, theirs in (("p1", "wi"), ("p2", "wo")):
                out[f"model/mlp{layer}/{ours}/kernel"] = ([f"{ff}.mlp.{theirs}.weight"], transposed)
                out[f"model/mlp{layer}/{ours}/bias"] = ([f"{ff}.mlp.{theirs}.bias"], same)
    if config.num_spout:
        for k in range(8):
            out[f"pasts/mlp{k}/kernel"] = ([f"model.spout.{2 * k}.weight"], transposed)
        out["pasts/out/kernel"] = (["model.spout.16.weight"], transposed)
    return out


def _stacked_transposes(get: Callable[[str], np.ndarray], names: list[str]) -> np.ndarray:
    """[E, in, out] float32 from E [out, in] tensors, read and filled one expert at a time."""
    first = get(names[0])
    out = np.empty((len(names),) + first.T.shape, np.float32)
    out[0] = first.T
    for e, name in enumerate(names[1:], 1):
        out[e] = get(name).T
    return out


def port_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the port's state dict must hold for ``config``, with its shape (spec §17.4)."""
    d, v, c, e = config.num_hidden, config.num_vocabulary, config.num_contexts, config.num_experts
    f, f_ext, s = config.expert_size, config.ext_size, config.num_spout
    shapes = {"model.embed_tokens.weight": (v, d), "model.position_embeddings.weight": (c, d),
              "final_logits_bias": (1, v), "model.last_project.weight": (d, d), "model.last_project.bias": (d,)}
    if config.num_ext_layers:
        shapes["model.extra_position_embeddings.weight"] = (c, d)
    for layer in range(config.num_layers):
        block = f"model.blocks.{layer}"
        for n in ("q", "k", "v", "out"):
            shapes[f"{block}.self_attn.self_attn.{n}_proj.weight"] = (d, d)
        for norm in ("self_attn.norm", "feed_forward.norm"):
            shapes[f"{block}.{norm}.weight"] = shapes[f"{block}.{norm}.bias"] = (d,)
        ff = f"{block}.feed_forward"
        if layer < config.num_switch_layers:
            shapes[f"{ff}.mlp.router.classifier.weight"] = (e, d)
            shapes[f"{ff}.soft_bypass_mlp.weight"] = (d, d)
            for k in range(e):
                shapes[f"{ff}.mlp.experts.expert_{k}.wi.weight"] = (f, d)
                shapes[f"{ff}.mlp.experts.expert_{k}.wo.weight"] = (d, f)
        else:
            shapes.update({f"{ff}.mlp.wi.weight": (f_ext, d), f"{ff}.mlp.wi.bias": (f_ext,),
                           f"{ff}.mlp.wo.weight": (d, f_ext), f"{ff}.mlp.wo.bias": (d,)})
    if s:
        shapes.update({f"model.spout.{2 * k}.weight": (s, s) for k in range(8)})
        shapes["model.spout.16.weight"] = (config.num_layers * 2 * d, s)
    return shapes


class HubWeights:
    """The safetensors weights of a hub directory (one file or index + shards), checked on opening."""

    def __init__(self, path: str, config: ModelConfig):
        from safetensors import SafetensorError, safe_open  # noqa: PLC0415

        self.path, self.config = path, config
        files = self._files()
        self._handles, self._file_of = {}, {}
        for file in sorted(set(files.values()) if files else [SINGLE_FILE]):
            where = os.path.join(path, file)
            if not os.path.isfile(where):
                raise UserError(f"{where} not found (named by {INDEX_FILE}): the download is incomplete")
            try:
                handle = safe_open(where, framework="numpy")
                self._handles[file] = handle
                for name in handle.keys():
                    self._file_of[name] = file
                    handle.get_slice(name)   # the header's offsets are checked against the file here
            except (SafetensorError, OSError, ValueError) as error:
                raise UserError(f"cannot read {where} ({str(error).splitlines()[0][:120]}): the file is "
                                f"truncated or not safetensors; download it again") from None
        self._check()

    def _files(self) -> dict[str, str] | None:
        """Tensor name -> shard file from the index, or None for a single file."""
        index = os.path.join(self.path, INDEX_FILE)
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    return dict(json.load(f)["weight_map"])
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise UserError(f"cannot read {index}: {error}") from None
        if os.path.isfile(os.path.join(self.path, SINGLE_FILE)):
            return None
        if os.path.isfile(os.path.join(self.path, "pytorch_model.bin")):
            raise UserError(f"{self.path} has only pytorch_model.bin (a torch pickle, which this toolkit does not "
                            f"read): download the safetensors revision (model.safetensors) instead")
        raise UserError(f"{self.path} has config.json but no {SINGLE_FILE} or {INDEX_FILE}: download the weights")

    def _check(self) -> None:
        for name, shape in port_shapes(self.config).items():
            if name not in self._file_of:
                raise UserError(f"{self.path}: the weights lack {name} (config.json implies it)")
            found = tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())
            if found != shape:
                raise UserError(f"{self.path}: {name} has shape {list(found)}, config.json implies {list(shape)}")

    def port_tensor(self, name: str) -> np.ndarray:
        return self._handles[self._file_of[name]].get_tensor(name).astype(np.float32, copy=False)

    def variables(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """(original name, float32 value) for each of ``names``, built one at a time."""
        table = recipes(self.config)
        for name in names:
            if name not in table:
                raise UserError(f"{self.path}: the model needs {name}, which the hub layout does not hold")
            sources, build = table[name]
            yield name, np.ascontiguousarray(build(self.port_tensor, sources), np.float32)
