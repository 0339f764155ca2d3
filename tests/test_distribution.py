"""Distributed training on each backend's own engine equals one-device training.

The engine tests spawn their own processes (JAX with 8 virtual CPU devices,
two JAX processes joined by `distribution.initialize` over gloo, two torchrun
processes over gloo, TensorFlow with logical CPU devices), so each runs only in
the pytest run of the backend it drives.

All three train with dropout 0.1: each replica offsets the dropout hash by the
elements of the replicas before it (`keras_gpt.backend.replica_index`), so the
replicas draw one device's mask for the global batch.

Tolerances: 1e-5 on losses and weights after 20 steps (10 for the two JAX
processes; the issue's bound).
What is measured is float32 summation order: the batch (or a weight matrix)
is split, so partial sums are added in a different order; the measured
differences are ~5e-7.
"""

import importlib
import json
import os
import re
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from helpers import ROOT, run_python

import keras_gpt
from keras_gpt import distribution
from keras_gpt.backend import replica_index

TESTS = os.path.dirname(os.path.abspath(__file__))
BACKEND = keras.backend.backend()
TOLERANCE = 1e-5


def only_on(backend):
    return pytest.mark.skipif(
        BACKEND != backend, reason=f"drives {backend}; runs in the {backend} pytest run"
    )


def run_worker(args, timeout=600, **env):
    # One thread each: the workers start several processes on a 2-core machine.
    env = {"OMP_NUM_THREADS": "1", **env}
    return run_python(args, env=env, timeout=timeout, cwd=ROOT).stdout


# -- layout map and configuration (every backend) --------------------------------


def fake_mesh(shape=(2, 4), axes=("batch", "model")):
    devices = [f"cpu:{i}" for i in range(int(np.prod(shape)))]
    return keras.distribution.DeviceMesh(shape, axes, devices)


def test_layout_map_keys_match_every_gpt_weight_they_target():
    # Keras matches layout keys against whole paths: a key that matches no
    # variable shards nothing, silently. Every rule must hit real weights.
    model = keras_gpt.GPT(
        **{
            **dict(
                vocabulary_size=50,
                num_layers=2,
                num_heads=2,
                hidden_dim=16,
                max_sequence_length=12,
                seed=0,
            ),
            "tie_embeddings": False,
        }
    )
    layouts = keras_gpt.GPT.get_layout_map(fake_mesh())
    paths = [v.path for v in model.weights]
    for key in layouts:
        hits = [p for p in paths if re.fullmatch(key, p)]
        assert hits, f"layout key {key!r} matches no weight"
    sharded = {p for p in paths for key in layouts if re.fullmatch(key, p)}
    for suffix in (
        "token_embeddings",
        "qkv/kernel",
        "attention/output/kernel",
        "mlp_in/kernel",
        "mlp_out/kernel",
    ):
        assert any(p.endswith(suffix) for p in sharded), suffix
    assert not any("norm" in p for p in sharded)  # LayerNorms stay replicated


def test_layout_map_and_configure_reject_bad_input():
    with pytest.raises(ValueError, match="'tensor'"):
        distribution.layout_map(fake_mesh(), model_axis="tensor")
    with pytest.raises(ValueError, match="hidden_dim.*48.*5"):
        distribution.check_model_parallel(dict(hidden_dim=48), 5)
    with pytest.raises(ValueError, match="model_parallel"):
        distribution.configure(model_parallel=0)
    assert distribution.configure() is None  # nothing requested: nothing set


def test_replica_index_is_zero_outside_a_data_parallel_engine():
    # Outside DDP and tf.distribute (and always on JAX), dropout hashes are not offset.
    assert replica_index() == 0


@pytest.mark.skipif(BACKEND == "jax", reason="on JAX `configure` works")
def test_configure_names_the_engine_to_use_on_other_backends():
    with pytest.raises(ValueError, match="tf_strategy|ddp_fit"):
        distribution.configure(data_parallel=True)


# -- JAX: keras.distribution on 8 virtual devices ---------------------------------


