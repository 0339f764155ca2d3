"""Training helpers: GPT-2's optimizer recipe, FLOP counts and throughput logging."""

from __future__ import annotations

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
        weight_decay=weight_decay,
        global_clipnorm=clipnorm,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    exclude_from_decay(optimizer)
    return optimizer


def exclude_from_decay(optimizer: keras.optimizers.Optimizer) -> None:
    """Excludes biases, LayerNorm and embeddings from weight decay.

    Keras does not save this setting with the optimizer, so call it again after
    loading a checkpoint.
    """
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))


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
