"""Dropout whose masks are identical on TensorFlow, JAX and PyTorch."""

from __future__ import annotations

import keras
from keras import ops

from keras_gpt.backend import replica_index
from keras_gpt.initializers import fresh_seed

# Two primes below 2**15 with p % 3 == 2, so x -> x**3 is a bijection mod p and
# every intermediate product stays below 2**31: the hash runs in int32 with no
# overflow, which every backend computes the same way.
_P1 = 32717
_P2 = 32693
_ROUNDS = 4


HASH_RANGE = _P1 * _P2


def hash_ints(shape, seed: int, counter, offset=0):
    """Uniform int32 values in [0, HASH_RANGE) from a counter-based hash.

    Element i of the flattened `shape` is hashed from the pair
    (j mod P1, j mod P2) with j = i + `offset`, which is unique for the first
    P1*P2 (about 1.07e9) values of j, keyed by `seed` and `counter`. Each round
    is a bijection on the pair, so distinct elements never collide.

    `offset` places this tensor inside a larger one: the hash of rows
    `[r, r + n)` of a batch is that of the whole batch's rows, with `offset` the
    number of elements before row r. The arithmetic is int32 and exact only
    while `offset + size` stays below P1*P2 (`HASH_RANGE`); past that, indices
    wrap and masks repeat.

    Args:
        shape: output shape (static or dynamic dimensions).
        seed: integer key (the layer's seed).
        counter: int32 scalar tensor, advanced once per call.
        offset: int or int32 scalar tensor added to every element index.
    """
    size = 1
    for dim in shape:
        size = size * dim
    index = ops.arange(0, size, dtype="int32")
    if not (isinstance(offset, int) and offset == 0):
        index = index + ops.cast(offset, "int32")
    counter = ops.cast(counter, "int32")
    key1 = (counter % _P1 + seed % _P1) % _P1
    key2 = ((counter // _P1) % _P2 + (seed // _P1) % _P2) % _P2
    a = index % _P1
    b = index % _P2
    # Each round is a = (a**3 + b + key1 + r) mod P1, then the same for b with the new a.
    # One reduction after the cube's first product and one at the end suffice:
    # (P - 1)**2 plus the three small terms stays below 2**31, and integer `%`
    # is the costly op on CPUs (PyTorch runs it element by element).
    for r in range(_ROUNDS):
        a = ((a * a % _P1) * a + b + key1 + r) % _P1
        b = ((b * b % _P2) * b + a + key2 + r) % _P2
    return ops.reshape(a * _P2 + b, shape)


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
