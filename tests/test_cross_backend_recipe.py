"""The recipe's optimizer on every backend, and a checkpoint resumed on another backend.

Runs tests/cross_backend_worker.py (`--recipe`, `--resume`) under TensorFlow, JAX and
PyTorch in separate processes; marked `cross_backend` (run once)."""

import os

import numpy as np
import pytest
from helpers import BACKEND_PAIRS, BACKENDS, run_job

pytestmark = pytest.mark.cross_backend

WORKER = os.path.join(os.path.dirname(__file__), "cross_backend_worker.py")


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory):
    """`pretrain` on each backend (JAX also stops a copy after its first round), then
    that JAX checkpoint resumed on PyTorch; see the worker's `recipe_config`."""
    out = tmp_path_factory.mktemp("recipe")
    for backend in BACKENDS:
        run_job([WORKER, out, "--recipe"], backend=backend)
    run_job([WORKER, out, "--resume"], backend="torch")
    runs = {b: dict(np.load(out / f"recipe_{b}.npz")) for b in BACKENDS}
    runs["jax→torch"] = dict(np.load(out / "resumed_torch.npz"))
    return runs


def assert_runs_match(a: dict, b: dict) -> None:
    """The summation-order drift of test_cross_backend.py, over 12 steps. Measured
    (2-core Xeon, every pair and the resumed run): losses within 1.5e-7 relative,
    learning rates equal, weights within 5.7e-7 and the optimizer state (Adam's
    moments, the step counter; the gradient accumulators, empty at a round's end)
    within 5.6e-9 absolute. Bounds: losses 1e-5 relative (as there), rates 1e-6
    relative (float32 schedule arithmetic may differ by ulps), weights 1e-5 and
    optimizer state 1e-6 absolute (its second moments are ~1e-6 and below, so a
    lost or misordered state fails)."""
    np.testing.assert_array_equal(a["step"], b["step"])
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=0, err_msg=key)
    np.testing.assert_allclose(a["learning_rate"], b["learning_rate"], rtol=1e-6, atol=0)
    for prefix, atol in (("weights:", 1e-5), ("optimizer:", 1e-6)):
        keys = sorted(k for k in a if k.startswith(prefix))
        assert keys and keys == sorted(k for k in b if k.startswith(prefix)), prefix
        for key in keys:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)


@pytest.mark.parametrize("a, b", BACKEND_PAIRS)
def test_recipe_optimizer_runs_match(recipe_runs, a, b):
    """Warm-up and cosine schedule, global clipnorm, decay exclusions, gradient
    accumulation and dropout: the same run on every backend."""
    assert_runs_match(recipe_runs[a], recipe_runs[b])
    rates = recipe_runs[a]["learning_rate"]
    assert rates[0] > rates[1] > rates[2]  # past its warm-up, the rate decays
    assert recipe_runs[a]["val_loss"][-1] < recipe_runs[a]["val_loss"][0]  # it learns


@pytest.mark.parametrize("uninterrupted", ["torch", "jax"])
def test_checkpoint_from_jax_resumes_on_torch(recipe_runs, uninterrupted):
    """A run stopped after its first round on JAX and resumed on PyTorch logs the
    curve of an uninterrupted run (on either backend), ending in the same state."""
    resumed = recipe_runs["jax→torch"]
    assert list(resumed["step"]) == [4, 8, 12]
    assert_runs_match(resumed, recipe_runs[uninterrupted])
