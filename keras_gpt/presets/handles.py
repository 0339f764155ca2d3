"""Preset handles → local directories: built-in names, paths, `hf://`, `kaggle://`."""

from __future__ import annotations

import json
import os

from keras_gpt.presets import registry
from keras_gpt.presets.errors import PresetError

HF_PREFIX = "hf://"
KAGGLE_PREFIX = "kaggle://"

# Everything a keras_gpt, Hugging Face or KerasHub preset may hold, except
# pickled PyTorch weights (fetched only when a repository has no safetensors)
# and other frameworks' checkpoints (tf_model.h5, flax, onnx).
_HF_PATTERNS = [
    "config.json",
    "metadata.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "*.weights.h5",
    "*.weights.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer/*",
    "assets/*",
]
_HF_PICKLE_PATTERNS = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]


def resolve(handle: str) -> str:
    """The local directory holding the preset `handle`, downloading it if needed.

    Args:
        handle: a registered name (`"gpt2_small"`), a local directory,
            `"hf://owner/name"` (optionally `"hf://owner/name@revision"`) or
            `"kaggle://owner/model/framework/variation[/version]"`. Downloads go
            through `huggingface_hub` / `kagglehub`, which cache them and show a
            progress bar.

    Returns:
        A path to a directory.

    Example:
    >>> resolve("hf://openai-community/gpt2")     # doctest: +SKIP
    '/root/.cache/huggingface/hub/models--openai-community--gpt2/snapshots/...'
    """
    if not isinstance(handle, (str, os.PathLike)):
        raise PresetError(f"A preset handle must be a string or a path, got {handle!r}.")
    handle = os.fspath(handle)
    if handle.startswith(HF_PREFIX):
        return _download_huggingface(handle)
    if handle.startswith(KAGGLE_PREFIX):
        return _download_kaggle(handle)
    if handle in {info.name for info in registry.list_presets()}:
        info = registry.get(handle)
        if info.weights is None:
            raise PresetError(
                f"Preset {handle!r} is an architecture without published weights. "
                f"Build a randomly initialised one with "
                f"`keras_gpt.GPT(**keras_gpt.presets.get({handle!r}).config)`."
            )
        return resolve(info.weights)
    path = os.path.expanduser(handle)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise PresetError(f"Preset {handle!r} is a file; a preset is a directory.")
    if os.sep in handle or handle.startswith((".", "~")):
        raise PresetError(f"Preset directory {handle!r} does not exist.")
    registry.get(handle)  # raises, listing the known names
    raise AssertionError("unreachable")


def _download_huggingface(handle: str) -> str:
    repo_id, _, revision = handle[len(HF_PREFIX) :].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PresetError(f"Hugging Face handle {handle!r} must look like 'hf://owner/name'.")
    try:
        import huggingface_hub
    except ImportError:
        raise PresetError(
            f"Loading {handle!r} needs `huggingface_hub`: pip install huggingface_hub"
        ) from None
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=revision or None, allow_patterns=_HF_PATTERNS
        )
        if not _has_weights(path):
            path = huggingface_hub.snapshot_download(
                repo_id,
                revision=revision or None,
                allow_patterns=_HF_PATTERNS + _HF_PICKLE_PATTERNS,
            )
    except Exception as error:  # network, auth, missing repo: all named below
        raise PresetError(
            f"Could not download preset {handle!r} from the Hugging Face Hub "
            f"({type(error).__name__}: {_first_line(error)}). Check the name and "
            "your network; files already downloaded are reused from the cache."
        ) from None
    return path


def _download_kaggle(handle: str) -> str:
    kaggle_id = handle[len(KAGGLE_PREFIX) :].strip("/")
    if not 4 <= kaggle_id.count("/") + 1 <= 5:
        raise PresetError(
            f"Kaggle handle {handle!r} must look like "
            "'kaggle://owner/model/framework/variation[/version]'."
        )
    try:
        import kagglehub
    except ImportError:
        raise PresetError(f"Loading {handle!r} needs `kagglehub`: pip install kagglehub") from None
    try:
        return kagglehub.model_download(kaggle_id)
    except Exception as error:  # network, auth, missing model: all named below
        raise PresetError(
            f"Could not download preset {handle!r} from Kaggle "
            f"({type(error).__name__}: {_first_line(error)}). Check the handle "
            "and your network."
        ) from None


def _has_weights(path: str) -> bool:
    names = os.listdir(path)
    return any(n.endswith((".safetensors", ".weights.h5", ".weights.json")) for n in names)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def read_json(path: str, handle: str) -> dict:
    """The parsed JSON file `path` of preset `handle`, or a `PresetError` naming both."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise PresetError(
            f"Preset {handle!r}: cannot read {os.path.basename(path)} ({error})."
        ) from None
