"""Randomness that is the same on every Keras backend: seeds, initializers, a counter hash.

Keras' own initializers, dropout and `keras.random` use each backend's random
generator, so one seed gives different numbers on TensorFlow, JAX and PyTorch.
keras_gpt draws initial weights with NumPy (`SeededNormal`, one `derive_seed`
per weight) and per-element noise (dropout masks, sampling noise) from
`hash_ints`, a counter-based hash in int32 `keras.ops`: both are identical
everywhere. The model's layers and the generation samplers share this module.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def derive_seed(seed: int, *path: int) -> int:
    """Returns a 31-bit seed derived from `seed` and a path of integers.

    Used to give every weight of a model its own independent stream from one
    user seed, without depending on the order in which weights are created.

    Args:
        seed: the parent seed.
        *path: integers naming the child (e.g. block index, weight index).

    Example:
    >>> derive_seed(0, 1) != derive_seed(0, 2)
    True
    """
    state = np.random.SeedSequence([int(seed), *map(int, path)]).generate_state(1)
    return int(state[0] >> 1)


def fresh_seed() -> int:
    """A random 31-bit seed, for layers built with `seed=None`."""
    return int(np.random.SeedSequence().generate_state(1)[0] >> 1)


@keras.saving.register_keras_serializable(package="keras_gpt")
class SeededNormal(keras.initializers.Initializer):
    """Normal initializer drawn with NumPy: identical on every backend.

    Args:
        stddev: standard deviation of the normal distribution.
        seed: integer seed; the same seed gives the same array everywhere.

    Example:
    >>> init = SeededNormal(stddev=0.02, seed=1)
    >>> tuple(init((4, 8)).shape)
    (4, 8)
    """

    def __init__(self, stddev: float = 0.02, seed: int = 0):
        self.stddev = float(stddev)
        self.seed = int(seed)

    def __call__(self, shape, dtype=None):
        rng = np.random.default_rng(self.seed)
        values = rng.standard_normal(size=tuple(shape), dtype=np.float32)
        values *= np.float32(self.stddev)
        dtype = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        return keras.ops.convert_to_tensor(values, dtype=dtype)

    def get_config(self) -> dict:
        return {"stddev": self.stddev, "seed": self.seed}


# Two primes below 2**15 with p % 3 == 2, so x -> x**3 is a bijection mod p and
# every intermediate product stays below 2**31: the hash runs in int32 with no
# overflow, which every backend computes the same way.
_P1 = 32717
_P2 = 32693
_ROUNDS = 4


HASH_RANGE = _P1 * _P2


def _rounds(a, b, key1, key2, rounds=_ROUNDS):
    """`rounds` keyed rounds on the pair (a mod P1, b mod P2); a bijection of the pair.

    Works on Python ints and int32 tensors alike (the same `*`, `+` and `%`),
    with values in [0, P) in and out.
    """
    # Each round is a = (a**3 + b + key1 + r) mod P1, then the same for b with the new a.
    # One reduction after the cube's first product and one at the end suffice:
    # (P - 1)**2 plus the three small terms stays below 2**31, and integer `%`
    # is the costly op on CPUs (PyTorch runs it element by element).
    for r in range(rounds):
        a = ((a * a % _P1) * a + b + key1 + r) % _P1
        b = ((b * b % _P2) * b + a + key2 + r) % _P2
    return a, b


def _split(value):
    """The pair (value mod P1, (value // P1) mod P2): unique for value < HASH_RANGE."""
    return value % _P1, (value // _P1) % _P2


def hash_ints(shape, seed, counter, offset=0):
    """Uniform int32 values in [0, HASH_RANGE) from a counter-based hash.

    Element i of the flattened `shape` is hashed from the pair
    (j mod P1, j mod P2) with j = i + `offset`, which is unique for the first
    P1*P2 (about 1.07e9) values of j, keyed by `seed` and `counter`. Each round
    is a bijection on the pair, so distinct elements never collide.

    The key is the counter's pair put through two rounds keyed by the seed's
    pair, so seed and counter meet only through the cube: seeds s and s + 1
    give unrelated values at every counter (adding the seed to the counter
    would make seed s + 1 repeat seed s one counter later). Two scalar rounds
    suffice there (the four element rounds follow) and keep the per-call op
    count low, which PyTorch's per-token decoding pays for. Seeds are taken
    mod `HASH_RANGE`.

    `offset` places this tensor inside a larger one: the hash of rows
    `[r, r + n)` of a batch is that of the whole batch's rows, with `offset` the
    number of elements before row r. The arithmetic is int32 and exact only
    while `offset + size` stays below P1*P2 (`HASH_RANGE`); past that, indices
    wrap and masks repeat.

    Args:
        shape: output shape (static or dynamic dimensions).
        seed: integer key (a Python int, e.g. the layer's seed, or an int32
            scalar tensor, e.g. a sampling seed given at run time).
        counter: int32 scalar tensor, advanced once per call.
        offset: int or int32 scalar tensor added to every element index.

    Example:
    >>> counter = keras.ops.convert_to_tensor(0, "int32")
    >>> tuple(hash_ints((2, 3), seed=7, counter=counter).shape)   # same values everywhere
    (2, 3)
    """
    size = 1
    for dim in shape:
        size = size * dim
    index = ops.arange(0, size, dtype="int32")
    if not (isinstance(offset, int) and offset == 0):
        index = index + ops.cast(offset, "int32")
    if isinstance(seed, int):
        # Python ints: exact at any size, and the same values as the int32 path below.
        seed = seed % HASH_RANGE
    else:
        seed = ops.cast(seed, "int32")
    key1, key2 = _rounds(*_split(ops.cast(counter, "int32")), *_split(seed), rounds=2)
    a, b = _rounds(index % _P1, index % _P2, key1, key2)
    return ops.reshape(a * _P2 + b, shape)
