"""Calling a sublayer from its parent layer's `call`, at eager PyTorch's cost."""

from __future__ import annotations

from typing import Any

import keras

_TORCH = keras.backend.backend() == "torch"
if _TORCH:
    import torch


def call_sublayer(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
    """`layer(*args, **kwargs)`, without Keras' per-call work where it changes nothing.

    `Layer.__call__` converts inputs, resolves `training` and masks, and opens
    name and autocast scopes around `layer.call`. TensorFlow and JAX pay for it
    once, while tracing; eager PyTorch pays on every step, about 60 µs of Python
    a call, 35 calls a forward pass of the Shakespeare recipe's 4-block model,
    ~6 % of its training step (measured on a Zen 4, 2026-12-03). So on PyTorch a
    built layer is called through `call` directly when `__call__` would only
    repeat what the parent's own `__call__` did: its inputs are tensors already,
    the parent passes every argument (keras_gpt's layers pass `training`
    explicitly), its dtype policy is plain float (a mixed-precision layer's
    `__call__` casts its inputs and opens an autocast scope), it is not
    quantized (Keras routes quantized layers to `quantized_call`) and no
    distribution lays out its output. Anything else goes through `layer(...)`
    unchanged.

    Args:
        layer: a sublayer of the calling layer.
        *args: the call's positional arguments, the first one a tensor.
        **kwargs: the call's keyword arguments.

    Example:
    >>> x = call_sublayer(self.mlp_in, x)   # inside a layer's `call`
    """
    if (
        _TORCH
        and layer.built
        and layer.quantization_mode is None
        and layer.compute_dtype == layer.variable_dtype
        and args
        and isinstance(args[0], torch.Tensor)
        and keras.distribution.distribution() is None
    ):
        return layer.call(*args, **kwargs)
    return layer(*args, **kwargs)
