"""`from_preset` / `save_to_preset`: one entry point for every preset format.

`from_preset` resolves a handle to a local directory (see `handles.resolve`)
and reads its `config.json` to tell the format: keras_gpt's own, a Hugging
Face GPT-2 checkpoint, or a KerasHub GPT-2 preset.
"""

from __future__ import annotations

import os

import keras

from keras_gpt.presets import huggingface, keras_gpt_format, keras_hub
from keras_gpt.presets.errors import PresetError
from keras_gpt.presets.handles import read_json, resolve

FORMATS = ("keras_gpt", "huggingface", "keras_hub")


def preset_format(directory: str, handle: str | None = None) -> str:
    """Which format the preset directory holds: one of `FORMATS`.

    Args:
        directory: a local preset directory.
        handle: the handle it came from, for error messages.

    Example:
    >>> preset_format(model_dir)
    'huggingface'
    """
    handle = handle or directory
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise PresetError(f"Preset {handle!r} has no config.json; is it a preset directory?")
    config = read_json(path, handle)
    if keras_gpt_format.is_keras_gpt_config(config):
        return "keras_gpt"
    if huggingface.is_huggingface_config(config):
        return "huggingface"
    if keras_hub.is_keras_hub_config(config):
        return "keras_hub"
    raise PresetError(
        f"Preset {handle!r}: config.json is neither a keras_gpt, a Hugging Face nor a "
        "KerasHub config."
    )


def from_preset(handle: str, **overrides) -> keras.Model:
    """Loads a `keras_gpt.GPT` from a preset handle; see `GPT.from_preset`.

    Args:
        handle: a registered name, local directory, `hf://owner/name` or
            `kaggle://owner/model/framework/variation[/version]`.
        **overrides: `GPT` arguments replacing the preset's (e.g. `dropout`,
            `dtype`, `attention_implementation`).

    Returns:
        The model.

    Example:
    >>> model = from_preset("hf://openai-community/gpt2")   # doctest: +SKIP
    """
    directory = resolve(handle)
    loaders = {
        "keras_gpt": keras_gpt_format.load_keras_gpt,
        "huggingface": huggingface.load_huggingface,
        "keras_hub": keras_hub.load_keras_hub,
    }
    return loaders[preset_format(directory, handle)](directory, handle, **overrides)


def save_to_preset(
    model: keras.Model,
    directory: str,
    format: str = "keras_gpt",
    tokenizer=None,
    data_description: str | None = None,
    max_shard_size: float | None = 5.0,
) -> None:
    """Writes `model` as a preset directory; see `GPT.save_to_preset`.

    Args:
        model: a `keras_gpt.GPT`.
        directory: output directory, created if needed.
        format: `"keras_gpt"` (config, Keras weights, tokenizer, metadata) or
            `"huggingface"` (a directory `transformers.GPT2LMHeadModel`
            loads).
        tokenizer: optional tokenizer saved alongside (keras_gpt format); for
            the Hugging Face format, its `vocabulary_size` trims a model whose
            vocabulary was padded past the tokenizer's.
        data_description: free text about the training data (keras_gpt format).
        max_shard_size: shard Keras weights above this many GB.

    Example:
    >>> save_to_preset(model, "my_preset", data_description="tinyshakespeare")
    """
    if format == "keras_gpt":
        keras_gpt_format.save_keras_gpt(model, directory, tokenizer=tokenizer,
                                        data_description=data_description,
                                        max_shard_size=max_shard_size)
    elif format == "huggingface":
        size = getattr(tokenizer, "vocabulary_size", None)
        huggingface.save_huggingface(
            model, directory,
            vocabulary_size=min(size, model.vocabulary_size) if size else None,
        )
    else:
        raise ValueError(f"`format` must be 'keras_gpt' or 'huggingface', got {format!r}.")


def load_tokenizer(handle: str):
    """The tokenizer stored in preset `handle`.

    keras_gpt presets keep it in `tokenizer/`; Hugging Face GPT-2 checkpoints
    as `vocab.json` + `merges.txt`; KerasHub presets in `assets/tokenizer/`.

    Args:
        handle: any handle `from_preset` accepts.

    Returns:
        A keras_gpt tokenizer.

    Example:
    >>> tokenizer = load_tokenizer("my_preset")
    >>> tokenizer.encode("Hello")
    """
    directory = resolve(handle)
    kind = preset_format(directory, handle)
    subdir = {"keras_gpt": keras_gpt_format.TOKENIZER_DIR, "huggingface": "",
              "keras_hub": keras_hub.TOKENIZER_ASSETS}[kind]
    path = os.path.join(directory, subdir)
    if not os.path.isdir(path) or not os.listdir(path):
        raise PresetError(f"Preset {handle!r} has no tokenizer files (looked in {path!r}).")
    try:
        from keras_gpt.tokenizers import load_tokenizer as load
    except ImportError:
        raise PresetError("This keras_gpt has no `keras_gpt.tokenizers.load_tokenizer`.") \
            from None
    return load(path)
