"""Checkpoints of a run: every variable, the optimizer state and the step, for exact resume."""

from __future__ import annotations

import json
import os
import pathlib

import keras
import numpy as np

from keras_gpt.training.history import write_json_atomic


def save_checkpoint(model, state: dict, directory: pathlib.Path) -> None:
    """Saves every model variable, the optimizer state and `state` (step, ...).

    Variables are keyed by their path inside the model, LoRA adapters unmerged;
    `state.json` is written last, so it only ever points at complete files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights = {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v) for v in model.weights}
    if len(weights) != len(model.weights):
        raise ValueError(
            "Two model variables share a path; a checkpoint could not tell them apart."
        )
    optimizer = {
        str(i): keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)
    }
    for name, arrays in (("weights", weights), ("optimizer", optimizer)):
        np.savez(directory / f"{name}.tmp.npz", **arrays)
        os.replace(directory / f"{name}.tmp.npz", directory / f"{name}.npz")
    write_json_atomic(directory / "state.json", state)


def load_checkpoint(model, directory: pathlib.Path) -> dict:
    """Restores a `save_checkpoint` into a compiled model of the same build; returns the state."""
    model.optimizer.build(model.trainable_variables)
    with np.load(directory / "weights.npz") as weights:
        for v in model.weights:
            v.assign(weights[v.path.split("/", 1)[1]])
    with np.load(directory / "optimizer.npz") as optimizer:
        for i, v in enumerate(model.optimizer.variables):
            v.assign(optimizer[str(i)])
    return json.loads((directory / "state.json").read_text())
