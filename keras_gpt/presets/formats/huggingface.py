"""Hugging Face GPT-2 checkpoints ↔ `keras_gpt.GPT`, in both directions.

A Hugging Face GPT-2 directory holds `config.json` and the weights as
`model.safetensors` (or shards listed in `model.safetensors.index.json`), or
as a pickled `pytorch_model.bin` in older repositories. GPT-2's `Conv1D`
layers store kernels as (in, out), like Keras' `Dense`, and its fused `c_attn`
concatenates q, k and v with the heads contiguous in each, exactly as
`CausalSelfAttention`'s `qkv` kernel does: no weight needs splitting or
reordering, only the token and output embeddings need a transpose when untied.

Loading never runs code from a checkpoint: safetensors are read with the
`safetensors` NumPy API, and a `pytorch_model.bin` only through
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_gpt.files import write_json_atomic
from keras_gpt.presets.errors import PresetError
from keras_gpt.presets.handles import preset_file, read_json
from keras_gpt.presets.weight_map import WeightAssigner

# Hugging Face `activation_function` → `GPT(activation=...)`. The tanh
# approximations are one formula under several names.
_ACTIVATIONS_FROM_HF = {
    "gelu_new": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
    "gelu_fast": "gelu_approximate",
    "gelu": "gelu",
    "gelu_python": "gelu",
    "relu": "relu",
}
_ACTIVATIONS_TO_HF = {"gelu_approximate": "gelu_new", "gelu": "gelu", "relu": "relu"}

# Per-block Hugging Face names → paths inside `block_{i}/`.
_BLOCK_NAMES = {
    "ln_1.weight": "attention_norm/gamma",
    "ln_1.bias": "attention_norm/beta",
    "attn.c_attn.weight": "attention/qkv/kernel",
    "attn.c_attn.bias": "attention/qkv/bias",
    "attn.c_proj.weight": "attention/output/kernel",
    "attn.c_proj.bias": "attention/output/bias",
    "ln_2.weight": "mlp_norm/gamma",
    "ln_2.bias": "mlp_norm/beta",
    "mlp.c_fc.weight": "mlp_in/kernel",
    "mlp.c_fc.bias": "mlp_in/bias",
    "mlp.c_proj.weight": "mlp_out/kernel",
    "mlp.c_proj.bias": "mlp_out/bias",
}
_TOP_NAMES = {
    "wte.weight": "embeddings/token_embeddings",
    "wpe.weight": "embeddings/position_embeddings",
    "ln_f.weight": "final_norm/gamma",
    "ln_f.bias": "final_norm/beta",
}
# Buffers older checkpoints saved: the causal mask and its fill value.
_IGNORED_BLOCK_BUFFERS = ("attn.bias", "attn.masked_bias")


def is_huggingface_config(config: dict) -> bool:
    """Whether a `config.json` is a Hugging Face model config."""
    return "model_type" in config and "class_name" not in config


def config_from_huggingface(hf_config: dict, handle: str) -> dict:
    """`keras_gpt.GPT` keyword arguments for a Hugging Face GPT-2 `config.json`.

    Args:
        hf_config: the parsed `config.json`.
        handle: the preset handle, for error messages.

    Returns:
        A dict for `GPT(**config)`; `dropout` is GPT-2's `resid_pdrop`.

    Example:
    >>> config_from_huggingface({"model_type": "gpt2", "vocab_size": 50257,
    ...     "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}, "x")
    {'vocabulary_size': 50257, 'num_layers': 12, ...}
    """
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise PresetError(
            f"Preset {handle!r} is a Hugging Face {model_type!r} model; only 'gpt2' "
            "checkpoints convert to keras_gpt.GPT."
        )
    unsupported = {
        "scale_attn_weights": (False, "attention without 1/sqrt(head_dim) scaling"),
        "scale_attn_by_inverse_layer_idx": (True, "attention scaled by 1/layer index"),
        "add_cross_attention": (True, "cross-attention layers"),
    }
    for key, (bad, what) in unsupported.items():
        if hf_config.get(key, not bad) == bad:
            raise PresetError(f"Preset {handle!r} uses {what} ({key}={bad}); GPT has none.")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS_FROM_HF:
        raise PresetError(
            f"Preset {handle!r} has activation_function={activation!r}; supported: "
            f"{sorted(_ACTIVATIONS_FROM_HF)}."
        )
    return dict(
        vocabulary_size=hf_config["vocab_size"],
        num_layers=hf_config["n_layer"],
        num_heads=hf_config["n_head"],
        hidden_dim=hf_config["n_embd"],
        intermediate_dim=hf_config.get("n_inner") or 4 * hf_config["n_embd"],
        max_sequence_length=hf_config["n_positions"],
        dropout=hf_config.get("resid_pdrop", 0.0),
        layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-5),
        activation=_ACTIVATIONS_FROM_HF[activation],
        tie_embeddings=hf_config.get("tie_word_embeddings", True),
    )


def load_huggingface(cls: type, directory: str, handle: str, **overrides: Any) -> keras.Model:
    """Builds a `keras_gpt.GPT` from a Hugging Face GPT-2 directory.

    Tensors are streamed one at a time into the model's variables, so the
    model plus one tensor is the most held at once. A checkpoint whose
    embedding has more rows than `vocab_size` (vocabulary padded for speed)
    loads its first `vocab_size` rows.

    Args:
        cls: the model class to build (`keras_gpt.GPT` or a subclass).
        directory: local directory with `config.json` and weights.
        handle: the preset handle, for error messages.
        **overrides: `GPT` arguments replacing the converted config
            (e.g. `dropout=0.0`, `dtype="mixed_bfloat16"`).

    Returns:
        The model, its logits equal to `transformers.GPT2LMHeadModel`'s.

    Example:
    >>> model.save_to_preset("gpt2_like", format="huggingface")
    >>> model = load_huggingface(keras_gpt.GPT, "gpt2_like", "gpt2_like")
    """
    hf_config = read_json(os.path.join(directory, "config.json"), handle)
    config = {**config_from_huggingface(hf_config, handle), **overrides}
    model = cls(**config)
    vocabulary_size = model.vocabulary_size
    assigner = WeightAssigner(model, handle)
    for name, value in _checkpoint_tensors(directory, handle):
        key = name[len("transformer.") :] if name.startswith("transformer.") else name
        if key == "lm_head.weight":
            if model.tie_embeddings:
                continue  # a copy of wte that some checkpoints save anyway
            assigner.assign(
                "lm_head/kernel", _vocab_rows(value, vocabulary_size, name, handle).T, name
            )
        elif key in _TOP_NAMES:
            if key == "wte.weight":
                value = _vocab_rows(value, vocabulary_size, name, handle)
            assigner.assign(_TOP_NAMES[key], value, name)
        elif key.startswith("h."):
            _, index, rest = key.split(".", 2)
            if rest in _IGNORED_BLOCK_BUFFERS:
                continue
            if rest not in _BLOCK_NAMES:
                raise PresetError(f"Preset {handle!r}: unknown checkpoint entry {name!r}.")
            assigner.assign(f"block_{index}/{_BLOCK_NAMES[rest]}", value, name)
        else:
            raise PresetError(f"Preset {handle!r}: unknown checkpoint entry {name!r}.")
        del value
    assigner.check_complete()
    return model


def save_huggingface(
    model: keras.Model,
    directory: str | os.PathLike,
    vocabulary_size: int | None = None,
    special_token_id: int | None = None,
) -> None:
    """Writes `model` as a directory `transformers.GPT2LMHeadModel.from_pretrained` loads.

    Writes `config.json` and `model.safetensors` (float32, with the
    `transformer.` prefix of `save_pretrained`). Sinusoidal position
    embeddings are written out as GPT-2's learned table.

    Args:
        model: a `keras_gpt.GPT`.
        directory: output directory, created if needed.
        vocabulary_size: keep only the first rows of the embedding (and output
            kernel); for a model trained with a vocabulary padded past the
            tokenizer's size. Defaults to `model.vocabulary_size`.
        special_token_id: the tokenizer's end-of-text id, written as
            `bos_token_id` and `eos_token_id` of `config.json` and
            `generation_config.json` (GPT-2 uses one id for both), so that
            transformers' `generate` stops on it.

    Example:
    >>> save_huggingface(model, "exported")
    >>> import transformers
    >>> hf = transformers.GPT2LMHeadModel.from_pretrained("exported")
    """
    save_file = _safetensors("Writing a Hugging Face checkpoint").numpy.save_file

    vocabulary_size = vocabulary_size or model.vocabulary_size
    if not 0 < vocabulary_size <= model.vocabulary_size:
        raise ValueError(
            f"`vocabulary_size` must be in [1, {model.vocabulary_size}], got {vocabulary_size}."
        )
    if model.activation not in _ACTIVATIONS_TO_HF:
        raise ValueError(f"GPT-2 has no activation {model.activation!r}.")
    weights = WeightAssigner(model, str(directory)).variables
    if getattr(model, "lora_config", None):
        raise ValueError(
            "The model has active LoRA adapters, which GPT-2 has no place for: save "
            "with `model.save_to_preset(..., format='huggingface')`, which merges them."
        )
    tensors = {}
    for key, path in _TOP_NAMES.items():
        if key == "wpe.weight" and model.position_embedding == "sinusoidal":
            table = model.embeddings.position_table()
            tensors["transformer." + key] = keras.ops.convert_to_numpy(table)
            continue
        tensors["transformer." + key] = _value_or_zero_bias(weights, path)
    tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][:vocabulary_size]
    for i in range(model.num_layers):
        for key, path in _BLOCK_NAMES.items():
            tensors[f"transformer.h.{i}.{key}"] = _value_or_zero_bias(weights, f"block_{i}/{path}")
    if not model.tie_embeddings:
        kernel = keras.ops.convert_to_numpy(weights["lm_head/kernel"])
        tensors["lm_head.weight"] = kernel[:, :vocabulary_size].T
    tensors = {k: np.ascontiguousarray(v, dtype="float32") for k, v in tensors.items()}
    os.makedirs(directory, exist_ok=True)
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocabulary_size,
        "n_positions": model.max_sequence_length,
        "n_embd": model.hidden_dim,
        "n_layer": model.num_layers,
        "n_head": model.num_heads,
        "n_inner": model.intermediate_dim,
        "activation_function": _ACTIVATIONS_TO_HF[model.activation],
        "layer_norm_epsilon": model.layer_norm_epsilon,
        "resid_pdrop": model.dropout,
        "embd_pdrop": model.dropout,
        "attn_pdrop": model.dropout,
        "tie_word_embeddings": model.tie_embeddings,
        "scale_attn_weights": True,
        "dtype": "float32",
    }
    if special_token_id is not None:
        ids = {"bos_token_id": int(special_token_id), "eos_token_id": int(special_token_id)}
        hf_config.update(ids)
        write_json_atomic(os.path.join(directory, "generation_config.json"), ids)
    write_json_atomic(os.path.join(directory, "config.json"), hf_config)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def _value_or_zero_bias(weights: dict, path: str) -> np.ndarray:
    """A weight as NumPy; a `use_bias=False` model's missing bias is GPT-2's zero bias."""
    if path in weights:
        return keras.ops.convert_to_numpy(weights[path])
    scale = {"bias": "kernel", "beta": "gamma"}[path.rsplit("/", 1)[1]]
    return np.zeros(weights[path.rsplit("/", 1)[0] + "/" + scale].shape[-1], "float32")


def _vocab_rows(value: np.ndarray, vocabulary_size: int, name: str, handle: str) -> np.ndarray:
    if value.shape[0] < vocabulary_size:
        raise PresetError(
            f"Preset {handle!r}: {name!r} has {value.shape[0]} rows, fewer than the "
            f"vocabulary size {vocabulary_size}."
        )
    return value[:vocabulary_size]


def _checkpoint_tensors(directory: str, handle: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) pairs of the checkpoint, safetensors first, one at a time."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index_path = os.path.join(directory, index_name)
        if os.path.exists(index_path):
            weight_map = read_json(index_path, handle).get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise PresetError(
                    f"Preset {handle!r}: {index_name} needs a `weight_map` of tensor names "
                    f"to file names, got {weight_map!r:.200}."
                )
            files = sorted(set(weight_map.values()))
        elif os.path.exists(os.path.join(directory, single)):
            files = [single]
        else:
            continue
        # Every file is checked before the first is opened: a name that leaves
        # the preset directory ("../x", "/etc/passwd") is refused outright.
        paths = [preset_file(directory, file, handle, index_name) for file in files]
        read = _safetensors_tensors if single.endswith(".safetensors") else _torch_tensors
        for path in paths:
            yield from read(path, handle)
        return
    raise PresetError(
        f"Preset {handle!r} has a Hugging Face config.json but no model.safetensors "
        "or pytorch_model.bin."
    )


def _safetensors(purpose: str):
    try:
        import safetensors.numpy
    except ImportError:
        raise PresetError(f"{purpose} needs `safetensors`: pip install 'keras-gpt[hf]'") from None
    return safetensors


def _safetensors_tensors(path: str, handle: str) -> Iterator[tuple[str, np.ndarray]]:
    safe_open = _safetensors(f"Reading preset {handle!r}").safe_open

    try:
        with safe_open(path, framework="numpy") as file:
            names = list(file.keys())
            dtypes = {n: file.get_slice(n).get_dtype() for n in names}
            for name in names:
                if dtypes[name] == "BF16":
                    # NumPy has no bfloat16: read it through torch when present.
                    yield name, _bfloat16_tensor(path, name, handle)
                else:
                    yield name, file.get_tensor(name)
    except PresetError:
        raise
    except Exception as error:  # a truncated or corrupt file
        raise PresetError(
            f"Preset {handle!r}: cannot read {os.path.basename(path)} "
            f"({type(error).__name__}: {error})."
        ) from None


def _bfloat16_tensor(path: str, name: str, handle: str) -> np.ndarray:
    try:
        import torch  # noqa: F401
        from safetensors import safe_open
    except ImportError:
        raise PresetError(
            f"Preset {handle!r} stores bfloat16 weights, which need torch to read."
        ) from None
    with safe_open(path, framework="pt") as file:
        return file.get_tensor(name).float().numpy()


def _torch_tensors(path: str, handle: str) -> Iterator[tuple[str, np.ndarray]]:
    try:
        import torch
    except ImportError:
        raise PresetError(
            f"Preset {handle!r} has only a pickled {os.path.basename(path)}, which "
            "needs torch to read safely (torch.load(weights_only=True)). Install torch, "
            "or convert the checkpoint to model.safetensors."
        ) from None
    try:
        # weights_only refuses any pickle that would run code; mmap (zip
        # files only, torch >= 1.6) avoids reading the whole file at once.
        state = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception as error:
        raise PresetError(
            f"Preset {handle!r}: {os.path.basename(path)} cannot be loaded safely "
            f"with torch.load(weights_only=True) ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). It may be corrupt "
            "or contain code; prefer model.safetensors."
        ) from None
    for name in list(state):
        yield name, state.pop(name).detach().float().numpy()
