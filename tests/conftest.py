"""Shared fixtures. The suite runs once per backend: set KERAS_BACKEND."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

import keras_gpt  # noqa: E402

TINY = dict(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
            max_sequence_length=12, seed=0)


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
