"""keras_gpt's own preset directory: config, Keras weights, tokenizer, metadata.

```
preset/
  config.json          {"module": "keras_gpt", "class_name": "GPT", "config": {...}}
  model.weights.h5     Keras `save_weights` (or model.weights.json + shards when large)
  tokenizer/           `tokenizer.save(...)`, when a tokenizer was given
  metadata.json        keras_gpt and Keras versions, parameter count, date, data
```

Keras weight files store each variable under its layer path, independent of
the backend, so a preset saved on one backend loads on any other. A quantized
model (`GPT.quantize("int8")`) keeps `"quantization": "int8"` in its config:
`GPT(**config)` builds it quantized, so its int8 weights and scales load as
they were saved (about a quarter of the float32 bytes).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
from typing import Any

import keras

from keras_gpt.files import write_json_atomic
from keras_gpt.presets.errors import PresetError
from keras_gpt.presets.handles import preset_file, read_json
from keras_gpt.tokenizers import Tokenizer

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_FILE = "model.weights.json"
TOKENIZER_DIR = "tokenizer"


def is_keras_gpt_config(config: dict) -> bool:
    """Whether a `config.json` was written by `save_keras_gpt`."""
    return config.get("class_name") == "GPT" and str(config.get("module", "")).startswith(
        "keras_gpt"
    )


def save_keras_gpt(
    model: keras.Model,
    directory: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    data_description: str | None = None,
    max_shard_size: float | None = 5.0,
) -> None:
    """Writes `model` (and `tokenizer`) as a keras_gpt preset directory.

    Args:
        model: a `keras_gpt.GPT`.
        directory: output directory, created if needed; earlier weight files
            there are replaced.
        tokenizer: optional tokenizer with a `save(directory)` method.
        data_description: free text about the training data, kept in
            `metadata.json`.
        max_shard_size: weights larger than this many GB are split into
            shards of at most this size; `None` never shards.

    Example:
    >>> save_keras_gpt(model, "my_preset", data_description="tinyshakespeare")
    """
    if tokenizer is not None and not callable(getattr(tokenizer, "save", None)):
        raise ValueError(
            f"`tokenizer` must have a `save(directory)` method, got {type(tokenizer).__name__}."
        )
    os.makedirs(directory, exist_ok=True)
    config = {k: v for k, v in model.get_config().items() if k not in ("name", "trainable")}
    config["dtype"] = model.dtype_policy.name
    _write_json(
        os.path.join(directory, "config.json"),
        {"module": "keras_gpt", "class_name": "GPT", "config": config},
    )

    for name in os.listdir(directory):  # stale weights of an earlier save
        if name.endswith((".weights.h5", ".weights.json")):
            os.remove(os.path.join(directory, name))
    size_gb = sum(_nbytes(v) for v in model.weights) / 1e9
    if max_shard_size is not None and size_gb > max_shard_size:
        model.save_weights(
            os.path.join(directory, SHARDED_WEIGHTS_FILE), max_shard_size=max_shard_size
        )
    else:
        model.save_weights(os.path.join(directory, WEIGHTS_FILE))

    if tokenizer is not None:
        tokenizer.save(os.path.join(directory, TOKENIZER_DIR))
    _write_json(
        os.path.join(directory, "metadata.json"),
        {
            "format": "keras_gpt",
            "format_version": FORMAT_VERSION,
            "keras_gpt_version": importlib.metadata.version("keras-gpt"),
            "keras_version": keras.__version__,
            "saved_on_backend": keras.backend.backend(),
            # Quantized matrices are non-trainable but still parameters.
            "parameter_count": sum(
                _count(v)
                for v in model.weights
                if v.trainable or keras.backend.standardize_dtype(v.dtype) == "int8"
            ),
            "quantization": getattr(model, "quantization", None),
            "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "data_description": data_description,
        },
    )


def load_keras_gpt(cls: type, directory: str, handle: str, **overrides: Any) -> keras.Model:
    """Builds the `keras_gpt.GPT` saved in a keras_gpt preset directory.

    Args:
        cls: the model class to build (`keras_gpt.GPT` or a subclass).
        directory: the preset directory.
        handle: the preset handle, for error messages.
        **overrides: `GPT` arguments replacing the saved config
            (e.g. `dropout=0.1`, `dtype="mixed_bfloat16"`).

    Returns:
        The model with the saved weights.

    Example:
    >>> model = load_keras_gpt(keras_gpt.GPT, "my_preset", "my_preset")
    """
    spec = read_json(os.path.join(directory, "config.json"), handle)
    try:
        model = cls(**{**spec["config"], **overrides})
    except (KeyError, TypeError) as error:
        raise PresetError(
            f"Preset {handle!r}: config.json is not a GPT config ({error})."
        ) from None
    for name in (SHARDED_WEIGHTS_FILE, WEIGHTS_FILE):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            break
    else:
        raise PresetError(f"Preset {handle!r} has no {WEIGHTS_FILE} or {SHARDED_WEIGHTS_FILE}.")
    if name == SHARDED_WEIGHTS_FILE:
        _check_shard_names(directory, read_json(path, handle), handle)
    try:
        model.load_weights(path)
    except Exception as error:  # h5py/Keras errors on truncated or mismatched files
        first_line = (str(error).strip().splitlines() or ["no message"])[0]
        raise PresetError(
            f"Preset {handle!r}: cannot load weights from {name}; the file is corrupt, "
            f"truncated or does not match config.json ({type(error).__name__}: {first_line})."
        ) from None
    return model


def _check_shard_names(directory: str, sharding: dict, handle: str) -> None:
    """Every shard Keras' `model.weights.json` names is a file inside the preset."""
    weight_map = sharding.get("weight_map")
    if not isinstance(weight_map, dict):
        raise PresetError(
            f"Preset {handle!r}: {SHARDED_WEIGHTS_FILE} has no `weight_map` of shard files."
        )
    names = set()
    for value in weight_map.values():
        names.update(value if isinstance(value, list) else [value])
    for shard in sorted(names, key=str):
        preset_file(directory, shard, handle, SHARDED_WEIGHTS_FILE)


def _count(variable) -> int:
    count = 1
    for dim in variable.shape:
        count *= dim
    return count


def _nbytes(variable) -> int:
    count = _count(variable)
    dtype = keras.backend.standardize_dtype(variable.dtype)
    sizes = {"int8": 1, "uint8": 1, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8}
    return count * sizes.get(dtype, 4)


def _write_json(path: str, value: dict) -> None:
    write_json_atomic(path, value)
