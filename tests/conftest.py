"""Shared fixtures. The suite runs once per backend: set KERAS_BACKEND."""

import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# JAX's persistent compilation cache, fresh for each pytest run: many tests
# compile the same tiny programs (train steps, decode loops), and a cache hit
# skips XLA's compile. Set before JAX is imported, so that the subprocesses
# some tests start share it too. Same compiled code, only less compiling
# (measured here: the JAX pass 7:34 -> 6:45).
_JAX_CACHE = None
if os.environ["KERAS_BACKEND"] == "jax" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JAX_CACHE = tempfile.mkdtemp(prefix="keras_gpt_jax_cache_")
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_JAX_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

import keras  # noqa: E402

import keras_gpt  # noqa: E402

TINY = dict(
    vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, max_sequence_length=12, seed=0
)


@pytest.fixture
def tiny_config() -> dict:
    return dict(TINY)


@pytest.fixture
def tiny_model() -> keras_gpt.GPT:
    return keras_gpt.GPT(**TINY)


@pytest.fixture
def token_batch() -> np.ndarray:
    """(4, 13) int32 ids: enough for inputs (4, 12) and shifted labels."""
    return np.random.default_rng(0).integers(0, TINY["vocabulary_size"], (4, 13)).astype("int32")


def to_numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def pytest_sessionfinish(session, exitstatus):
    if _JAX_CACHE is not None:
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)
