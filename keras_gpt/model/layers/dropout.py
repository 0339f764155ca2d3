"""Dropout whose masks are identical on TensorFlow, JAX and PyTorch."""

from __future__ import annotations

import keras
from keras import ops

from keras_gpt.backend import replica_index
from keras_gpt.random import HASH_RANGE, fresh_seed, hash_ints


def _replica_offset(shape):
    """Elements before this replica's slice of a data-parallel global batch."""
    replica = replica_index()
    if isinstance(replica, int) and replica == 0:
        return 0
    size = 1
    for dim in shape:
        size = size * dim
    if isinstance(replica, int) and isinstance(size, int):
        return replica * size
    return ops.cast(replica, "int32") * ops.cast(size, "int32")


@keras.saving.register_keras_serializable(package="keras_gpt")
class PortableDropout(keras.layers.Layer):
    """Inverted dropout with the same mask on every backend.

    Keras' `Dropout` draws its mask from the backend's own generator, so the
    same seed gives different masks on TensorFlow, JAX and PyTorch. This layer
    hashes (seed, call counter, element index) with int32 `keras.ops`, so its
    masks, and therefore training with dropout, match across backends. The
    counter is a non-trainable variable: it is saved with the model and a
    resumed run continues the same sequence of masks.

    Under PyTorch DDP (`ddp_fit`) and `tf.distribute.MirroredStrategy`, each
    replica offsets the index by the elements of the replicas before it
    (`keras_gpt.backend.replica_index`), so the replicas' masks together are
    the mask one device draws for the global batch: inputs must be
    batch-first, and the global batch split into equal contiguous slices.

    Args:
        rate: fraction of the inputs to drop, in [0, 1).
        seed: integer seed; `None` picks one at random.

    Example:
    >>> layer = PortableDropout(0.1, seed=0)
    >>> y = layer(keras.ops.ones((2, 8)), training=True)
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"`rate` must be in [0, 1), got {rate}.")
        self.rate = float(rate)
        self.seed = fresh_seed() if seed is None else int(seed)

    def build(self, input_shape=None):
        # Created in build (not __init__) so the variable's path nests under
        # the parent layers: checkpoints are keyed by path.
        self.counter = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="counter",
        )
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        # Compare integers, not floats: a float division rounds differently
        # across backends and would flip elements at the threshold.
        threshold = int(round(self.rate * HASH_RANGE))
        shape = ops.shape(inputs)
        keep = hash_ints(shape, self.seed, self.counter, _replica_offset(shape)) >= threshold
        # Advance only after the mask is drawn: on TensorFlow and PyTorch the
        # variable is read lazily, so reading it after `assign` sees the new value.
        self.counter.assign(self.counter + 1)
        scale = ops.cast(1.0 / (1.0 - self.rate), inputs.dtype)
        return ops.where(keep, inputs * scale, ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
