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
    ~6 % of its training step (measured on a Zen 4). So on PyTorch a
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


class WithoutCollectOnDelete:
    """A layer mixin: deleting a variable attribute skips Keras' `gc.collect()`.

    Keras' `Layer.__delattr__` runs a full garbage collection for every
    variable a layer drops, which `quantize("int8")` does for each float kernel
    it replaces: nine collections for a 2-block GPT, each 1-2 s in a process that
    has TensorFlow loaded (`GPT.quantize` took 15.9 s on a tiny model, 0.9 s
    without them). The variable is untracked and deleted as Keras does; Python
    frees it when its last reference goes, and its own collector finds cycles.
    """

    def __delattr__(self, name: str) -> None:
        value = getattr(self, name, None)
        if isinstance(value, keras.Variable):
            self._untrack_variable(value)
            # The class after keras.layers.Layer in the MRO: what Keras' own
            # __delattr__ calls once it has collected.
            super(keras.layers.Layer, self).__delattr__(name)
        else:
            super().__delattr__(name)
