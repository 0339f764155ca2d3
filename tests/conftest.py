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
# some tests start share it too; pytest-xdist's workers share one directory
# (named after their parent, the pytest process that removes it at the end).
# Same compiled code, only less compiling (measured here: the JAX pass 7:34 -> 6:45).
_WORKER = "PYTEST_XDIST_WORKER" in os.environ
_JAX_CACHE = None
if os.environ["KERAS_BACKEND"] == "jax" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _pytest_pid = os.getppid() if _WORKER else os.getpid()
    _JAX_CACHE = os.path.join(tempfile.gettempdir(), f"keras_gpt_jax_cache_{_pytest_pid}")
    os.makedirs(_JAX_CACHE, exist_ok=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_JAX_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

# XLA (JAX's compiler, and TensorFlow's where a test asks for it) compiles each test's
# tiny programs with LLVM's cheapest settings: the same XLA programs, whose float
# semantics LLVM keeps, built with less optimisation, which shapes this small do not
# miss (the time it saves: docs/benchmarks.md, "make test on a fresh clone"). Set in the
# environment, so that the subprocesses tests start (other backends included) compile
# the same way.
_CHEAP_XLA = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
_xla_flags = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(_xla_flags + [f for f in _CHEAP_XLA if f not in _xla_flags])

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


#: The slowest files first, longest first (by the test time each pass's `--durations`
#: shows in `make test`). pytest-xdist's `loadfile` hands each worker a whole file when it
#: is nearly done with its last, in this order (the Makefile passes
#: `--no-loadscope-reorder`): the long files start early and the short ones fill in, so
#: neither worker idles long at the end.
SLOW_FILES = [
    "test_cross_backend.py",  # one fixture trains and loads on every backend
    "test_pretraining.py",
    "test_export.py",
    "test_serving_sampling.py",
    "test_gpt.py",
    "test_distribution.py",
    "test_quantization.py",
    "test_modern.py",
    "test_finetuning.py",
    "test_cli.py",
    "test_runs.py",
    "test_docstrings.py",
    "test_presets.py",
    "test_cross_backend_recipe.py",
    "test_generation.py",
    "test_serving.py",
    "test_evaluation.py",
    "test_cross_backend_int8.py",
    "test_docs.py",
    "test_layers.py",
    "test_conversion.py",
    "test_serving_limits.py",
    "test_slots.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable


def pytest_sessionfinish(session, exitstatus):
    if _JAX_CACHE is not None and not _WORKER:
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)
