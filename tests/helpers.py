"""Shared test helpers: run Python in a subprocess (on a chosen backend), run a job in a
long-lived process per backend (`run_job`), run a worker on every backend and collect its
arrays, one harness for every layer (`run_layer_test`),
the real corpus tests read (`corpus_text`), and the tiny models and runs tests build
(`tiny_gpt`, `tiny_config`).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import pathlib
import select
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import keras
import numpy as np
import pytest

BACKENDS = ("tensorflow", "jax", "torch")
#: Every pair of backends, for the cross-backend comparisons.
BACKEND_PAIRS = list(itertools.combinations(BACKENDS, 2))
TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent

#: tinyshakespeare: KERAS_GPT_SHAKESPEARE (as for the recipes' `data = "shakespeare"`),
#: else the project machines' sibling ../shared/data, which a clone does not have. Point
#: KERAS_GPT_SHAKESPEARE at a missing file to test as a fresh clone does.
SHAKESPEARE = pathlib.Path(
    os.environ.get("KERAS_GPT_SHAKESPEARE")
    or ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
)
#: tinyshakespeare's length in characters: the size of the stand-in corpus.
SHAKESPEARE_CHARS = 1_115_394


def shakespeare_text() -> str:
    """tinyshakespeare itself, for tests of figures tied to it; skips the test without it."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not here (set KERAS_GPT_SHAKESPEARE)")
    return SHAKESPEARE.read_text(encoding="utf-8")


@functools.cache
def corpus_text() -> str:
    """A real text corpus of about a megabyte, present everywhere.

    tinyshakespeare where it is here; otherwise the start of Python's own
    standard-library source (what `make demo` trains on), cut to
    tinyshakespeare's length, so a fresh clone runs the same tests on as much
    text instead of skipping them.
    """
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")
    from keras_gpt.data.corpus import stdlib_corpus

    return stdlib_corpus(max_bytes=2 * SHAKESPEARE_CHARS)[:SHAKESPEARE_CHARS]


def tiny_gpt(**overrides):
    """A GPT small enough for tests of the code around the model: 1 block, 2 heads, 8 wide,
    32 positions, byte vocabulary (257 ids, `ByteTokenizer`'s), seed 0; `overrides` change
    any argument."""
    from keras_gpt import GPT

    settings = dict(
        vocabulary_size=257,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        max_sequence_length=32,
        seed=0,
    )
    return GPT(**{**settings, **overrides})


def tiny_text(lines: int = 300) -> str:
    """A repetitive text a tiny model learns in a few steps: 7 distinct lines, repeated."""
    return "".join(
        f"line {i % 7}: the quick brown fox jumps over the lazy dog.\n" for i in range(lines)
    )


def tiny_config(tmp_path: pathlib.Path, out_name: str = "run", lines: int = 300, **overrides):
    """A `PretrainConfig` for a run that takes seconds: `tiny_text(lines)` written to
    `tmp_path/corpus.txt`, characters as tokens, a 1-block 16-wide model, windows of 16,
    batches of 4, 10 steps evaluated every 2 on 2 batches, dropout 0.1, a fixed peak
    FLOP/s (no probe) and no sample; the run goes to `tmp_path/out_name`. `overrides`
    change any setting."""
    from keras_gpt.training.pretrain import PretrainConfig

    data = tmp_path / "corpus.txt"
    data.write_text(tiny_text(lines))
    base = PretrainConfig(
        data=str(data),
        tokenizer="char",
        out=str(tmp_path / out_name),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        sequence_length=16,
        batch_size=4,
        max_steps=10,
        eval_interval=2,
        eval_batches=2,
        warmup_steps=2,
        dropout=0.1,
        learning_rate=1e-2,
        peak_flops=1e9,
        verbose=0,
        sample_tokens=0,
    )
    return base.update(overrides)


def _child_env(backend: str | None, env: dict | None = None) -> dict:
    """This process's environment with `KERAS_BACKEND=backend` (unless `None`) and `env`
    (a value of `None` removes the variable)."""
    child_env = dict(os.environ)
    if backend is not None:
        child_env["KERAS_BACKEND"] = backend
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    return child_env


