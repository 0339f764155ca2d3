"""`from_preset` / `save_to_preset`: one entry point for every preset format.

`from_preset` resolves a handle to a local directory (see `handles.resolve`)
and reads its `config.json` to tell the format: keras_gpt's own, a Hugging
Face GPT-2 checkpoint, or a KerasHub GPT-2 preset.

The loaders are given the model class (as KerasHub's loaders are): they build
`model_class(**config)` and fill its variables by path, so they never import
the model and `MyGPT.from_preset(...)` returns a `MyGPT`. Users call
`keras_gpt.GPT.from_preset`, which passes its class.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_gpt.presets.errors import PresetError
from keras_gpt.presets.formats import huggingface, keras_hub
from keras_gpt.presets.formats import keras_gpt as keras_gpt_format
from keras_gpt.presets.handles import check_preset_tree, read_json, resolve
from keras_gpt.tokenizers import Tokenizer

FORMATS = ("keras_gpt", "huggingface", "keras_hub")


def preset_format(directory: str, handle: str | None = None) -> str:
    """Which format the preset directory holds: one of `FORMATS`.

    Args:
        directory: a local preset directory.
        handle: the handle it came from, for error messages.

    Example:
    >>> preset_format("my_preset")
    'keras_gpt'
    >>> model.save_to_preset("exported", format="huggingface")
    >>> preset_format("exported")
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


def from_preset(handle: str | os.PathLike, model_class: type, **overrides: Any) -> keras.Model:
    """Loads a model from a preset handle; see `GPT.from_preset`.

    Args:
        handle: a registered name, local directory, `hf://owner/name` or
            `kaggle://owner/model/framework/variation[/version]`.
        model_class: the class to build (`keras_gpt.GPT` or a subclass).
        **overrides: `GPT` arguments replacing the preset's (e.g. `dropout`,
            `dtype`, `attention_implementation`).

    Returns:
        The model.

    Example:
    >>> model = from_preset("hf://openai-community/gpt2", keras_gpt.GPT)  # doctest: +SKIP
    """
    handle = os.fspath(handle) if isinstance(handle, os.PathLike) else handle
    directory = resolve(handle)
    # Before anything is read: no file of the preset may link outside it.
    check_preset_tree(directory, handle)
    loaders = {
        "keras_gpt": keras_gpt_format.load_keras_gpt,
        "huggingface": huggingface.load_huggingface,
        "keras_hub": keras_hub.load_keras_hub,
    }
    return loaders[preset_format(directory, handle)](model_class, directory, handle, **overrides)


