"""``parameters.json``: the model's shape in the original GPTSAN schema, plus our own keys.

The file is one JSON object with ``model_params`` and ``train_params``. The original's key names are
kept, misspellings included (``num_pallarelizm``), so a released model directory loads as it is and
our files stay readable by the original scripts, which ignore keys they do not know. Our additions
(capacity factors, loss coefficients, …) live in ``model_params`` too and default to the original's
values when absent. The first-generation schema (``num_layers`` + ``use_moe``) is accepted on read.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from modeling.cli import UserError

TRAIN_MODES = ("lm", "hybrid")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one GPTSAN network (spec §3, §5.2); names as in ``parameters.json``."""

    num_contexts: int               # C: learned positions, and the record length
    num_switch_layers: int          # L_s: Switch (MoE) layers, first in the stack
    num_hidden: int                 # d
    num_header: int                 # H; head width d / H
    num_experts: int                # E
    num_ext_layers: int = 0         # L_e: dense layers appended after the Switch layers
    num_vocabulary: int = 36000     # V
    num_spout: int = 0              # S: spout width; 0 = the model has no spout
    num_pallarelizm: int = 1        # size of the 'model' mesh axis the model was trained with
    train_mode: str = "hybrid"      # input format of run_languagemodel.py: 'hybrid' (prefix + [MASK]) or 'lm'
    # Our keys; defaults reproduce the original.
    expert_hidden: int = 0          # expert inner size; 0 = 8 * d
    ext_hidden: int = 0             # extra-layer inner size; 0 = 4 * d
    expert_group_size: int = 1024   # tokens per routing group in training
    capacity_factor_train: float = 1.25
    capacity_factor_eval: float = 2.0
    min_expert_capacity: int = 4
    router_jitter: float = 0.01     # multiplicative router-input noise U(1-j, 1+j), training only
    moe_loss_coef: float = 0.01     # load-balancing loss coefficient
    router_z_loss_coef: float = 0.0
    output_z_loss_coef: float = 1e-4
    layer_norm_epsilon: float = 1e-5
    input_punctuation: str = "raw"  # 'separator': trained on our records, whose inputs carry <|separator|> for 。！？…

    @property
    def num_layers(self) -> int:
        return self.num_switch_layers + self.num_ext_layers

    @property
    def head_size(self) -> int:
        return self.num_hidden // self.num_header

    @property
    def expert_size(self) -> int:
        return self.expert_hidden or 8 * self.num_hidden

    @property
    def ext_size(self) -> int:
        return self.ext_hidden or 4 * self.num_hidden

    def replace(self, **changes: Any) -> ModelConfig:
        return validated(dataclasses.replace(self, **changes))


_POSITIVE_INTS = ("num_contexts", "num_switch_layers", "num_hidden", "num_header", "num_experts",
                  "num_vocabulary", "num_pallarelizm", "expert_group_size", "min_expert_capacity")
_NON_NEGATIVE_INTS = ("num_ext_layers", "num_spout", "expert_hidden", "ext_hidden")
_NON_NEGATIVE_FLOATS = ("capacity_factor_train", "capacity_factor_eval", "router_jitter", "moe_loss_coef",
                        "router_z_loss_coef", "output_z_loss_coef", "layer_norm_epsilon")


def validated(config: ModelConfig, where: str = "model_params") -> ModelConfig:
    """``config`` if every value has the right type and range; otherwise a UserError naming the key."""
    def bad(key: str, wanted: str) -> UserError:
        return UserError(f"{where}: '{key}' is {getattr(config, key)!r}, expected {wanted}")

    for key in _POSITIVE_INTS + _NON_NEGATIVE_INTS:
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad(key, "an integer")
        if value < (1 if key in _POSITIVE_INTS else 0):
            raise bad(key, "a positive integer" if key in _POSITIVE_INTS else "an integer >= 0")
    for key in _NON_NEGATIVE_FLOATS:
        value = getattr(config, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise bad(key, "a number >= 0")
    if config.input_punctuation not in ("raw", "separator"):
        raise bad("input_punctuation", "'raw' or 'separator'")
    if config.train_mode not in TRAIN_MODES:
        raise bad("train_mode", "'lm' or 'hybrid'")
    if config.num_hidden % config.num_header:
        raise UserError(f"{where}: num_hidden {config.num_hidden} is not divisible by num_header "
                        f"{config.num_header}")
    if config.layer_norm_epsilon <= 0:
        raise bad("layer_norm_epsilon", "a number > 0")
    return config


_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
_REQUIRED = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.default is dataclasses.MISSING)


def config_from_dict(model_params: dict, where: str = "model_params") -> ModelConfig:
    """A validated ModelConfig from a ``model_params`` object; unknown keys are kept out, not refused."""
    params = dict(model_params)
    if "num_switch_layers" not in params and "num_layers" in params:  # first-generation schema
        layers = params.pop("num_layers")
        moe = params.pop("use_moe", True)
        params["num_switch_layers"], params["num_ext_layers"] = (layers, 0) if moe else (0, layers)
    missing = [key for key in _REQUIRED if key not in params]
    if missing:
        raise UserError(f"{where} lacks {', '.join(repr(k) for k in missing)}: add them (spec §5.2)")
    return validated(ModelConfig(**{k: v for k, v in params.items() if k in _FIELDS}), where)


@dataclasses.dataclass(frozen=True)
class Parameters:
    """The whole ``parameters.json``: the model's config, and ``train_params`` and any unknown keys as read."""

    model: ModelConfig
    train_params: dict = dataclasses.field(default_factory=dict)
    extra_model_params: dict = dataclasses.field(default_factory=dict)  # keys we do not use, kept on write

    def to_json(self) -> dict:
        model_params = dict(self.extra_model_params)
        defaults = ModelConfig(**{k: getattr(self.model, k) for k in _REQUIRED})
        for field in dataclasses.fields(ModelConfig):
            value = getattr(self.model, field.name)
            if field.name in _REQUIRED or field.name in _ORIGINAL_KEYS or value != getattr(defaults, field.name):
                model_params[field.name] = value
        return {"train_params": dict(self.train_params), "model_params": model_params}


# Keys written even at their default value, because the original scripts read them unconditionally.
_ORIGINAL_KEYS = ("num_ext_layers", "num_vocabulary", "num_spout", "num_pallarelizm", "train_mode")


def parse_parameters(text: str, where: str) -> Parameters:
    """Parameters from the text of a ``parameters.json``; ``where`` names the file in errors."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where} is not valid JSON ({error}); fix or replace the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_params"), dict):
        raise UserError(f"{where} has no 'model_params' object: it is not a GPTSAN parameters file")
    train_params = data.get("train_params", {})
    if not isinstance(train_params, dict):
        raise UserError(f"{where}: 'train_params' must be an object")
    model_params = data["model_params"]
    config = config_from_dict(model_params, f"{where}: model_params")
    extra = {k: v for k, v in model_params.items() if k not in _FIELDS and k not in ("num_layers", "use_moe")}
    return Parameters(config, train_params, extra)


def read_parameters(path: str) -> Parameters:
    """Read ``parameters.json`` (local or ``gs://``)."""
    from modeling.mtf_compat import tf  # noqa: PLC0415 (keeps this module importable without TF)

    if not tf.io.gfile.exists(path):
        raise UserError(f"{path} not found: a model directory needs a parameters.json")
    with tf.io.gfile.GFile(path, "r") as f:
        return parse_parameters(f.read(), path)


def write_parameters(path: str, parameters: Parameters) -> None:
    from modeling.files import write_json  # noqa: PLC0415

    write_json(path, parameters.to_json())
