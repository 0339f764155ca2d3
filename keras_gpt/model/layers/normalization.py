"""Normalization layers: GPT-2's LayerNorm or RMSNorm, chosen by name."""

from __future__ import annotations

import keras
from keras import ops

from keras_gpt.backend import Tensor

NORMALIZATIONS = ("layernorm", "rmsnorm")


def rms_normalize(x: Tensor, epsilon: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x²) + ε) over the last axis, computed in float32.

    Written out (not `keras.ops.rms_normalization`, which PyTorch, JAX and
    TensorFlow each implement their own way) so that every backend computes
    the same float32 expression; half-precision inputs are normalized in
    float32 and cast back, since their squares overflow and lose precision.
    """
    y = ops.cast(x, "float32")
    y = y * ops.rsqrt(ops.mean(ops.square(y), axis=-1, keepdims=True) + epsilon)
    return ops.cast(y, x.dtype)


@keras.saving.register_keras_serializable(package="keras_gpt")
class RMSNorm(keras.layers.Layer):
    """Root-mean-square normalization over the last axis, with an optional learned scale.

    Without a scale (`scale=False`, modded-nanogpt's and nanochat's choice) the
    layer has no weights at all; with one it is Llama's `RMSNorm` (a per-channel
    weight named `scale`, initialised to 1), so Llama-family checkpoints can map
    onto it.

    Args:
        epsilon: added to the mean square before the square root.
        scale: learn a per-channel multiplier.

    Example:
    >>> norm = RMSNorm(scale=False)
    >>> y = norm(keras.ops.ones((2, 3, 8)))              # (2, 3, 8), each row RMS 1
    """

    def __init__(self, epsilon: float = 1e-6, scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.scale = bool(scale)

    def build(self, input_shape):
        if self.scale:
            self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")
        self.built = True

    def call(self, inputs: Tensor) -> Tensor:
        y = rms_normalize(inputs, self.epsilon)
        if self.scale:
            y = y * ops.cast(self.gamma, y.dtype)
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon, "scale": self.scale}


def make_normalization(
    normalization: str, epsilon: float, use_bias: bool, scale: bool, dtype, name: str
) -> keras.layers.Layer:
    """The block's and model's norm layer for a `normalization` setting.

    `"layernorm"` is Keras' `LayerNormalization` (GPT-2's, with an offset when
    `use_bias`; variable paths unchanged, so checkpoints and conversions
    keep working); `"rmsnorm"` is `RMSNorm`, scaled when `scale`.
    """
    if normalization == "layernorm":
        return keras.layers.LayerNormalization(
            epsilon=epsilon, center=use_bias, dtype=dtype, name=name
        )
    if normalization == "rmsnorm":
        return RMSNorm(epsilon=epsilon, scale=scale, dtype=dtype, name=name)
    raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}, got {normalization!r}.")