def save_to_preset(
    model: keras.Model,
    directory: str | os.PathLike,
    format: str = "keras_gpt",
    tokenizer: Tokenizer | None = None,
    data_description: str | None = None,
    max_shard_size: float | None = 5.0,
) -> None:
    """Writes `model` as a directory `GPT.from_preset` reads back (what
    `GPT.save_to_preset` does, after folding any LoRA adapters into a copy).

    Args:
        model: a `keras_gpt.GPT`.
        directory: output directory, created if needed.
        format: `"keras_gpt"` (config, Keras weights, tokenizer, metadata) or
            `"huggingface"` (a directory `transformers.GPT2LMHeadModel`
            loads).
        tokenizer: optional tokenizer with a `save(directory)` method, saved
            alongside. For the Hugging Face format it is saved into the
            directory itself (a `BytePairTokenizer` writes the `vocab.json` +
            `merges.txt` transformers reads), and its `vocabulary_size` trims
            a model whose vocabulary was padded past the tokenizer's.
        data_description: free text about the training data (keras_gpt format).
        max_shard_size: shard Keras weights above this many GB.

    A model with LoRA adapters enabled is refused here; `GPT.save_to_preset`
    saves it with the adapters folded into its kernels, as a plain `GPT`
    (keep the adapters themselves with `model.save_lora`).

    Example:
    >>> save_to_preset(model, "my_preset", data_description="tinyshakespeare")
    """
    if any("lora_kernel" in weight.path for weight in model.weights):
        raise ValueError(
            "The model has LoRA adapters: save it with `model.save_to_preset(...)`, which "
            "folds them into a copy, or call `model.merge_lora()` first."
        )
    modern = model.modern_options()
    if modern and format != "keras_gpt":
        raise ValueError(
            f"GPT-2 ({format!r} format) has no place for this model's "
            f"{', '.join(f'{k}={v!r}' for k, v in modern.items())}: "
            "save it in the 'keras_gpt' format."
        )
    if model.quantization and format != "keras_gpt":
        raise ValueError(
            f"A {model.quantization} model saves only in the 'keras_gpt' format, "
            f"not {format!r} (Hugging Face and KerasHub GPT-2 store float weights)."
        )
    if format == "keras_gpt":
        keras_gpt_format.save_keras_gpt(
            model,
            directory,
            tokenizer=tokenizer,
            data_description=data_description,
            max_shard_size=max_shard_size,
        )
    elif format == "huggingface":
        size = getattr(tokenizer, "vocabulary_size", None)
        huggingface.save_huggingface(
            model,
            directory,
            vocabulary_size=min(size, model.vocabulary_size) if size else None,
            special_token_id=_end_of_text_id(tokenizer),
        )
        if tokenizer is not None:
            # A GPT-2 BPE tokenizer writes vocab.json + merges.txt, which
            # transformers' GPT2Tokenizer reads too.
            tokenizer.save(directory)
    else:
        raise ValueError(f"`format` must be 'keras_gpt' or 'huggingface', got {format!r}.")


def _end_of_text_id(tokenizer: Tokenizer | None) -> int | None:
    """The id Hugging Face configs call bos/eos: `<|endoftext|>`, else the first special token."""
    specials = list(getattr(tokenizer, "special_tokens", None) or [])
    if not specials:
        return None
    end = tokenizer.end_of_text_id
    return int(tokenizer.token_to_id(specials[0])) if end is None else end


def load_tokenizer(handle: str | os.PathLike) -> Tokenizer:
    """The tokenizer of preset `handle`, or the one saved in a tokenizer directory.

    keras_gpt presets keep it in `tokenizer/`; Hugging Face GPT-2 checkpoints
    as `vocab.json` + `merges.txt`; KerasHub presets in `assets/tokenizer/`. A
    directory without a model (`config.json`) is read by `Tokenizer.load`: one
    `Tokenizer.save` wrote, or GPT-2's vocabulary files alone.

    Args:
        handle: any handle `from_preset` accepts, or a tokenizer directory.

    Returns:
        A keras_gpt tokenizer.

    Example:
    >>> tokenizer = load_tokenizer("my_preset")
    >>> tokenizer.encode("Hello")
    [72, 101, 108, 108, 111]
    >>> load_tokenizer("my_preset/tokenizer").encode("Hello")   # a tokenizer directory
    [72, 101, 108, 108, 111]
    """
    handle = os.fspath(handle) if isinstance(handle, os.PathLike) else handle
    if os.path.isdir(handle) and not os.path.isfile(os.path.join(handle, "config.json")):
        return Tokenizer.load(handle)  # a tokenizer directory (no model): as saved
    directory = resolve(handle)
    check_preset_tree(directory, handle)
    kind = preset_format(directory, handle)
    subdir = {
        "keras_gpt": keras_gpt_format.TOKENIZER_DIR,
        "huggingface": "",
        "keras_hub": keras_hub.TOKENIZER_ASSETS,
    }[kind]
    path = os.path.join(directory, subdir)
    if not os.path.isdir(path) or not os.listdir(path):
        raise PresetError(f"Preset {handle!r} has no tokenizer files (looked in {path!r}).")
    try:
        return Tokenizer.load(path)
    except ValueError as error:
        raise PresetError(f"Preset {handle!r}: cannot read its tokenizer ({error}).") from None
