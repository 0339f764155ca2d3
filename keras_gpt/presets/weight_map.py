"""Assigning checkpoint arrays to a GPT's variables by path, with checks."""

from __future__ import annotations

import keras
import numpy as np

from keras_gpt.presets.errors import PresetError


class WeightAssigner:
    """Assigns arrays to a model's weights, named by path.

    Paths are relative to the model (`"block_0/attention/qkv/kernel"`), so they
    do not depend on the model's name. Each array is cast to the variable's
    dtype and assigned at once, so a loader can stream a checkpoint one tensor
    at a time instead of holding a second copy of every weight.

    Args:
        model: the freshly built `keras_gpt.GPT` to fill.
        handle: the preset handle, for error messages.

    Example:
    >>> assigner = WeightAssigner(model, "my_preset")
    >>> assigner.assign("final_norm/gamma", np.ones(64, "float32"), "ln_f.weight")
    >>> assigner.check_complete()                   # every other weight is missing
    Traceback (most recent call last):
    ...
    keras_gpt.presets.errors.PresetError: Preset 'my_preset': no weights found for ['block_0/...
    """

    def __init__(self, model: keras.Model, handle: str):
        prefix = model.name + "/"
        # All float weights, trainable or frozen (e.g. under LoRA); integer
        # ones are dropout counters, not checkpoint content.
        self.variables = {
            v.path[len(prefix) :]: v
            for v in model.weights
            if v.path.startswith(prefix) and "float" in str(v.dtype)
        }
        self.handle = handle
        self.assigned: set[str] = set()

    def assign(self, path: str, value: np.ndarray, source: str) -> None:
        """Assigns `value` (from checkpoint entry `source`) to the variable at `path`."""
        if path not in self.variables:
            raise PresetError(
                f"Preset {self.handle!r}: checkpoint entry {source!r} maps to "
                f"{path!r}, which this model does not have."
            )
        variable = self.variables[path]
        if tuple(value.shape) != tuple(variable.shape):
            raise PresetError(
                f"Preset {self.handle!r}: checkpoint entry {source!r} has shape "
                f"{tuple(value.shape)}, but {path!r} has shape {tuple(variable.shape)}."
            )
        variable.assign(np.asarray(value, dtype=variable.dtype))
        self.assigned.add(path)

    def check_complete(self) -> None:
        """Raises if some variable received no value."""
        missing = sorted(set(self.variables) - self.assigned)
        if missing:
            raise PresetError(f"Preset {self.handle!r}: no weights found for {missing}.")
