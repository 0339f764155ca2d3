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


def preset_path(handle: str) -> str:
    """`handle`, or `handle/best` for a training run directory (which keeps its best model there).

    Args:
        handle: a preset handle or directory, or a `keras-gpt pretrain`/`finetune` output folder.

    Example:
    >>> preset_path("my_preset")                  # a preset directory: itself
    'my_preset'
    >>> import shutil
    >>> _ = shutil.copytree("my_preset", "runs/shakespeare/best")
    >>> preset_path("runs/shakespeare")           # a run directory: its best model
    'runs/shakespeare/best'
    """
    handle = os.fspath(handle)
    best = os.path.join(handle, "best")
    if (
        os.path.isdir(handle)
        and not os.path.exists(os.path.join(handle, "config.json"))
        and os.path.isdir(best)
    ):
        return best
    return handle


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


def _allowed_roots(directory: str) -> list[str]:
    """Real paths a preset directory's files may resolve into.

    The directory itself; for a Hugging Face cache snapshot
    (`.../models--owner--name/snapshots/REVISION`), also the repository's
    `blobs/` folder, where huggingface_hub keeps the files the snapshot links to.
    """
    root = os.path.realpath(directory)
    roots = [root]
    snapshots, _ = os.path.split(root)
    repository, kind = os.path.split(snapshots)
    if kind == "snapshots" and os.path.basename(repository).startswith("models--"):
        roots.append(os.path.join(repository, "blobs"))
    return roots


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep) for root in roots)


def preset_file(directory: str, name: object, handle: str, source: str) -> str:
    """The path of file `name` of preset `directory`, checked to stay inside it.

    For every file name a preset's own files give (an index's `weight_map`,
    Keras' shard map): `name` must be a relative path that stays inside the
    directory with `..` resolved, and with symlinks resolved too (see
    `check_preset_tree`). Nothing is opened.

    Args:
        directory: the local preset directory.
        name: the file name, as the preset gives it.
        handle: the preset handle, for error messages.
        source: where the name comes from, e.g. `"model.safetensors.index.json"`.

    Returns:
        `os.path.join(directory, name)`.

    Example:
    >>> preset_file("my_preset", "model-00001-of-00002.safetensors", "my_preset",
    ...             "model.safetensors.index.json")
    'my_preset/model-00001-of-00002.safetensors'
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise PresetError(f"Preset {handle!r}: {source} names a file {name!r}; expected a name.")
    normal = os.path.normpath(name)
    path = os.path.join(directory, name)
    if (
        os.path.isabs(name)
        or normal == os.pardir
        or normal.startswith(os.pardir + os.sep)
        or not _inside(path, _allowed_roots(directory))
    ):
        raise PresetError(
            f"Preset {handle!r}: {source} names {name!r}, which resolves outside the preset "
            "directory; refusing to read it (a preset may only read its own files)."
        )
    return path


def check_preset_tree(directory: str, handle: str) -> None:
    """Raises a `PresetError` if a file or folder of preset `directory` links outside it.

    Walks the directory without following links, and checks that every
    symlink resolves inside it (or, for a Hugging Face cache snapshot, inside
    its repository's `blobs/`): a preset's fixed files (`config.json`, weights,
    tokenizer) are then its own.

    Args:
        directory: the local preset directory.
        handle: the preset handle, for error messages.

    Example:
    >>> check_preset_tree("my_preset", "my_preset")     # returns None, or raises
    """
    roots = _allowed_roots(directory)
    for folder, folders, files in os.walk(directory):
        for name in folders + files:
            path = os.path.join(folder, name)
            if os.path.islink(path) and not _inside(path, roots):
                relative = os.path.relpath(path, directory)
                raise PresetError(
                    f"Preset {handle!r}: {relative!r} links to {os.path.realpath(path)!r}, "
                    "outside the preset directory; refusing to read it (a preset may only "
                    "read its own files)."
                )


def read_json(path: str, handle: str) -> dict:
    """The parsed JSON file `path` of preset `handle`, or a `PresetError` naming both."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise PresetError(
            f"Preset {handle!r}: cannot read {os.path.basename(path)} ({error})."
        ) from None