def run_python(
    args: Sequence[str],
    backend: str | None = None,
    env: dict | None = None,
    timeout: float = 600,
    check: bool = True,
    cwd: str | os.PathLike | None = None,
) -> subprocess.CompletedProcess:
    """`python ARGS...` in a fresh process; fails the test with its stderr unless it succeeds.

    Args:
        args: arguments after `python` (a script and its arguments, or `-c CODE`).
        backend: `KERAS_BACKEND` for the child; `None` keeps this process's.
        env: extra environment variables (a value of `None` removes the variable).
        timeout: seconds before the child is killed (the test then fails).
        check: assert a zero exit status.
        cwd: working directory (default: this one).
    """
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        env=_child_env(backend, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(map(str, args))[:200]} failed on {backend or 'this backend'} "
            f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc


class _JobServer:
    """A tests/job_server.py process for one backend (`None`: plain TensorFlow)."""

    def __init__(self, backend: str | None):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="keras_gpt_job_server_", suffix=".log")
        self.process = subprocess.Popen(
            [sys.executable, str(TESTS / "job_server.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=_child_env(None, {"KERAS_BACKEND": backend}),
            text=True,
        )

    def run(self, args: Sequence[str], cwd: str | None, timeout: float) -> dict:
        self.process.stdin.write(json.dumps({"args": list(args), "cwd": cwd}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:  # timed out, or the process died (a crash in native code)
            self.process.kill()
            self.process.wait()
            self.log.seek(0)
            tail = self.log.read()[-4000:]
            self.close()
            return {"status": None, "stderr": tail}
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


_JOB_SERVERS: dict[str | None, _JobServer] = {}


@atexit.register
def _close_job_servers() -> None:
    for server in _JOB_SERVERS.values():
        server.close()


def run_job(
    args: Sequence[str],
    backend: str | None,
    timeout: float = 600,
    cwd: str | os.PathLike | None = None,
) -> None:
    """`python ARGS...` on `backend`, in a process kept for that backend's jobs; fails the
    test with the job's stderr unless it exits with status 0.

    For workers whose work, not whose process, is under test (a cross-backend
    comparison's half on one backend): the job runs as a script in a fresh process
    would, but skips the 8-15 s import of Keras and its backend after the first job
    (tests/job_server.py). Tests of a process itself (its exit status, output,
    environment, a kill) use `run_python`.

    Args:
        args: a script and its arguments, or `-c CODE` and its arguments.
        backend: `KERAS_BACKEND` for the job; `None`: plain TensorFlow, no Keras.
        timeout: seconds before the job's process is killed (the test then fails).
        cwd: working directory for the job (default: this process's).
    """
    server = _JOB_SERVERS.get(backend)
    if server is None or server.process.poll() is not None:
        server = _JOB_SERVERS[backend] = _JobServer(backend)
    args = [str(a) for a in args]
    reply = server.run(args, None if cwd is None else str(cwd), timeout)
    if reply["status"] is None:
        del _JOB_SERVERS[backend]
    assert reply["status"] == 0, (
        f"{' '.join(args)[:200]} failed on {backend or 'plain TensorFlow'} "
        f"(exit {reply['status']}; None: the process died or timed out):\n{reply['stderr']}"
    )


def run_on_backends(
    worker: str | os.PathLike,
    out_dir: str | os.PathLike,
    *args: str,
    backends: Sequence[str] = BACKENDS,
    timeout: float = 600,
) -> dict[str, dict[str, np.ndarray]]:
    """Runs `python WORKER OUT_DIR ARGS...` once per backend; returns each one's arrays.

    The worker protocol: it saves its results as `OUT_DIR/<backend>.npz`
    (`save_worker_result` does it).

    Returns:
        `{backend: {name: array}}`.
    """
    results = {}
    for backend in backends:
        run_job([worker, out_dir, *args], backend=backend, timeout=timeout)
        with np.load(pathlib.Path(out_dir) / f"{backend}.npz") as arrays:
            results[backend] = dict(arrays)
    return results


def save_worker_result(out_dir: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """What a worker run by `run_on_backends` ends with: `OUT_DIR/<backend>.npz`."""
    np.savez(pathlib.Path(out_dir) / f"{keras.backend.backend()}.npz", **arrays)


def run_layer_test(
    layer_cls: type,
    init_kwargs: dict,
    input_data,
    expected_output_shape: tuple,
    call_kwargs: dict | None = None,
    expected_trainable_weights: int | None = None,
    expected_non_trainable_weights: int | None = None,
    run_training_step: bool = True,
    run_mixed_precision: bool = True,
) -> None:
    """One harness for every layer, in the spirit of KerasHub's `run_layer_test`.

    Checks, in order:
    1. build and call: the output has `expected_output_shape` (and weight counts);
    2. serialization: `serialize_keras_object` → `deserialize_keras_object` gives a
       layer of the same class and config, and after copying the weights the clone's
       output equals the original's (bit for bit: same ops, same weights);
    3. a training step: one SGD step on a model around the layer gives every
       trainable weight a nonzero gradient, i.e. changes it;
    4. `mixed_bfloat16`: the output is bfloat16 and the weights stay float32.

    Args:
        layer_cls: the layer class.
        init_kwargs: its constructor arguments (include a `seed`).
        input_data: a NumPy input for `layer(input_data, **call_kwargs)`.
        expected_output_shape: the output's shape.
        call_kwargs: extra call arguments (e.g. `padding_mask`).
        expected_trainable_weights: the number of trainable weights, if given.
        expected_non_trainable_weights: the number of non-trainable weights, if given.
        run_training_step: check 3 (for layers with trainable weights).
        run_mixed_precision: check 4.
    """
    call_kwargs = call_kwargs or {}
    layer = layer_cls(**init_kwargs)
    output = layer(input_data, **call_kwargs)
    assert tuple(output.shape) == tuple(expected_output_shape)
    if expected_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_trainable_weights
    if expected_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_non_trainable_weights

    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is layer_cls
    assert clone.get_config() == layer.get_config()
    clone(input_data, **call_kwargs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(clone(input_data, **call_kwargs)),
        keras.ops.convert_to_numpy(layer(input_data, **call_kwargs)),
    )

    if run_training_step:
        _check_training_step(layer_cls, init_kwargs, input_data, call_kwargs)

    if run_mixed_precision:
        mixed = layer_cls(**init_kwargs, dtype="mixed_bfloat16")
        out = mixed(input_data, **call_kwargs)
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
        for weight in mixed.trainable_weights:
            assert keras.backend.standardize_dtype(weight.dtype) == "float32", weight.path


def _check_training_step(layer_cls, init_kwargs, input_data, call_kwargs) -> None:
    class Wrapper(keras.Model):
        def __init__(self):
            super().__init__()
            self.inner = layer_cls(**init_kwargs)

        def call(self, x):
            y = self.inner(x, training=True, **call_kwargs)
            return keras.ops.cast(y, "float32")

    model = Wrapper()
    output = model(input_data)
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    assert before, "the layer has no trainable weights: pass run_training_step=False"
    # A random target makes every output element's gradient nonzero.
    target = np.random.default_rng(0).standard_normal(tuple(output.shape)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(input_data, target)
    for weight, old in zip(model.trainable_weights, before):
        changed = np.abs(keras.ops.convert_to_numpy(weight) - old).max()
        assert changed > 0, f"{weight.path} did not train"


# -- servers under test --------------------------------------------------------------------

#: Seconds a `keras-gpt serve` subprocess may take to answer /health.
SERVER_START_TIMEOUT = 180


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """A `keras-gpt serve PRESET` subprocess on 127.0.0.1 and a free port; its output goes
    to `log`, which failures show.

    Args:
        preset: the preset (or run directory) to serve.
        log: file for the server's stdout and stderr.
        *flags: more `keras-gpt serve` flags.
        env: extra environment variables for the server.
    """

    def __init__(self, preset: str, log: str, *flags: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "keras_gpt.cli", "serve", str(preset)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--model-name", "tiny"]
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                command + list(flags), stdout=out, stderr=out, env=dict(os.environ, **(env or {}))
            )

    def wait(self) -> None:
        """Returns once /health answers 200; fails the test if the server exits or is late."""
        import time
        import urllib.request

        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.read_log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=10) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"server did not start in {SERVER_START_TIMEOUT} s:\n{self.read_log()}")

    def read_log(self) -> str:
        with open(self.log) as f:
            return f.read()[-4000:]

    def stop(self) -> None:
        """SIGTERM (the server drains), then SIGKILL after 30 s; nothing if it has exited."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
