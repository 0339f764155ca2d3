"""The pretraining recipe: outputs, metrics, checkpoints and exact resume."""

import os
import signal
import textwrap

import numpy as np
import pytest
from helpers import ROOT, run_python, tiny_config

from keras_gpt import GPT
from keras_gpt.cli import _overrides
from keras_gpt.data import TokenStream
from keras_gpt.training import latest_checkpoint, read_metrics
from keras_gpt.training.pretrain import PretrainConfig, load_config, pretrain


def test_pretrain_writes_outputs_and_learns(tmp_path):
    config = tiny_config(tmp_path, max_steps=20, eval_interval=5, sample_tokens=8)
    summary = pretrain(config)
    out = tmp_path / "run"
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for key in ("step", "train_loss", "val_loss", "tokens_per_second", "val_perplexity", "mfu"):
        assert all(key in r for r in rows)
    # Compiling is reported on its own (the first step of the process), not in tokens/s.
    assert rows[0]["compile_seconds"] > 0 and all(r["compile_seconds"] == 0 for r in rows[1:])
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert all(len(line.split(",")) == len(header) for line in (out / "metrics.csv").open())
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert summary["steps"] == 20 and isinstance(summary["sample"], str)
    # The config as run reads back to the same config.
    assert load_config(out / "config.toml") == config
    assert (out / "metrics.csv").read_text().startswith("step,train_loss")
    assert (out / "loss_curve.png").stat().st_size > 0
    best = GPT.from_preset(str(out / "best"))
    assert best.count_params() > 0


@pytest.mark.backend_independent  # which windows: a run evaluating per backend is tested above
def test_last_evaluation_can_score_the_whole_split(tmp_path):
    # Estimates on one batch of evenly spaced windows at each round, then every
    # window of the validation split at the end: the final figure is not an estimate.
    config = tiny_config(tmp_path, max_steps=6, eval_batches=1, final_eval_batches=0)
    summary = pretrain(config)
    out = tmp_path / "run"
    rows = read_metrics(out)
    val = TokenStream.from_directory(out / "data" / "tokens", "val")
    ids = val.read(0, len(val)).astype("int32")
    n = (len(ids) - 1) // 16  # every window of 16 in the split
    assert n > 4
    assert [r["val_windows"] for r in rows] == [4, 4, n]  # 1 batch of batch_size 4, then all
    assert summary["val_loss"] == rows[-1]["val_loss"]
    # The final model, read from the last checkpoint (best/ holds it only when the
    # last row is the lowest), scored here over every window, independently of the
    # recipe's evaluation: equal to float32 summation order (1e-5).
    checkpoint = latest_checkpoint(out / "checkpoints")
    assert checkpoint.name == "step_00000006"
    final = GPT.from_preset(str(out / "best"))  # the architecture; weights replaced
    with np.load(checkpoint / "weights.npz") as weights:
        assert len(weights.files) == len(final.weights)
        for variable in final.weights:
            variable.assign(weights[variable.path.split("/", 1)[1]])
    x, y = ids[: n * 16].reshape(n, 16), ids[1 : n * 16 + 1].reshape(n, 16)
    logits = np.asarray(final.predict(x, verbose=0), dtype="float64")
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss = -np.take_along_axis(log_probs, y[..., None], -1).mean()
    np.testing.assert_allclose(rows[-1]["val_loss"], loss, rtol=1e-5)


# `keras-gpt pretrain ARGS...` that SIGKILLs itself right after its second metrics
# row is appended, before that round's checkpoint: a moment in program order, so
# the kill never races the run (a watcher polling the metrics file could see the
# run finish first).
_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import keras_gpt.training.loop as loop
    from keras_gpt.cli import main

    append, rows = loop.append_metrics, []

    def append_then_die(out, row):
        append(out, row)
        rows.append(row)
        if len(rows) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    loop.append_metrics = append_then_die
    main(sys.argv[1:])
