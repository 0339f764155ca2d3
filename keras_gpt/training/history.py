"""A run's records: metrics.jsonl, metrics.csv and loss_curve.png."""

from __future__ import annotations

import json
import os
import pathlib

import keras
import numpy as np


def append_metrics(out: pathlib.Path, row: dict) -> None:
    """Appends one evaluation's row to `out/metrics.jsonl` and `out/metrics.csv`.

    A row with a `"task"` (an end-of-run evaluation, `evaluate_data`) goes to
    `metrics.jsonl` only: its columns are not the training rows'.
    """
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    if "task" in row:
        return
    csv = out / "metrics.csv"
    new = not csv.exists()
    with open(csv, "a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join("" if v is None else str(v) for v in row.values()) + "\n")


def truncate_metrics(out: pathlib.Path, step: int) -> None:
    """Keeps only the rows up to `step` in `out/metrics.jsonl` and `out/metrics.csv`.

    A resumed run redoes the rounds after its checkpoint: rows a killed run
    logged after it (and a line cut short by the kill) are dropped, so every
    round appears once.
    """
    path = out / "metrics.jsonl"
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # half a line, written as the process was killed
        if isinstance(row, dict) and row.get("step", step + 1) <= step:
            rows.append(row)
    for name in ("metrics.jsonl", "metrics.csv"):
        (out / name).unlink(missing_ok=True)
    for row in rows:
        append_metrics(out, row)


def read_metrics(out: str | os.PathLike, evaluations: bool = False) -> list[dict]:
    """The training rows of a run's `metrics.jsonl` (or, with `evaluations`, its
    end-of-run evaluation rows, those with a `"task"`)."""
    path = pathlib.Path(out) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if ("task" in r) == evaluations]


def mean_throughput(out: pathlib.Path) -> float:
    """Mean `tokens_per_second` over a run's evaluations (0 if none)."""
    rows = read_metrics(out) if (out / "metrics.jsonl").exists() else []
    return float(np.mean([r["tokens_per_second"] for r in rows])) if rows else 0.0


def plot_loss_curve(out: pathlib.Path) -> None:
    """Writes `out/loss_curve.png` (train and validation loss by step), given matplotlib."""
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
