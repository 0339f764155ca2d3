"""Counting a model's parameters from its config, without allocating its weights."""

from __future__ import annotations

import math

import keras

from keras_gpt.model.gpt import GPT


def count_parameters(config: dict, model_class: type | None = None) -> int:
    """Trainable parameters of `model_class(**config)`, counted on the built model.

    The model is built inside a `keras.StatelessScope`, where Keras defers
    creating variable values: only shapes exist, so even GPT-2 XL counts in
    milliseconds without allocating its 6 GB.

    Args:
        config: keyword arguments of the model class (e.g. a preset's
            `keras_gpt.presets.get(name).config`).
        model_class: `keras_gpt.GPT` (default) or a subclass.

    Returns:
        The number of trainable weights (dropout counters excluded).

    Example:
    >>> count_parameters(keras_gpt.presets.get("gpt2_small").config)
    124439808
    """
    cls = model_class or GPT
    # A quantized config counts as its float model (quantizing reads values).
    config = {k: v for k, v in config.items() if k != "quantization"}
    with keras.StatelessScope(initialize_variables=False):
        model = cls(**config)
    count = sum(math.prod(v.shape) for v in model.trainable_weights)
    _forget_deferred(model.weights)
    return int(count)


def _forget_deferred(variables) -> None:
    """Drops `variables` from Keras' list of variables waiting to be initialized.

    Keras keeps variables created in a `StatelessScope` in a global list and
    initializes them when the next outermost `StatelessScope` exits (JAX's
    generation traces under one). There is no public API to discard them, so
    this edits that list (`keras.src.backend.common.global_state`).
    """
    from keras.src.backend.common import global_state

    pending = global_state.get_global_attribute("uninitialized_variables")
    if pending:
        ids = {id(v) for v in variables}
        pending[:] = [v for v in pending if id(v) not in ids]