""")


def test_killed_run_resumes_to_the_same_loss_curve(tmp_path):
    reference = pretrain(tiny_config(tmp_path, "reference"))
    expected = read_metrics(tmp_path / "reference")

    config = tiny_config(tmp_path, "killed")
    args = ["pretrain", "--config", tmp_path / "reference" / "config.toml", "--out", config.out]
    proc = run_python(["-c", _KILLED_RUN, *args], timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # Killed between the second round's row and its checkpoint: two rows, the
    # first round's checkpoint.
    assert [r["step"] for r in read_metrics(tmp_path / "killed")] == [2, 4]
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step_00000002"

    resumed = pretrain(config, resume=True)
    rows = read_metrics(tmp_path / "killed")
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    # Same backend, same batches, same dropout counters, same optimizer state:
    # the curve matches to float32 rounding of the reloaded weights.
    np.testing.assert_allclose(
        [r["train_loss"] for r in rows], [r["train_loss"] for r in expected], rtol=1e-5
    )
    np.testing.assert_allclose(
        [r["val_loss"] for r in rows], [r["val_loss"] for r in expected], rtol=1e-5
    )
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)


def test_config_errors_and_overrides(tmp_path):
    assert _overrides(["--max-steps", "5", "--tensorboard"]) == {
        "max-steps": "5",
        "tensorboard": "true",
    }
    config = PretrainConfig().update({"max-steps": "5", "dropout": "0.1", "tensorboard": "true"})
    assert (config.max_steps, config.dropout, config.tensorboard) == (5, 0.1, True)
    with pytest.raises(ValueError, match="unknown setting 'max_step'; did you mean 'max_steps'"):
        PretrainConfig().update({"max_step": 5})
    with pytest.raises(ValueError, match="max_steps must be an integer, got 'many'"):
        PretrainConfig().update({"max_steps": "many"})
    with pytest.raises(ValueError, match="tokenizer must be"):
        pretrain(tiny_config(tmp_path, tokenizer="nonsense"))


def test_recipe_configs_parse():
    root = os.path.join(os.path.dirname(__file__), "..", "recipes", "configs")
    for name in sorted(os.listdir(root)):
        config = load_config(os.path.join(root, name))
        assert config.max_steps > 0, name
    shakespeare = load_config(os.path.join(root, "shakespeare_char.toml"))
    assert (
        shakespeare.num_layers,
        shakespeare.hidden_dim,
        shakespeare.sequence_length,
        shakespeare.batch_size,
        shakespeare.max_steps,
    ) == (4, 128, 64, 12, 2000)


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND") != "jax", reason="keras.distribution is JAX's")
def test_data_parallel_recipe_matches_one_device(tmp_path):
    single = tiny_config(tmp_path, "single", dropout=0.0, max_steps=4)
    pretrain(single)
    code = (
        "import sys; sys.path.insert(0, 'tests');"
        "from helpers import tiny_config; import pathlib;"
        "from keras_gpt.training.pretrain import pretrain;"
        f"pretrain(tiny_config(pathlib.Path({str(tmp_path)!r}), 'parallel', dropout=0.0,"
        " max_steps=4, data_parallel=True))"
    )
    run_python(
        ["-c", code],
        env={"XLA_FLAGS": os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2"},
        cwd=ROOT,
    )
    expected, got = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "parallel")
    # The batch is split over 2 devices; losses agree to float32 reduction order.
    np.testing.assert_allclose(
        [r["train_loss"] for r in got], [r["train_loss"] for r in expected], rtol=1e-5
    )


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_weight_decay_applies_to_weight_matrices_only(decay_embeddings):
    """One AdamW step with zero gradients moves weights by decay alone: W ← W·(1 − lr·wd)."""
    import keras
    from conftest import TINY, to_numpy

    from keras_gpt.training import gpt_optimizer

    model = GPT(**TINY)
    lr, wd = 0.1, 0.5
    optimizer = gpt_optimizer(
        lr, total_steps=1000, warmup_steps=0, weight_decay=wd, decay_embeddings=decay_embeddings
    )
    before = {v.path: to_numpy(v).copy() for v in model.trainable_variables}
    optimizer.apply_gradients([(keras.ops.zeros(v.shape), v) for v in model.trainable_variables])
    for v in model.trainable_variables:
        name = v.path.rsplit("/", 1)[-1]
        embedding = name.endswith("embeddings")
        decayed = name == "kernel" or (embedding and decay_embeddings)
        expected = before[v.path] * (1 - lr * wd) if decayed else before[v.path]
        # float32 arithmetic on values ~0.02: 1e-6 relative is a few ulps.
        np.testing.assert_allclose(to_numpy(v), expected, rtol=1e-6, atol=1e-9, err_msg=v.path)


# Where the figures land: evaluation per backend is test_evaluation's.
@pytest.mark.backend_independent
def test_run_evaluates_its_best_model_at_the_end(tmp_path):
    """`evaluate_data`: the best model's figures, as keras_gpt.evaluation computes them,
    land in evaluation.json and as a row of metrics.jsonl apart from the training rows."""
    import json

    from keras_gpt.evaluation import perplexity
    from keras_gpt.presets import load_tokenizer

    config = tiny_config(tmp_path, max_steps=6, eval_interval=3, sample_tokens=0)
    config = config.update({"evaluate_data": config.data})
    summary = pretrain(config)
    out = tmp_path / "run"
    recorded = json.loads((out / "evaluation.json").read_text())
    assert read_metrics(out, evaluations=True) == [recorded] == [summary["evaluation"]]
    assert [r["step"] for r in read_metrics(out)] == [3, 6]  # training rows unchanged
    best = str(out / "best")
    expected = perplexity(GPT.from_preset(best), load_tokenizer(best), config.data)
    assert recorded["task"] == "perplexity" and recorded["step"] == 6
    assert recorded["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
