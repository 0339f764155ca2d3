"""`keras.layers.Dense` whose int8 mode keeps the activations in float."""

from __future__ import annotations

import keras
from keras import ops

from keras_gpt.backend import int8_matmul
from keras_gpt.backend.layers import WithoutCollectOnDelete

#: The quantization modes keras_gpt's layers implement (a subset of Keras').
QUANTIZATION_MODES = ("int8",)


def check_quantization_mode(mode) -> str:
    """`mode` if keras_gpt can quantize to it, else a one-line `ValueError` naming it."""
    if mode not in QUANTIZATION_MODES:
        raise ValueError(
            f"Unsupported quantization mode {mode!r}: "
            f"keras_gpt supports {list(QUANTIZATION_MODES)}."
        )
    return mode


@keras.saving.register_keras_serializable(package="keras_gpt")
class Dense(WithoutCollectOnDelete, keras.layers.Dense):
    """`keras.layers.Dense`, with weight-only int8 arithmetic once quantized.

    In float modes it is Keras' Dense, variable for variable (same paths, so
    checkpoints and Hugging Face / KerasHub conversions are unchanged).
    `quantize("int8")` is Keras' own: an int8 `kernel` plus a per-output
    `kernel_scale`, saved and loaded by Keras. Only the call differs: Keras
    also rounds each input row to int8 and multiplies int8 by int8, which no
    CPU backend here runs fast (XLA's CPU integer dot is a plain loop, PyTorch
    casts both to int32), and which costs accuracy on GPT-2's large
    activations. Here the input stays float and `keras_gpt.backend.int8_matmul`
    reads the int8 weights (`torch._weight_int8pack_mm` on PyTorch).

    Example:
    >>> layer = Dense(8)
    >>> layer.build((None, 4))
    >>> layer.quantize("int8")
    >>> y = layer(keras.ops.ones((2, 4)))            # (2, 8), weights int8
    """

    def quantize(self, mode=None, type_check=True, config=None):
        check_quantization_mode(mode)
        # Keras' Dense refuses subclasses unless type_check is off; this one
        # keeps Dense's variables, so Keras' quantization applies unchanged.
        super().quantize(mode, type_check=False, config=config)

    def _int8_call(self, inputs, training=None):
        x = int8_matmul(
            inputs, ops.convert_to_tensor(self._kernel), ops.convert_to_tensor(self.kernel_scale)
        )
        if self.bias is not None:
            x = x + ops.cast(self.bias, x.dtype)
        if self.activation is not None:
            x = self.activation(x)
        return x
