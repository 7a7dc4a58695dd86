"""Model directories laid out like the original release, built with plain TensorFlow variables.

``original_weights`` lists every variable of spec §4.2/§4.3 by its original name and shape, filled
with random values; ``write_model_dir`` saves them with a plain ``tf.train.Saver`` next to a
``parameters.json`` in the original schema. Nothing here uses the project's model code, so loading
such a directory checks compatibility with the original format, not with ourselves.
"""

from __future__ import annotations

import json
import os

import numpy as np

from modeling.mtf_compat import tf

TINY = {"num_contexts": 24, "num_switch_layers": 2, "num_ext_layers": 0, "num_hidden": 32,
        "num_header": 4, "num_experts": 4, "num_pallarelizm": 1, "num_vocabulary": 36000,
        "train_mode": "hybrid", "num_spout": 8}


def original_shapes(p: dict) -> dict[str, tuple[int, ...]]:
    """Variable name -> shape, from spec §4.2/§4.3, for ``model_params`` ``p``."""
    d, h, e, v, c, s = (p["num_hidden"], p["num_header"], p["num_experts"], p["num_vocabulary"],
                        p["num_contexts"], p.get("num_spout", 0))
    switch, ext = p["num_switch_layers"], p.get("num_ext_layers", 0)
    shapes = {"model/wte": (v, d), "model/wpe": (c, d), "model/wob": (v,), "model/dense/kernel": (d, d),
              "model/dense_1/bias": (d,)}
    for layer in range(switch + ext):
        shapes[f"model/att{layer}/qkv/kernel"] = (d, 3, h, d // h)
        shapes[f"model/att{layer}/o/kernel"] = (h, d // h, d)
        for norm in ("an", "ln"):
            shapes[f"model/{norm}{layer}/g"] = shapes[f"model/{norm}{layer}/b"] = (d,)
        if layer < switch:
            shapes[f"model/moe{layer}/switch_gating/kernel"] = (d, e)
            shapes[f"model/moe{layer}/wi/kernel"] = (e, d, 8 * d)
            shapes[f"model/moe{layer}/wo/kernel"] = (e, 8 * d, d)
            shapes[f"model/moe{layer}/softmlp/kernel"] = (d, d)
        else:
            shapes[f"model/mlp{layer}/p1/kernel"], shapes[f"model/mlp{layer}/p1/bias"] = (d, 4 * d), (4 * d,)
            shapes[f"model/mlp{layer}/p2/kernel"], shapes[f"model/mlp{layer}/p2/bias"] = (4 * d, d), (d,)
    if ext:
        shapes["model/ete"] = (c, d)
    if s:
        for k in range(8):
            shapes[f"pasts/mlp{k}/kernel"] = (s, s)
        shapes["pasts/out/kernel"] = (s, (switch + ext) * 2 * d)
    return shapes


def original_weights(p: dict, seed: int = 0, scale: float = 0.3) -> dict[str, np.ndarray]:
    """Random weights for every original variable; norms around 1 so every path matters."""
    rng = np.random.RandomState(seed)
    weights = {}
    for name, shape in original_shapes(p).items():
        fan_in = shape[-2] if len(shape) >= 2 else 1
        if name.endswith("/g"):
            value = 1.0 + 0.2 * rng.randn(*shape)
        elif len(shape) == 1 or name.endswith(("wpe", "ete")):
            value = 0.2 * rng.randn(*shape)
        elif name.endswith("qkv/kernel"):
            value = rng.randn(*shape) / np.sqrt(shape[0])
        elif name.endswith("o/kernel") and "/att" in name:
            value = rng.randn(*shape) / np.sqrt(shape[0] * shape[1])
        else:
            value = scale * rng.randn(*shape) / np.sqrt(fan_in) * 3
        weights[name] = value.astype(np.float32)
    return weights


def write_model_dir(path: str, model_params: dict, weights: dict[str, np.ndarray],
                    train_params: dict | None = None, step: int = 0) -> str:
    """Save ``weights`` as the original release would: ``parameters.json``, ``checkpoint``,
    ``model.ckpt-<step>.*`` (plus a ``global_step``). Returns the checkpoint prefix."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "parameters.json"), "w") as f:
        json.dump({"train_params": train_params or {"batch_size": 16, "base_lr": 1e-4},
                   "model_params": model_params}, f)
    with tf.Graph().as_default():
        variables = [tf.get_variable(name, initializer=value) for name, value in weights.items()]
        variables.append(tf.get_variable("global_step", initializer=np.int64(step)))
        saver = tf.train.Saver(variables)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            return saver.save(session, os.path.join(path, "model.ckpt"), global_step=step,
                              write_meta_graph=False)
