"""The causal language-modelling loss."""

from __future__ import annotations

import keras
from keras import ops

from keras_gpt.backend import Tensor


def token_cross_entropy(labels: Tensor, logits: Tensor) -> Tensor:
    """Per-token sparse cross-entropy (batch, seq) from logits, in float32."""
    return keras.losses.sparse_categorical_crossentropy(
        labels, ops.cast(logits, "float32"), from_logits=True
    )


def causal_lm_loss(labels: Tensor, logits: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the tokens whose weight is non-zero.

    Unlike Keras' `sum_over_batch_size`, the mean divides by the total weight,
    so padded positions neither add loss nor dilute it.

    Args:
        labels: int (batch, seq) next-token ids.
        logits: (batch, seq, vocabulary) unnormalised scores.
        weights: optional (batch, seq) per-token weights (0 ignores a token).
    """
    losses = token_cross_entropy(labels, logits)
    if weights is None:
        return ops.mean(losses)
    weights = ops.cast(weights, "float32")
    return ops.sum(losses * weights) / ops.maximum(ops.sum(weights), 1.0)
