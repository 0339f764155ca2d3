"""Metrics for causal language models."""

from __future__ import annotations

import keras
from keras import ops

from keras_gpt.model.losses import token_cross_entropy


@keras.saving.register_keras_serializable(package="keras_gpt")
class Perplexity(keras.metrics.Metric):
    """exp(mean token cross-entropy), weighted by `sample_weight`.

    Accumulates the summed cross-entropy and the summed weights over batches, so
    the result is the perplexity of all tokens seen, not a mean of batch
    perplexities.

    Args:
        name: metric name.

    Example:
    >>> model.compile(optimizer="adamw", metrics=[Perplexity()])
    """

    def __init__(self, name: str = "perplexity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        losses = token_cross_entropy(y_true, y_pred)
        weights = (
            ops.ones_like(losses)
            if sample_weight is None
            else ops.cast(ops.broadcast_to(sample_weight, ops.shape(losses)), "float32")
        )
        self.total.assign_add(ops.sum(losses * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.exp(self.total / ops.maximum(self.count, 1e-9))

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)
