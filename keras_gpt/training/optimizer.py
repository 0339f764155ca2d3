"""GPT-2's optimizer recipe: AdamW, warm-up then cosine decay, global clipping, and no
weight decay on biases, LayerNorms and embeddings."""

from __future__ import annotations

import keras

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


def exclude_from_decay(
    optimizer: keras.optimizers.Optimizer, decay_embeddings: bool = False
) -> None:
    """Excludes biases, LayerNorm and (unless asked) embeddings from weight decay.

    Keras does not save this setting with the optimizer, so call it again after
    loading a checkpoint.

    Args:
        optimizer: a Keras optimizer with weight decay.
        decay_embeddings: keep decaying the token and position embeddings.
    """
    names = [n for n in NO_DECAY_NAMES if not (decay_embeddings and n.endswith("embeddings"))]
    optimizer.exclude_from_weight_decay(var_names=names)
