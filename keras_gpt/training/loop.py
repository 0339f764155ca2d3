"""The recipes' training loop: train in rounds, evaluate, log, checkpoint, resume."""

from __future__ import annotations

import math
import pathlib
import sys
import time

import keras

from keras_gpt.backend import fit_input
from keras_gpt.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from keras_gpt.training.history import append_metrics, plot_loss_curve, truncate_metrics
from keras_gpt.training.optimizer import current_learning_rate
from keras_gpt.training.throughput import mfu


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


def budget_end(
    step: int, elapsed: float, steps_per_second: float, max_seconds: float, max_steps: int
) -> int:
    """The step a time budget ends the run at: the steps that fit in the time left at the
    speed measured, never before `step` nor past `max_steps`."""
    left = max(0.0, max_seconds - elapsed)
    return int(min(max_steps, step + math.floor(left * steps_per_second)))


def train_loop(
    model,
    batch_at,
    validation,
    out: pathlib.Path,
    *,
    max_steps: int,
    eval_interval: int,
    tokens_per_step: int,
    final_validation=None,
    resume: bool = False,
    verbose: int = 1,
    callbacks: list | None = None,
    max_seconds: float = 0.0,
    budget_steps=None,
    patience: int = 0,
    save_best=None,
    flops_per_token: float = 0.0,
    peak_flops: float = 0.0,
    settings: dict | None = None,
) -> dict:
    """Trains a compiled model in rounds of `eval_interval` steps, with evaluation after each.

    After every round: evaluates on `validation`, calls `save_best(model)` when
    the validation loss improved, appends a row to `out/metrics.jsonl` and
    `out/metrics.csv`, then writes a checkpoint (`out/checkpoints`, one atomic
    unit; see `keras_gpt.training.checkpoints`). Ends with
    `out/loss_curve.png`. With `resume`, continues from the newest checkpoint
    and drops the rows logged after it, so a run killed at any moment and
    resumed logs every round once.

    Args:
        model: a compiled `GPT`.
        batch_at: the batch of a global step (see `StepBatches`).
        validation: a dataset for `model.evaluate`.
        final_validation: the dataset of the last evaluation (at `max_steps`, or
            when `max_seconds` is spent), e.g. the whole split where the others
            score a subset of it; `None`: `validation`.
        out: the run's output directory.
        max_steps: total training steps.
        eval_interval: steps per round.
        tokens_per_step: for tokens/s.
        resume: continue from `out/checkpoints` if it holds a checkpoint.
        verbose: Keras progress-bar verbosity (1 becomes 2 when stdout is not a terminal).
        callbacks: extra Keras callbacks for `fit`.
        max_seconds: stop after this much training time (0: no limit).
        budget_steps: with `max_seconds`: the run's length as the optimizer's
            schedules read it (`keras_gpt.training.optimizer.time_budget_variable`).
            After each round the loop sets it to the step the budget will end
            at, from the speed so far, and ends the run there, so that a
            warmup-stable-decay cool-down always finishes.
        patience: stop after this many rounds without improvement (0: never).
        save_best: called with the model when the validation loss improves.
        flops_per_token: with `peak_flops`, adds `mfu` to the rows (when the
            achieved FLOP/s exceed `peak_flops`, it is null: see `throughput.mfu`).
        peak_flops: peak FLOP/s of the machine.
        settings: the run's settings, kept in each checkpoint (see
            `keras_gpt.training.runs.start_run`).

    Returns:
        The final state: `step`, `val_loss`, `best_val_loss`, `elapsed_seconds`, ...
    """
    if verbose == 1 and not sys.stdout.isatty():
        # Keras' bar redraws itself with ANSI codes, which a file or pipe keeps as
        # they are: print its one plain line a round instead.
        verbose = 2
    checkpoints = out / "checkpoints"
    state = _starting_state(model, out, checkpoints, resume)
    fit = _RoundFitter(model, batch_at, verbose, callbacks or [])
    end = max_steps
    if budget_steps is not None:
        end = min(max_steps, round(float(keras.ops.convert_to_numpy(budget_steps))))
    while state["step"] < end:
        stop = _stop_reason(state, max_seconds if budget_steps is None else 0.0, patience)
        if stop:
            print(stop)
            break
        steps = min(eval_interval, end - state["step"])
        train_loss, seconds, compile_seconds, timed_steps = fit(state["step"], steps)
        rate = timed_steps * tokens_per_step / seconds
        state["step"] += steps
        state["elapsed_seconds"] += seconds + compile_seconds
        if budget_steps is not None:
            end = budget_end(
                state["step"], state["elapsed_seconds"], rate / tokens_per_step, max_seconds,
                max_steps,
            )  # fmt: skip
            budget_steps.assign(float(end))
        last = state["step"] >= end or (
            max_seconds and state["elapsed_seconds"] >= max_seconds and budget_steps is None
        )
        scored = final_validation if last and final_validation is not None else validation
        row = _evaluate_round(model, scored, state, train_loss, rate, compile_seconds)
        if flops_per_token and peak_flops:
            # None (null; empty in the CSV) when the figures cannot support one (see `mfu`).
            row["mfu"] = mfu(rate, flops_per_token, peak_flops)
        _keep_best(state, row["val_loss"], model, save_best)
        # The row first: a kill before the checkpoint is written redoes this
        # round on resume, and the resume drops the row (truncate_metrics).
        append_metrics(out, row)
        save_checkpoint(model, state, checkpoints, settings)
    plot_loss_curve(out)
    return state


