"""Training helpers: GPT-2's optimizer recipe, FLOP counts and throughput logging."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time

import keras
import numpy as np

#: Weights that GPT-2 and nanoGPT exclude from weight decay: biases, LayerNorm
#: scales/offsets and embeddings. Matched against variable names.
NO_DECAY_NAMES = ("bias", "gamma", "beta", "token_embeddings", "position_embeddings")


def gpt_optimizer(
    learning_rate: float = 1e-3,
    total_steps: int = 5000,
    warmup_steps: int = 100,
    min_learning_rate_ratio: float = 0.1,
    weight_decay: float = 0.1,
    beta_1: float = 0.9,
    beta_2: float = 0.95,
    clipnorm: float | None = 1.0,
    gradient_accumulation_steps: int | None = None,
    epsilon: float = 1e-7,
    decay_embeddings: bool = False,
) -> keras.optimizers.AdamW:
    """AdamW with linear warm-up, cosine decay and decay on weight matrices only.

    Args:
        learning_rate: peak learning rate, reached after `warmup_steps`.
        total_steps: steps of the whole run (warm-up included); the rate decays
            to `min_learning_rate_ratio · learning_rate` at the end.
        warmup_steps: linear warm-up steps from 0.
        min_learning_rate_ratio: final rate as a fraction of the peak.
        weight_decay: decoupled weight decay on weight matrices.
        beta_1: Adam β1.
        beta_2: Adam β2 (GPT-2 style runs use 0.95).
        clipnorm: clip the global gradient norm to this; `None` disables.
        gradient_accumulation_steps: apply the update every this many batches.
        epsilon: Adam ε (Keras' default 1e-7; PyTorch and nanoGPT use 1e-8).
        decay_embeddings: also decay the token and position embeddings, as
            nanoGPT does (it decays every 2-D weight).

    Example:
    >>> model.compile(optimizer=gpt_optimizer(1e-3, total_steps=2000))
    """
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=min_learning_rate_ratio,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )
    optimizer = keras.optimizers.AdamW(
        schedule,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        weight_decay=weight_decay,
        global_clipnorm=clipnorm,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    exclude_from_decay(optimizer, decay_embeddings)
    return optimizer


def exclude_from_decay(optimizer: keras.optimizers.Optimizer,
                       decay_embeddings: bool = False) -> None:
    """Excludes biases, LayerNorm and (unless asked) embeddings from weight decay.

    Keras does not save this setting with the optimizer, so call it again after
    loading a checkpoint.

    Args:
        optimizer: a Keras optimizer with weight decay.
        decay_embeddings: keep decaying the token and position embeddings.
    """
    names = [n for n in NO_DECAY_NAMES if not (decay_embeddings and n.endswith("embeddings"))]
    optimizer.exclude_from_weight_decay(var_names=names)


def flops_per_token(model, sequence_length: int | None = None) -> float:
    """Training FLOPs per token: 6·N plus attention, as in the PaLM paper.

    Args:
        model: a `keras_gpt.GPT`.
        sequence_length: context length used in training (default: the
            model's `max_sequence_length`).
    """
    length = sequence_length or model.max_sequence_length
    params = model.count_params()
    attention = 12 * model.num_layers * model.hidden_dim * length
    return 6.0 * params + attention


def probe_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """A quick estimate of peak float32 matmul FLOP/s on the current backend."""
    a = keras.ops.convert_to_tensor(np.random.default_rng(0).standard_normal((size, size)), "float32")
    keras.ops.convert_to_numpy(keras.ops.matmul(a, a))  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, a))
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


class Throughput(keras.callbacks.Callback):
    """Adds `tokens_per_second` and `mfu` to the training logs (and progress bar).

    Args:
        tokens_per_step: batch size × sequence length.
        flops_per_token: from `flops_per_token`.
        peak_flops: the machine's peak FLOP/s (e.g. from `probe_peak_flops`).
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.tokens_per_second = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        seconds = time.perf_counter() - self._start
        rate = self.tokens_per_step / max(seconds, 1e-9)
        # Smooth: single steps are noisy, and the first one includes compiling.
        self.tokens_per_second = rate if batch == 0 else 0.9 * self.tokens_per_second + 0.1 * rate
        if logs is not None:
            logs["tokens_per_second"] = self.tokens_per_second
            logs["mfu"] = self.tokens_per_second * self.flops_per_token / self.peak_flops


# -- run configs: TOML files and `--key value` overrides ---------------------------


class RunConfig:
    """Shared behaviour of the recipe configs (dataclasses that inherit this)."""

    def update(self, values: dict):
        """A copy with `values` (strings are converted to each field's type)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        converted = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in fields:
                raise ValueError(f"Unknown setting {key!r}; known: {sorted(fields)}.")
            converted[key] = _convert(value, getattr(self, key), key)
        return dataclasses.replace(self, **converted)

    def to_toml(self) -> str:
        """The config as flat TOML (JSON scalars are valid TOML values)."""
        return "".join(f"{key} = {json.dumps(value)}\n"
                       for key, value in dataclasses.asdict(self).items() if value is not None)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict | None = None):
        """Defaults, then the TOML file at `path`, then `overrides`."""
        config = cls()
        if path is not None:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            with open(path, "rb") as f:
                config = config.update(tomllib.load(f))
        return config.update(overrides or {})


def _convert(value, default, key: str):
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return type(default)(value)
    except ValueError:
        raise ValueError(f"{key} must be a {type(default).__name__}, got {value!r}.") from None


# -- run outputs: metrics.jsonl / metrics.csv / loss_curve.png / atomic JSON ----


def write_json_atomic(path: pathlib.Path, obj: object) -> None:
    """Writes JSON to a temporary name, then renames: readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def append_metrics(out: pathlib.Path, row: dict) -> None:
    """Appends one evaluation's row to `out/metrics.jsonl` and `out/metrics.csv`."""
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    csv = out / "metrics.csv"
    new = not csv.exists()
    with open(csv, "a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(str(v) for v in row.values()) + "\n")


def read_metrics(out: str | os.PathLike) -> list[dict]:
    """The rows of a run's `metrics.jsonl`."""
    path = pathlib.Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_throughput(out: pathlib.Path) -> float:
    """Mean `tokens_per_second` over a run's evaluations (0 if none)."""
    rows = read_metrics(out) if (out / "metrics.jsonl").exists() else []
    return float(np.mean([r["tokens_per_second"] for r in rows])) if rows else 0.0


def plot_loss_curve(out: pathlib.Path) -> None:
    """Writes `out/loss_curve.png` (train and validation loss by step) if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no loss_curve.png")
        return
    rows = read_metrics(out) if (out / "metrics.jsonl").exists() else []
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["train_loss"] for r in rows], label="train")
    ax.plot(steps, [r["val_loss"] for r in rows], label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{out.name} ({keras.backend.backend()})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=100)
    plt.close(fig)


# -- the recipes' training loop: evaluate, log, checkpoint, resume -----------------


class StepBatches(keras.utils.PyDataset):
    """Global steps `start … start + steps` of a batch function, as a `PyDataset`.

    Args:
        batch_at: returns the batch of a global step (a pure function of the
            step, so that resuming can jump straight to it).
        start: first global step.
        steps: number of steps.
    """

    def __init__(self, batch_at, start: int, steps: int):
        super().__init__()
        self.batch_at, self.start, self.steps = batch_at, start, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        return self.batch_at(self.start + index)


def save_checkpoint(model, state: dict, directory: pathlib.Path) -> None:
    """Saves every model variable, the optimizer state and `state` (step, ...).

    Variables are keyed by their path inside the model, LoRA adapters unmerged;
    `state.json` is written last, so it only ever points at complete files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights = {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v) for v in model.weights}
    if len(weights) != len(model.weights):
        raise ValueError("Two model variables share a path; a checkpoint could not tell them apart.")
    optimizer = {str(i): keras.ops.convert_to_numpy(v)
                 for i, v in enumerate(model.optimizer.variables)}
    for name, arrays in (("weights", weights), ("optimizer", optimizer)):
        np.savez(directory / f"{name}.tmp.npz", **arrays)
        os.replace(directory / f"{name}.tmp.npz", directory / f"{name}.npz")
    write_json_atomic(directory / "state.json", state)


def load_checkpoint(model, directory: pathlib.Path) -> dict:
    """Restores a `save_checkpoint` into a compiled model of the same build; returns the state."""
    model.optimizer.build(model.trainable_variables)
    with np.load(directory / "weights.npz") as weights:
        for v in model.weights:
            v.assign(weights[v.path.split("/", 1)[1]])
    with np.load(directory / "optimizer.npz") as optimizer:
        for i, v in enumerate(model.optimizer.variables):
            v.assign(optimizer[str(i)])
    return json.loads((directory / "state.json").read_text())


def train_loop(model, batch_at, validation, out: pathlib.Path, *, max_steps: int,
               eval_interval: int, tokens_per_step: int, resume: bool = False,
               verbose: int = 1, callbacks: list | None = None, max_seconds: float = 0.0,
               patience: int = 0, save_best=None, flops_per_token: float = 0.0,
               peak_flops: float = 0.0) -> dict:
    """Trains a compiled model in rounds of `eval_interval` steps, with evaluation after each.

    After every round: evaluates on `validation`, calls `save_best(model)` when
    the validation loss improved, writes a checkpoint (`out/checkpoints`) and
    appends a row to `out/metrics.jsonl` and `out/metrics.csv`. Ends with
    `out/loss_curve.png`. With `resume`, continues from the checkpoint.

    Args:
        model: a compiled `GPT`.
        batch_at: the batch of a global step (see `StepBatches`).
        validation: a dataset for `model.evaluate`.
        out: the run's output directory.
        max_steps: total training steps.
        eval_interval: steps per round.
        tokens_per_step: for tokens/s.
        resume: continue from `out/checkpoints` if it holds a checkpoint.
        verbose: Keras progress-bar verbosity.
        callbacks: extra Keras callbacks for `fit`.
        max_seconds: stop after this much training time (0: no limit).
        patience: stop after this many rounds without improvement (0: never).
        save_best: called with the model when the validation loss improves.
        flops_per_token: with `peak_flops`, adds `mfu` to the rows.
        peak_flops: peak FLOP/s of the machine.

    Returns:
        The final state: `step`, `val_loss`, `best_val_loss`, `elapsed_seconds`, ...
    """
    checkpoints = out / "checkpoints"
    if resume and (checkpoints / "state.json").exists():
        state = load_checkpoint(model, checkpoints)
        print(f"resumed from step {state['step']}")
    else:
        state = {"step": 0, "val_loss": math.nan, "best_val_loss": math.inf,
                 "bad_evaluations": 0, "elapsed_seconds": 0.0}
        for name in ("metrics.jsonl", "metrics.csv"):
            (out / name).unlink(missing_ok=True)
    while state["step"] < max_steps:
        if max_seconds and state["elapsed_seconds"] >= max_seconds:
            print(f"time budget of {max_seconds:.0f} s reached at step {state['step']}")
            break
        if patience and state["bad_evaluations"] >= patience:
            print(f"early stop at step {state['step']}: no better validation loss in "
                  f"{patience} evaluations")
            break
        steps = min(eval_interval, max_steps - state["step"])
        start = time.perf_counter()
        # shuffle=False: Keras shuffles a PyDataset's batch order by default,
        # which would make the run (and a resumed run) depend on NumPy's global RNG.
        history = model.fit(StepBatches(batch_at, state["step"], steps), epochs=1,
                            shuffle=False, verbose=verbose, callbacks=callbacks or [])
        seconds = time.perf_counter() - start
        state["step"] += steps
        state["elapsed_seconds"] += seconds
        val_loss, val_perplexity = model.evaluate(validation, verbose=0)
        rate = steps * tokens_per_step / seconds
        row = {"step": state["step"], "train_loss": float(history.history["loss"][-1]),
               "val_loss": float(val_loss), "val_perplexity": float(val_perplexity),
               "tokens_per_second": rate,
               "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
               "elapsed_seconds": state["elapsed_seconds"]}
        if flops_per_token and peak_flops:
            row["mfu"] = rate * flops_per_token / peak_flops
        print(f"step {row['step']}: train loss {row['train_loss']:.4f} · "
              f"val loss {val_loss:.4f} · {rate:,.0f} tokens/s")
        state["val_loss"] = float(val_loss)
        if val_loss < state["best_val_loss"]:
            state.update(best_val_loss=float(val_loss), bad_evaluations=0)
            if save_best is not None:
                save_best(model)
        else:
            state["bad_evaluations"] += 1
        save_checkpoint(model, state, checkpoints)
        append_metrics(out, row)
    plot_loss_curve(out)
    return state
