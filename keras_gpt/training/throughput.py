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


def probe_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """A quick estimate of peak float32 matmul FLOP/s on the current backend."""
    a = keras.ops.convert_to_tensor(
        np.random.default_rng(0).standard_normal((size, size)), "float32"
    )
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