def _starting_state(model, out: pathlib.Path, checkpoints: pathlib.Path, resume: bool) -> dict:
    """The newest checkpoint's state (its model and optimizer loaded, later rows dropped)
    when resuming, else a fresh state (and no rows from an earlier run)."""
    checkpoint = latest_checkpoint(checkpoints) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(model, checkpoint)
        truncate_metrics(out, state["step"])
        print(f"resumed from step {state['step']}")
        return state
    for name in ("metrics.jsonl", "metrics.csv"):
        (out / name).unlink(missing_ok=True)
    return {
        "step": 0,
        "val_loss": math.nan,
        "best_val_loss": math.inf,
        "bad_evaluations": 0,
        "elapsed_seconds": 0.0,
    }


def _stop_reason(state: dict, max_seconds: float, patience: int) -> str | None:
    """Why the run ends before its last step (a spent time budget, no progress), or None."""
    if max_seconds and state["elapsed_seconds"] >= max_seconds:
        return f"time budget of {max_seconds:.0f} s reached at step {state['step']}"
    if patience and state["bad_evaluations"] >= patience:
        return (
            f"early stop at step {state['step']}: no better validation loss in "
            f"{patience} evaluations"
        )
    return None


class _RoundFitter:
    """Runs one round of steps with `model.fit`.

    Returns `(train_loss, seconds, compile_seconds, timed_steps)`: the round's mean
    loss, the time of its `timed_steps` timed steps, and of the compiling step.

    The process's first round runs its first step alone, which compiles the train
    step: tokens/s then counts only the steps after it (the same steps and updates
    either way; the round's loss is the same mean, to float32 rounding).
    """

    def __init__(self, model, batch_at, verbose: int, callbacks: list):
        self.model, self.batch_at = model, batch_at
        self.verbose, self.callbacks = verbose, callbacks
        self.compiled = False

    def _fit(self, first: int, count: int) -> tuple[float, float]:
        # shuffle=False: Keras shuffles a PyDataset's batch order by default,
        # which would make the run (and a resumed run) depend on NumPy's global RNG.
        start = time.perf_counter()
        history = self.model.fit(
            fit_input(StepBatches(self.batch_at, first, count)),
            epochs=1,
            shuffle=False,
            verbose=self.verbose,
            callbacks=self.callbacks,
        )
        return float(history.history["loss"][-1]), time.perf_counter() - start

    def __call__(self, first: int, steps: int) -> tuple[float, float, float, int]:
        if self.compiled or steps <= 1:
            self.compiled = True
            loss, seconds = self._fit(first, steps)
            return loss, seconds, 0.0, steps
        self.compiled = True
        first_loss, compile_seconds = self._fit(first, 1)
        loss, seconds = self._fit(first + 1, steps - 1)
        return (first_loss + (steps - 1) * loss) / steps, seconds, compile_seconds, steps - 1


def _evaluate_round(model, scored, state: dict, train_loss, rate, compile_seconds) -> dict:
    """Scores `scored`, prints the round's line and returns its metrics row."""
    val_loss, val_perplexity = model.evaluate(fit_input(scored), verbose=0)
    row = {
        "step": state["step"],
        "train_loss": train_loss,
        "val_loss": float(val_loss),
        "val_perplexity": float(val_perplexity),
        # How many windows the validation loss averages (the last evaluation
        # may score more of the split than the others: `final_validation`).
        "val_windows": getattr(scored, "windows", None),
        "tokens_per_second": rate,
        "learning_rate": current_learning_rate(model.optimizer),
        "elapsed_seconds": state["elapsed_seconds"],
        # Time the round's first step took to compile the train step (0: compiled).
        "compile_seconds": compile_seconds,
    }
    print(
        f"step {row['step']}: train loss {row['train_loss']:.4f} · "
        f"val loss {val_loss:.4f} · {rate:,.0f} tokens/s"
    )
    return row


def _keep_best(state: dict, val_loss: float, model, save_best) -> None:
    """Records the round's validation loss; saves the model when it is the best yet."""
    state["val_loss"] = val_loss
    if val_loss < state["best_val_loss"]:
        state.update(best_val_loss=val_loss, bad_evaluations=0)
        if save_best is not None:
            save_best(model)
    else:
        state["bad_evaluations"] += 1