@only_on("jax")
def test_jax_data_and_model_parallel_match_one_device():
    result = json.loads(run_worker([os.path.join(TESTS, "distribution_worker_jax.py")]))
    assert result["devices"] == 8 and result["steps"] == 20
    assert result["dp_loss_diff"] < TOLERANCE
    assert result["dp_weight_diff"] < TOLERANCE
    assert result["mp_loss_diff"] < TOLERANCE
    assert result["mp_weight_diff"] < TOLERANCE

    # The layout map really shards: read back from the placed arrays.
    layouts, shapes = result["mp_layouts"], result["mp_shard_shapes"]
    for path, axes in layouts.items():
        if path.endswith(("qkv/kernel", "mlp_in/kernel", "token_embeddings")):
            assert axes == [None, "model"], path
        elif path.endswith(("attention/output/kernel", "mlp_out/kernel")):
            assert axes == ["model", None], path
        elif "norm" in path:
            assert "model" not in axes, path
    qkv = next(p for p in shapes if p.endswith("block_0/attention/qkv/kernel"))
    assert shapes[qkv] == [32, 96 // 4]  # a quarter of the columns per device

    # Checkpoints: sharded → one device, and one device → sharded.
    assert result["mp_to_single_diff"] == 0.0
    assert result["mp_to_single_iterations"] == 20
    assert result["mp_to_single_device_count"] == 1
    assert result["single_to_mp_diff"] == 0.0
    qkv = next(p for p in result["single_to_mp_layouts"] if p.endswith("qkv/kernel"))
    assert result["single_to_mp_layouts"][qkv] == [None, "model"]
    assert result["resumed_weight_diff"] < TOLERANCE
    assert result["configure_mesh"] == [4, 2]
    assert result["configure_axes"] == ["batch", "model"]


class BatchLogs(keras.callbacks.Callback):
    """Every logged value of every training step, by name."""

    def on_train_begin(self, logs=None):
        self.logs = {}

    def on_train_batch_end(self, batch, logs=None):
        for key, value in logs.items():
            self.logs.setdefault(key, []).append(float(value))


# -- JAX: two processes on localhost, joined by `distribution.initialize` -----------


def import_worker(name):
    """A worker script in tests/ as a module (for its constants and data helpers)."""
    sys.path.insert(0, TESTS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(TESTS)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(script, args_per_process, timeout, log_dir):
    """Starts one process per argument list; fails clearly if any fails or hangs.

    Output goes to files (a full pipe would block a process while the other is waited on).
    """
    environ = dict(os.environ, OMP_NUM_THREADS="1")
    logs = [log_dir / f"process_{rank}.log" for rank in range(len(args_per_process))]
    processes = []
    for args, log in zip(args_per_process, logs):
        with open(log, "w") as out:
            processes.append(
                subprocess.Popen(
                    [sys.executable, script, *args],
                    env=environ,
                    cwd=os.path.dirname(TESTS),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + timeout
    hung = []
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
            hung.append(False)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            hung.append(True)
    # Report a crash before the hangs it causes (the other process waits for it).
    for rank in sorted(range(len(processes)), key=lambda r: hung[r]):
        if processes[rank].returncode:
            reason = (
                f"was still running after {timeout} s and was killed"
                if hung[rank]
                else f"failed (exit {processes[rank].returncode})"
            )
            pytest.fail(
                f"process {rank} of {len(processes)} {reason}; "
                f"its output ends with:\n{logs[rank].read_text()[-3000:]}"
            )


@only_on("jax")
def test_jax_two_processes_match_one_device(tmp_path):
    # Two OS processes with two CPU devices each, joined over gloo (JAX's CPU
    # cross-process collectives); DataParallel over the four global devices,
    # each process feeding its half of every global batch.
    worker = import_worker("distribution_worker_jax_multiprocess")
    port = str(free_port())
    run_processes(
        os.path.join(TESTS, "distribution_worker_jax_multiprocess.py"),
        [[str(rank), port, str(tmp_path)] for rank in range(worker.PROCESSES)],
        timeout=120,
        log_dir=tmp_path,
    )
    run = np.load(tmp_path / "run.npz")
    assert int(run["processes"]) == 2 and int(run["local_devices"]) == 2
    assert int(run["devices"]) == int(run["batch_devices"]) == 4
    assert int(run["iterations"]) == worker.STEPS

    single = keras_gpt.GPT(**worker.CONFIG)
    single.compile(optimizer=keras.optimizers.AdamW(worker.LEARNING_RATE))
    tokens, steps = worker.global_batches(), BatchLogs()
    single.fit(
        tokens[:, :-1],
        tokens[:, 1:],
        batch_size=worker.BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[steps],
    )
    np.testing.assert_allclose(run["losses"], steps.logs["loss"], rtol=0, atol=TOLERANCE)
    trained = np.load(tmp_path / "weights.npz")
    assert len(trained.files) == len(single.weights)
    for i, variable in enumerate(single.weights):  # creation order: paths differ
        np.testing.assert_allclose(
            trained[str(i)],
            keras.ops.convert_to_numpy(variable.value),
            rtol=0,
            atol=TOLERANCE,
            err_msg=variable.path,
        )


# -- PyTorch: torchrun + DistributedDataParallel -----------------------------------


def weights(model):
    return [keras.ops.convert_to_numpy(v.value) for v in model.weights]


def max_weight_diff(a, b):
    return max(
        float(np.abs(np.asarray(x, "float64") - y).max()) for x, y in zip(weights(a), weights(b))
    )


@only_on("torch")
def test_torch_ddp_two_processes_match_one_device(tmp_path):
    worker = import_worker("distribution_worker_torch")
    x, y = worker.data()
    steps, batch = worker.STEPS, worker.BATCH

    def fit(model, rows):
        logs = BatchLogs()
        model.fit(
            {k: v[rows] for k, v in x.items()},
            y[rows],
            batch_size=batch,
            shuffle=False,
            verbose=0,
            callbacks=[logs],
        )
        return logs.logs

    # One device: 20 steps in one go, and 10 + checkpoint + 10.
    full = worker.compiled(keras_gpt.GPT(**worker.CONFIG))
    full_logs = fit(full, slice(0, steps * batch))
    half = steps // 2 * batch
    first = worker.compiled(keras_gpt.GPT(**worker.CONFIG))
    fit(first, slice(0, half))
    first.save(tmp_path / "single_10.keras")
    second_logs = fit(first, slice(half, None))

    run_worker(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            os.path.join(TESTS, "distribution_worker_torch.py"),
            str(tmp_path),
        ]
    )
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["world"] == 2

    # Fresh run: the same per-step loss and perplexity (epoch means, as `fit`
    # logs them) and, through the rank-0 checkpoint, the same weights.
    for key in ("loss", "perplexity"):
        assert len(history["fresh"][key]) == steps
        np.testing.assert_allclose(
            history["fresh"][key],
            full_logs[key],
            rtol=0,
            atol=TOLERANCE * max(1, full_logs[key][0]),
        )
    ddp = keras.saving.load_model(tmp_path / "ddp.keras")  # written by DDP, read here
    assert int(ddp.optimizer.iterations.numpy()) == steps
    assert max_weight_diff(ddp, full) < TOLERANCE

    # Resumed from the one-device checkpoint: continues like one device does.
    np.testing.assert_allclose(
        history["resumed"]["loss"], second_logs["loss"], rtol=0, atol=TOLERANCE
    )
    resumed = keras.saving.load_model(tmp_path / "resumed.keras")
    assert int(resumed.optimizer.iterations.numpy()) == steps
    assert max_weight_diff(resumed, first) < TOLERANCE
    print(
        json.dumps(
            {  # measured differences, shown with `pytest -s`
                "loss": float(
                    np.abs(np.subtract(history["fresh"]["loss"], full_logs["loss"])).max()
                ),
                "weights": max_weight_diff(ddp, full),
                "resumed_weights": max_weight_diff(resumed, first),
            }
        )
    )


# -- TensorFlow: MirroredStrategy over logical CPU devices ---------------------------


@only_on("tensorflow")
def test_tensorflow_mirrored_strategy_matches_one_device():
    result = json.loads(run_worker([os.path.join(TESTS, "distribution_worker_tf.py")]))
    assert result["replicas"] == 2
    for case in ("tied", "untied"):
        # 160 rows in batches of 8, on one device and on two replicas.
        assert result[case]["steps"] == [20, 20, 20, 20], case
        assert result[case]["loss_diff"] < TOLERANCE, case
        assert result[case]["weight_diff"] < TOLERANCE, case
        # Keras logs the global loss (not replicas × loss).
        assert abs(result[case]["mirrored_first_loss"] - np.log(64)) < 0.2
    assert result["mirrored_to_single_diff"] == 0.0
    assert result["single_to_mirrored_diff"] == 0.0
    assert result["resumed_weight_diff"] < TOLERANCE


@only_on("tensorflow")
def test_tensorflow_embedding_gradients_are_dense():
    # Keras' TensorFlow Adam squares `tf.IndexedSlices` gradients slice by slice,
    # so a row gathered twice got g1² + g2² instead of (g1 + g2)² (one device,
    # untied embeddings, a repeated token; or any embedding under MirroredStrategy).
    import tensorflow as tf

    model = keras_gpt.GPT(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=12,
        tie_embeddings=False,
        seed=0,
    )
    ids = np.array([[3, 3, 3, 7]], "int32")  # token 3 repeated
    tables = [model.embeddings.token_embeddings, model.embeddings.position_embeddings]
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=ids, y=ids, y_pred=model(ids, training=True))
    for table, gradient in zip(tables, tape.gradient(loss, [t.value for t in tables])):
        assert not isinstance(gradient, tf.IndexedSlices), table.path
        assert tuple(gradient.shape) == tuple(table.shape)
