"""FLOPs per token, the machine's peak FLOP/s and the tokens/s and MFU a run logs."""

from __future__ import annotations

import time

import keras
import numpy as np


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


def probe_peak_flops(size: int = 1536, chain: int = 3, budget_seconds: float = 0.5) -> float:
    """An estimate of the peak float32 matmul FLOP/s on the current backend.

    The best of several timed runs of `chain` dependent `size`² matmuls, each run
    read back once: a single small product is dominated by dispatch and the copy
    back to NumPy, which underestimated the peak (and so overstated the MFU a run
    logged) several times over. Runs repeat for about `budget_seconds` (at least 3).

    Args:
        size: matrix side.
        chain: matmuls per timed run.
        budget_seconds: how long to keep timing.
    """
    rng = np.random.default_rng(0)
    # Scaled so that repeated products keep their magnitude (no overflow to inf).
    a = keras.ops.convert_to_tensor(rng.standard_normal((size, size)) / np.sqrt(size), "float32")

    def run():
        c = a
        for _ in range(chain):
            c = keras.ops.matmul(a, c)
        keras.ops.convert_to_numpy(c[:1, :1])  # waits for the chain, copies 4 bytes

    run()  # warm up (and compile, where the backend does)
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 3 or spent < budget_seconds:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        best, spent, runs = min(best, seconds), spent + seconds, runs + 1
    return 2.0 * size**3 * chain / best


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
