"""Checkpoints of a run: every variable, the optimizer state and the step, for exact resume.

A run's `checkpoints/` folder holds one complete checkpoint, `step_NNNNNNNN/`:

```
checkpoints/step_00000250/
  weights.npz      every model variable, keyed by its path in the model
  optimizer.npz    the optimizer's variables, in order
  state.json       step, losses, elapsed time (the loop's state)
  manifest.json    step, the run's settings, and each file's size and SHA-256
```

A checkpoint is one atomic unit: it is written into a new hidden folder, each
file and the folder are fsynced, and one `rename` makes it the checkpoint;
only then is the previous one removed. A process killed at any moment leaves
the previous complete checkpoint or the new one, never a mix (when both are
left, the newer wins). Loading checks the manifest's sizes and checksums
first, so a damaged file is named instead of half-loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import zipfile

import keras
import numpy as np

from keras_gpt.files import atomic_directory

MANIFEST = "manifest.json"
_FILES = ("weights.npz", "optimizer.npz", "state.json")
_NAME = re.compile(r"^step_(\d{8,})$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or does not fit the model or run settings."""


def latest_checkpoint(checkpoints: str | os.PathLike) -> pathlib.Path | None:
    """The newest `step_*` checkpoint folder in `checkpoints`, or None.

    Args:
        checkpoints: a run's `checkpoints/` folder.

    Example:
    >>> latest_checkpoint("runs/pretrain/checkpoints")
    PosixPath('runs/pretrain/checkpoints/step_00000250')
    """
    folder = pathlib.Path(checkpoints)
    if not folder.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return max(steps)[1] if steps else None


def save_checkpoint(
    model: keras.Model, state: dict, checkpoints: pathlib.Path, settings: dict | None = None
) -> pathlib.Path:
    """Saves every model variable, the optimizer state and `state` as one atomic checkpoint.

    Variables are keyed by their path inside the model, LoRA adapters unmerged.

    Args:
        model: a compiled model.
        state: JSON-able loop state; needs `step`.
        checkpoints: the run's `checkpoints/` folder (created if needed).
        settings: the run's settings, kept in the manifest so that a resume
            can check it continues the same run.

    Returns:
        The new checkpoint's folder.
    """
    checkpoints = pathlib.Path(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    weights = {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v) for v in model.weights}
    if len(weights) != len(model.weights):
        raise ValueError(
            "Two model variables share a path; a checkpoint could not tell them apart."
        )
    optimizer = {
        str(i): keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)
    }
    step = int(state["step"])
    final = checkpoints / f"step_{step:08d}"
    # Overwrite: the same step written again (a resumed round) replaces it.
    with atomic_directory(final, overwrite=True, durable=True) as staging:
        np.savez(staging / "weights.npz", **weights)
        np.savez(staging / "optimizer.npz", **optimizer)
        (staging / "state.json").write_text(json.dumps(state, indent=2))
        manifest = {
            "step": step,
            "settings": settings,
            "files": {name: _describe(staging / name) for name in _FILES},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for old in checkpoints.iterdir():
        if old != final and (_NAME.match(old.name) or old.name.endswith(".tmp")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_manifest(checkpoint: pathlib.Path) -> dict:
    """The checked manifest of checkpoint folder `checkpoint`: every file present and intact.

    Raises:
        CheckpointError: naming the file that is missing, truncated or altered,
            and what to do about it.
    """
    checkpoint = pathlib.Path(checkpoint)
    path = checkpoint / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _damaged(path, f"{type(error).__name__}: {error}") from None
    for name in _FILES:
        expected = files.get(name)
        file = checkpoint / name
        if not file.is_file():
            raise _damaged(file, "missing")
        if expected is None or _describe(file) != expected:
            raise _damaged(file, "its size or checksum differs from manifest.json")
    return manifest


def load_checkpoint(model: keras.Model, checkpoint: pathlib.Path) -> dict:
    """Restores a `save_checkpoint` into a compiled model of the same build; returns the state.

    Args:
        model: the compiled model, built as the run that saved the checkpoint.
        checkpoint: a checkpoint folder (`latest_checkpoint`), or a run's
            `checkpoints/` folder (its newest checkpoint is loaded).

    Raises:
        CheckpointError: a damaged checkpoint (naming the file), or variables
            whose names or shapes differ from the model's.
    """
    checkpoint = pathlib.Path(checkpoint)
    if not _NAME.match(checkpoint.name):
        found = latest_checkpoint(checkpoint)
        if found is None:
            raise CheckpointError(f"No checkpoint in {str(checkpoint)!r}.")
        checkpoint = found
    read_manifest(checkpoint)
    model.optimizer.build(model.trainable_variables)
    try:
        with np.load(checkpoint / "weights.npz") as stored:
            weights = {name: stored[name] for name in stored.files}
        with np.load(checkpoint / "optimizer.npz") as stored:
            optimizer = {name: stored[name] for name in stored.files}
        state = json.loads((checkpoint / "state.json").read_text())
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise _damaged(checkpoint, f"{type(error).__name__}: {error}") from None
    expected = {v.path.split("/", 1)[1]: tuple(v.shape) for v in model.weights}
    found = {name: tuple(value.shape) for name, value in weights.items()}
    if expected != found:
        differ = sorted(
            f"{name}: checkpoint {found.get(name, 'absent')}, model {expected.get(name, 'absent')}"
            for name in set(expected) | set(found)
            if expected.get(name) != found.get(name)
        )
        raise CheckpointError(
            f"Checkpoint {str(checkpoint)!r} does not fit this model ({len(differ)} variables "
            f"differ: {'; '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}); resume "
            "with the settings of the run that wrote it."
        )
    variables = model.optimizer.variables
    if len(optimizer) != len(variables) or any(
        optimizer[str(i)].shape != tuple(v.shape) for i, v in enumerate(variables)
    ):
        raise CheckpointError(
            f"Checkpoint {str(checkpoint)!r}: the optimizer state does not fit this "
            "optimizer; resume with the settings of the run that wrote it."
        )
    for v in model.weights:
        v.assign(weights[v.path.split("/", 1)[1]])
    for i, v in enumerate(variables):
        v.assign(optimizer[str(i)])
    return state


@contextlib.contextmanager
def no_tensorflow_import():
    """Keeps Keras' serializer from importing TensorFlow just to rule out its types.

    Keras' `serialize_keras_object` asks whether TensorFlow is installed (importing
    it) to test for `tf.TensorShape`; on PyTorch and JAX that first save of a run
    cost a TensorFlow import, ~5 s of CPU on a 2-core Zen 4. Unimported, TensorFlow
    cannot have made any of the objects, so the test is safely skipped.
    """
    try:
        from keras.src.utils.module_utils import tensorflow
    except ImportError:  # another Keras layout: nothing to skip
        yield
        return
    if "tensorflow" in sys.modules or getattr(tensorflow, "_available", None) is not None:
        yield
        return
    tensorflow._available = False
    try:
        yield
    finally:
        tensorflow._available = None


def _describe(path: pathlib.Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _damaged(path: pathlib.Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint file {str(path)!r} is damaged or incomplete ({reason}): the run cannot "
        "resume from it. Restore the file, or start the run over with --overwrite."
    )
