"""Draws docs/img/cross_backend_loss.svg: one training run, three backends.

Trains the same small byte-level GPT (with dropout) on Python's standard-library
source under TensorFlow, JAX and PyTorch, each in its own process, then plots
the three loss curves and their relative differences. Prints the numbers as JSON.

Run from the repository root (needs all three backends and matplotlib):

    .venv/bin/python docs/scripts/cross_backend_loss.py            # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

BACKENDS = ("tensorflow", "jax", "torch")
OUT = pathlib.Path(__file__).resolve().parent.parent / "img" / "cross_backend_loss.svg"
CONFIG = dict(num_layers=2, num_heads=4, hidden_dim=64, max_sequence_length=64, dropout=0.1, seed=0)
STEPS, BATCH = 150, 16


def train_losses() -> list[float]:
    """Per-step training losses on the current backend."""
    import keras
    import numpy as np

    import keras_gpt
    from keras_gpt.data import RandomWindows, stdlib_corpus
    from keras_gpt.tokenizers import ByteTokenizer

    tokenizer = ByteTokenizer()
    tokens = np.array(tokenizer.encode(stdlib_corpus(max_bytes=1_000_000)), "int32")
    windows = RandomWindows(tokens, CONFIG["max_sequence_length"], BATCH, STEPS, seed=0)
    x = np.concatenate([windows[i][0] for i in range(STEPS)])
    y = np.concatenate([windows[i][1] for i in range(STEPS)])

    model = keras_gpt.GPT(vocabulary_size=tokenizer.vocabulary_size, **CONFIG)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3))
    # One step per epoch so that history holds each step's loss, not a running mean.
    history = model.fit(
        x, y, batch_size=BATCH, epochs=STEPS, steps_per_epoch=1, shuffle=False, verbose=0
    )
    return [float(v) for v in history.history["loss"]]


def plot(losses: dict[str, list[float]]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "keras_gpt"
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.arange(1, STEPS + 1)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7.5, 6.0), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    styles = {
        "tensorflow": ("#ff8f00", "-", 3.5),
        "jax": ("#1e88e5", "--", 2.0),
        "torch": ("#e53935", ":", 2.0),
    }
    for backend, values in losses.items():
        color, style, width = styles[backend]
        top.plot(steps, values, style, color=color, lw=width, label=backend)
    top.set_ylabel("training loss")
    top.set_title("Same seed, data and config (dropout 0.1) on three backends")
    top.legend()
    top.grid(alpha=0.3)

    reference = np.array(losses["tensorflow"])
    summary = {}
    for backend in ("jax", "torch"):
        rel = np.abs(np.array(losses[backend]) - reference) / reference
        color, _, _ = styles[backend]
        bottom.semilogy(
            steps,
            np.maximum(rel, 1e-10),
            ".",
            ms=3,
            color=color,
            label=f"|{backend} − tensorflow| / tensorflow",
        )
        summary[f"max_rel_diff_{backend}_vs_tensorflow"] = float(rel.max())
    bottom.axhline(1e-5, color="gray", ls="--", lw=1)
    bottom.text(STEPS, 1.3e-5, "test bound 1e-5", ha="right", va="bottom", fontsize=8, color="gray")
    bottom.set_xlabel("step")
    bottom.set_ylabel("relative difference")
    bottom.legend(fontsize=8, loc="lower right")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, format="svg", facecolor="white", metadata={"Date": None})
    return summary


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(train_losses()))
        return
    losses = {}
    for backend in BACKENDS:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker"],
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": backend},
            check=True,
        )
        losses[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = plot(losses)
    summary.update(
        {
            "steps": STEPS,
            "batch_size": BATCH,
            **CONFIG,
            "first_loss": losses["tensorflow"][0],
            "last_loss": losses["tensorflow"][-1],
            "figure": str(OUT),
        }
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
