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

import dataclasses
import json
import os
from collections.abc import Callable

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

Build = Callable[[Callable[[str], np.ndarray], list[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one original variable is made from the port's tensors."""

    sources: list[str]            # the port's tensor names
    build: Build                  # (read a port tensor, sources) -> our value (cast by the caller)
    shape: tuple[int, ...]        # our shape
    split: Callable[[np.ndarray], list[np.ndarray]]   # our value -> the port's tensors (export)


def _same(get, names):
    return get(names[0])


def _transposed(get, names):
    return get(names[0]).T


def _one(x):
    return [x]


def _one_transposed(x):
    return [x.T]


def _each_transposed(x):
    return [e.T for e in x]


def _stacked_transposes(get, names):
    """[E, in, out] float32 from E [out, in] tensors, read and filled one expert at a time."""
    first = get(names[0])
    out = np.empty((len(names),) + first.T.shape, np.float32)
    out[0] = first.T
    for e, name in enumerate(names[1:], 1):
        out[e] = get(name).T
    return out


def recipes(config: ModelConfig) -> dict[str, Recipe]:
    """Original name -> its recipe (spec §17.4)."""
    d, h, v, c, e = config.num_hidden, config.num_header, config.num_vocabulary, config.num_contexts, config.num_experts
    f, f_ext, s = config.expert_size, config.ext_size, config.num_spout

    def qkv(get, names):
        return np.stack([get(n).T for n in names], axis=1).reshape(d, 3, h, d // h)

    def out_proj(get, names):
        return get(names[0]).T.reshape(h, d // h, d)

    out = {
        "model/wte": Recipe(["model.embed_tokens.weight"], _same, (v, d), _one),
        "model/wpe": Recipe(["model.position_embeddings.weight"], _same, (c, d), _one),
        "model/wob": Recipe(["final_logits_bias"], lambda get, names: get(names[0]).reshape(-1), (v,),
                            lambda x: [x[None]]),
        "model/dense/kernel": Recipe(["model.last_project.weight"], _transposed, (d, d), _one_transposed),
        "model/dense_1/bias": Recipe(["model.last_project.bias"], _same, (d,), _one),
    }
    if config.num_ext_layers:
        out["model/ete"] = Recipe(["model.extra_position_embeddings.weight"], _same, (c, d), _one)
    for layer in range(config.num_layers):
        block = f"model.blocks.{layer}"
        attn = f"{block}.self_attn.self_attn"
        out[f"model/att{layer}/qkv/kernel"] = Recipe([f"{attn}.{n}_proj.weight" for n in "qkv"], qkv, (d, 3, h, d // h),
                                                      lambda x: [x[:, i].reshape(d, d).T for i in range(3)])
        out[f"model/att{layer}/o/kernel"] = Recipe([f"{attn}.out_proj.weight"], out_proj, (h, d // h, d),
                                                    lambda x: [x.reshape(d, d).T])
        for ours, theirs in (("an", "self_attn.norm"), ("ln", "feed_forward.norm")):
            out[f"model/{ours}{layer}/g"] = Recipe([f"{block}.{theirs}.weight"], _same, (d,), _one)
            out[f"model/{ours}{layer}/b"] = Recipe([f"{block}.{theirs}.bias"], _same, (d,), _one)
        ff = f"{block}.feed_forward"
        if layer < config.num_switch_layers:
            experts = [f"{ff}.mlp.experts.expert_{k}" for k in range(e)]
            moe = f"model/moe{layer}"
            out[f"{moe}/switch_gating/kernel"] = Recipe([f"{ff}.mlp.router.classifier.weight"], _transposed, (d, e),
                                                      _one_transposed)
            out[f"{moe}/softmlp/kernel"] = Recipe([f"{ff}.soft_bypass_mlp.weight"], _transposed, (d, d), _one_transposed)
            out[f"{moe}/wi/kernel"] = Recipe([f"{x}.wi.weight" for x in experts], _stacked_transposes, (e, d, f),
                                            _each_transposed)
            out[f"{moe}/wo/kernel"] = Recipe([f"{x}.wo.weight" for x in experts], _stacked_transposes, (e, f, d),
                                            _each_transposed)
        else:
            mlp = f"model/mlp{layer}"
            out[f"{mlp}/p1/kernel"] = Recipe([f"{ff}.mlp.wi.weight"], _transposed, (d, f_ext), _one_transposed)
            out[f"{mlp}/p1/bias"] = Recipe([f"{ff}.mlp.wi.bias"], _same, (f_ext,), _one)
            out[f"{mlp}/p2/kernel"] = Recipe([f"{ff}.mlp.wo.weight"], _transposed, (f_ext, d), _one_transposed)
            out[f"{mlp}/p2/bias"] = Recipe([f"{ff}.mlp.wo.bias"], _same, (d,), _one)
    if s:
        for k in range(8):
            out[f"pasts/mlp{k}/kernel"] = Recipe([f"model.spout.{2 * k}.weight"], _transposed, (s, s), _one_transposed)
        out["pasts/out/kernel"] = Recipe(["model.spout.16.weight"], _transposed, (s, config.num_layers * 2 * d),
                                         _one_transposed)
    return out


def port_shapes(table: dict[str, Recipe]) -> dict[str, tuple[int, ...]]:
    """Every tensor the port's state dict must hold, with its shape: each recipe's ``split`` applied
    to an unfilled array of our shape (views, except the small q/k/v/o reshapes)."""
    return {source: value.shape for recipe in table.values()
            for source, value in zip(recipe.sources, recipe.split(np.empty(recipe.shape, np.float32)))}


class HubWeights:
    """The safetensors weights of a hub directory (one file or index + shards), checked on opening."""

    def __init__(self, path: str, config: ModelConfig):
        from safetensors import SafetensorError, safe_open  # noqa: PLC0415

        self.path, self.config = path, config
        self._recipes = recipes(config)
        files = self._files()
        self._file_of: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in sorted(set(files.values()) if files else [SINGLE_FILE]):
            where = os.path.join(path, file)
            if not os.path.isfile(where):
                raise UserError(f"{where} not found (named by {INDEX_FILE}): the download is incomplete")
            try:   # opening checks the header's offsets against the file's size
                with safe_open(where, framework="numpy") as handle:
                    for name in handle.keys():
                        self._file_of[name] = file
                        self._shapes[name] = tuple(handle.get_slice(name).get_shape())
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
        for name, shape in port_shapes(self._recipes).items():
            if name not in self._file_of:
                raise UserError(f"{self.path}: the weights lack {name} (config.json implies it)")
            found = self._shapes[name]
            if found != shape:
                raise UserError(f"{self.path}: {name} has shape {list(found)}, config.json implies {list(shape)}")

    def port_tensor(self, name: str) -> np.ndarray:
        """One tensor as stored (float16 or float32: recipes cast once, while they transpose). The
        file is opened for each read: safetensors maps it into memory, and pages of a mapping held
        open would count as resident until the whole model was read."""
        from safetensors import safe_open  # noqa: PLC0415

        with safe_open(os.path.join(self.path, self._file_of[name]), framework="numpy") as handle:
            return handle.get_tensor(name)

    def get_tensor(self, name: str) -> np.ndarray:
        """The original variable ``name`` as float32 (the interface of a TF checkpoint reader)."""
        recipe = self._recipes.get(name)
        if recipe is None:
            raise UserError(f"{self.path}: the model needs {name}, which the hub layout does not hold")
        return np.ascontiguousarray(recipe.build(self.port_tensor, recipe.sources), np.float32)

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        """Every original variable the directory holds, with its shape (checked against the headers)."""
        return {name: list(recipe.shape) for name, recipe in self._recipes.items()}


# ---------------------------------------------------------------------------------------------------
# Export: our variables in the hub layout.
# ---------------------------------------------------------------------------------------------------

SHARD_BYTES = 2 << 30   # a shard's size before the next one starts (bounds the memory export needs)


def hub_config(config: ModelConfig, dtype: str) -> dict:
    """``config.json`` as the port writes it (spec §17.2, §17.4a); ``expert_capacity`` is the port's
    default, which our capacity rule does not use."""
    v = config.num_vocabulary
    return {"architectures": ["GPTSanJapaneseForConditionalGeneration"], "model_type": MODEL_TYPE,
            "vocab_size": v, "max_position_embeddings": config.num_contexts, "d_model": config.num_hidden,
            "d_ff": config.expert_size, "d_ext": config.ext_size, "d_spout": config.num_spout,
            "num_switch_layers": config.num_switch_layers, "num_ext_layers": config.num_ext_layers,
            "num_layers": config.num_layers, "num_heads": config.num_header, "num_experts": config.num_experts,
            "expert_capacity": 128, "dropout_rate": 0.0, "layer_norm_epsilon": config.layer_norm_epsilon,
            "router_bias": False, "router_jitter_noise": 0.0, "router_dtype": "float32",
            "router_ignore_padding_tokens": False, "initializer_factor": 0.002, "use_cache": True,
            "separator_token_id": v - 2, "pad_token_id": v - 5, "eos_token_id": v - 1,
            "tie_word_embeddings": True, "torch_dtype": dtype}


def export(reader, config: ModelConfig, directory: str, dtype: str = "float32", progress: bool = True) -> None:
    """Write ``config.json`` and the weights of ``reader`` (a checkpoint reader of original names) into
    ``directory`` in the hub layout: ``model.safetensors``, or shards of about 2 GiB and an index."""
    from safetensors.numpy import save_file  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    shards: list[list[str]] = []   # the tensor names of each shard written
    shard: dict[str, np.ndarray] = {}

    def flush() -> None:
        save_file(shard, os.path.join(directory, f"part-{len(shards)}.safetensors"), metadata={"format": "pt"})
        shards.append(sorted(shard))
        shard.clear()

    for name, recipe in tqdm(recipes(config).items(), desc=f"exporting to {directory}", unit="var",
                             disable=not progress, dynamic_ncols=True):
        for source, value in zip(recipe.sources, recipe.split(reader.get_tensor(name))):
            shard[source] = np.ascontiguousarray(value, dtype)
        if sum(t.nbytes for t in shard.values()) >= SHARD_BYTES:
            flush()
    if shard or not shards:
        flush()
    names = [SINGLE_FILE] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for i, name in enumerate(names):
        os.replace(os.path.join(directory, f"part-{i}.safetensors"), os.path.join(directory, name))
    if len(shards) > 1:
        weight_map = {tensor: name for name, tensors in zip(names, shards) for tensor in tensors}
        with open(os.path.join(directory, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(hub_config(config, dtype), f, indent=2)
