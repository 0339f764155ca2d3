"""KerasHub GPT-2 presets → `keras_gpt.GPT`.

A KerasHub preset holds `config.json` (a serialized `GPT2Backbone`),
`model.weights.h5` and `assets/tokenizer/vocabulary.json` + `merges.txt`.
KerasHub itself reads the weights (so every preset version it supports works),
then they are copied by path: KerasHub keeps q, k and v as separate
(hidden, heads, head_dim) kernels, which concatenate into `qkv`'s
(hidden, 3·hidden) kernel in the same q | k | v, head-major layout.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import keras
import numpy as np

from keras_gpt.presets.errors import PresetError
from keras_gpt.presets.handles import read_json
from keras_gpt.presets.weight_map import WeightAssigner

TOKENIZER_ASSETS = os.path.join("assets", "tokenizer")


def is_keras_hub_config(config: dict) -> bool:
    """Whether a `config.json` is a serialized KerasHub model."""
    return "keras_hub" in str(config.get("module", "")) + str(config.get("registered_name", ""))


def load_keras_hub(cls: type, directory: str, handle: str, **overrides: Any) -> keras.Model:
    """Builds a `keras_gpt.GPT` from a KerasHub `GPT2Backbone` preset directory.

    Needs `keras-hub` installed (`pip install keras-hub`). The KerasHub
    backbone and the new model coexist while the weights are copied (two
    copies, briefly); the backbone is released before returning.

    Args:
        cls: the model class to build (`keras_gpt.GPT` or a subclass).
        directory: the preset directory.
        handle: the preset handle, for error messages.
        **overrides: `GPT` arguments replacing the converted config.

    Returns:
        The model, its logits equal to the KerasHub backbone's.

    Example:
    >>> model = load_keras_hub(keras_gpt.GPT, "gpt2_tiny_preset", "gpt2_tiny_preset")
    """
    spec = read_json(os.path.join(directory, "config.json"), handle)
    if spec.get("class_name") != "GPT2Backbone":
        raise PresetError(
            f"Preset {handle!r} is a KerasHub {spec.get('class_name')!r}; only "
            "GPT2Backbone presets convert to keras_gpt.GPT."
        )
    try:
        import keras_hub
    except ImportError:
        raise PresetError(
            f"Preset {handle!r} is a KerasHub preset; reading it needs keras-hub "
            "(pip install keras-hub)."
        ) from None
    config = _gpt_config(spec["config"])
    try:
        backbone = keras_hub.models.GPT2Backbone.from_preset(directory)
    except Exception as error:  # corrupt weights, unknown config keys
        first_line = (str(error).strip().splitlines() or ["no message"])[0]
        raise PresetError(
            f"Preset {handle!r}: KerasHub cannot load it ({type(error).__name__}: {first_line})."
        ) from None
    model = cls(**{**config, **overrides})
    _copy_backbone_weights(model, backbone, handle)
    del backbone  # the only reference left to KerasHub's copy of the weights
    gc.collect()
    return model


def _gpt_config(hub_config: dict) -> dict:
    """`GPT` arguments equal to a `GPT2Backbone` config (GPT-2's block, tied head)."""
    return dict(
        vocabulary_size=hub_config["vocabulary_size"],
        num_layers=hub_config["num_layers"],
        num_heads=hub_config["num_heads"],
        hidden_dim=hub_config["hidden_dim"],
        intermediate_dim=hub_config["intermediate_dim"],
        max_sequence_length=hub_config["max_sequence_length"],
        dropout=hub_config.get("dropout", 0.0),
        layer_norm_epsilon=1e-5,  # fixed in GPT2Backbone
        activation="gelu_approximate",
        tie_embeddings=True,
    )


def _copy_backbone_weights(model: keras.Model, backbone: keras.Model, handle: str) -> None:
    """Assigns every weight of `model` from `backbone`'s, by path; raises a
    `PresetError` naming a weight that is missing or has the wrong shape."""
    assigner = WeightAssigner(model, handle)
    source = {w.path: w for w in backbone.weights}

    def read(path):
        if path not in source:
            raise PresetError(f"Preset {handle!r}: KerasHub weight {path!r} is missing.")
        return keras.ops.convert_to_numpy(source[path])

    c = model.hidden_dim
    assigner.assign(
        "embeddings/token_embeddings",
        read("token_embedding/embeddings"),
        "token_embedding/embeddings",
    )
    assigner.assign(
        "embeddings/position_embeddings",
        read("position_embedding/embeddings"),
        "position_embedding/embeddings",
    )
    for i in range(model.num_layers):
        hub, ours = f"transformer_layer_{i}", f"block_{i}"
        attention = f"{hub}/self_attention"
        assigner.assign(
            f"{ours}/attention/qkv/kernel",
            np.concatenate(
                [read(f"{attention}/{n}/kernel").reshape(c, c) for n in ("query", "key", "value")],
                axis=1,
            ),
            f"{attention}/{{query,key,value}}/kernel",
        )
        assigner.assign(
            f"{ours}/attention/qkv/bias",
            np.concatenate(
                [read(f"{attention}/{n}/bias").reshape(c) for n in ("query", "key", "value")]
            ),
            f"{attention}/{{query,key,value}}/bias",
        )
        assigner.assign(
            f"{ours}/attention/output/kernel",
            read(f"{attention}/attention_output/kernel").reshape(c, c),
            f"{attention}/attention_output/kernel",
        )
        for hub_name, our_name in (
            ("self_attention/attention_output/bias", "attention/output/bias"),
            ("self_attention_layer_norm/gamma", "attention_norm/gamma"),
            ("self_attention_layer_norm/beta", "attention_norm/beta"),
            ("feedforward_layer_norm/gamma", "mlp_norm/gamma"),
            ("feedforward_layer_norm/beta", "mlp_norm/beta"),
            ("feedforward_intermediate_dense/kernel", "mlp_in/kernel"),
            ("feedforward_intermediate_dense/bias", "mlp_in/bias"),
            ("feedforward_output_dense/kernel", "mlp_out/kernel"),
            ("feedforward_output_dense/bias", "mlp_out/bias"),
        ):
            assigner.assign(f"{ours}/{our_name}", read(f"{hub}/{hub_name}"), f"{hub}/{hub_name}")
    assigner.assign("final_norm/gamma", read("layer_norm/gamma"), "layer_norm/gamma")
    assigner.assign("final_norm/beta", read("layer_norm/beta"), "layer_norm/beta")
    assigner.check_complete()
