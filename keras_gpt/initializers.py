"""Initializers that draw the same numbers on every Keras backend.

Keras' own initializers use each backend's random generator, so one seed gives
different weights on TensorFlow, JAX and PyTorch. These draw with NumPy instead
and hand the array to the backend, which makes initial weights bit-identical.
"""

from __future__ import annotations

import keras
import numpy as np


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
