"""The optimizer recipes: GPT-2's (AdamW, warm-up then cosine decay, global clipping, no
weight decay on biases, LayerNorms and embeddings) and the speedrun's (Muon on the
blocks' matrices, AdamW on the rest, warmup-stable-decay), with their schedules."""

from __future__ import annotations

import re

import keras
from keras import ops

#: Weights that GPT-2 and nanoGPT exclude from weight decay: biases, LayerNorm
#: scales/offsets (RMSNorm's `scale` too) and embeddings. Matched against variable names.
NO_DECAY_NAMES = ("bias", "gamma", "beta", "scale", "token_embeddings", "position_embeddings")


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
    schedule: str = "cosine",
    cooldown_fraction: float = 0.4,
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
        schedule: `"cosine"`, or `"wsd"` (`WarmupStableDecay`).
        cooldown_fraction: with `"wsd"`, the share of the run spent cooling down.

    Example:
    >>> model.compile(optimizer=gpt_optimizer(1e-3, total_steps=2000))
    """
    rates = learning_rate_schedule(
        learning_rate,
        total_steps,
        warmup_steps,
        min_learning_rate_ratio,
        schedule,
        cooldown_fraction,
    )
    optimizer = keras.optimizers.AdamW(
        rates,
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


@keras.saving.register_keras_serializable(package="keras_gpt")
class WarmupStableDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, a constant rate, then a linear cool-down over the last steps.

    The warmup-stable-decay ("trapezoidal") schedule of modded-nanogpt and
    nanochat: the rate stays at its peak for most of the run and falls
    linearly to `min_learning_rate_ratio · learning_rate` over the last
    `cooldown_fraction` of `total_steps`. Unlike cosine decay, the first
    (1 − cooldown_fraction) of the run does not depend on its length, which
    is what lets a run with a time budget decide its length on the way (see
    `total_steps`).

    Args:
        learning_rate: the peak rate.
        total_steps: steps of the whole run: a number, or a scalar
            `keras.Variable` that the training loop may move while the run is
            in its stable phase (`keras_gpt.training.loop.train_loop`'s time
            budget); the optimizer must track it (`time_budget_variable`).
        warmup_steps: steps of linear warm-up; step s (from 0) runs at
            (s + 1)/warmup_steps of the peak.
        cooldown_fraction: the share of `total_steps` spent cooling down.
        min_learning_rate_ratio: the final rate as a fraction of the peak.

    Example:
    >>> schedule = WarmupStableDecay(0.02, total_steps=1000, cooldown_fraction=0.4)
    >>> [round(float(schedule(step)), 6) for step in (0, 500, 800, 1000)]
    [0.02, 0.02, 0.01, 0.0]
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int | float | keras.Variable,
        warmup_steps: int = 0,
        cooldown_fraction: float = 0.4,
        min_learning_rate_ratio: float = 0.0,
    ):
        if not 0.0 <= cooldown_fraction <= 1.0:
            raise ValueError(f"`cooldown_fraction` must be in [0, 1], got {cooldown_fraction}.")
        self.learning_rate = float(learning_rate)
        self.total_steps = total_steps
        self.warmup_steps = int(warmup_steps)
        self.cooldown_fraction = float(cooldown_fraction)
        self.min_learning_rate_ratio = float(min_learning_rate_ratio)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        total = ops.cast(self.total_steps, "float32")
        factor = ops.ones((), "float32")
        if self.warmup_steps > 0:
            factor = ops.minimum(factor, (step + 1.0) / self.warmup_steps)
        if self.cooldown_fraction > 0:
            cooldown = ops.maximum(total * self.cooldown_fraction, 1.0)
            left = ops.clip((total - step) / cooldown, 0.0, 1.0)  # 1 until the cool-down
            floor = self.min_learning_rate_ratio
            factor = ops.minimum(factor, floor + (1.0 - floor) * left)
        return self.learning_rate * factor

    def get_config(self) -> dict:
        total = self.total_steps
        if not isinstance(total, (int, float)):
            total = float(ops.convert_to_numpy(total))
        return {
            "learning_rate": self.learning_rate,
            "total_steps": total,
            "warmup_steps": self.warmup_steps,
            "cooldown_fraction": self.cooldown_fraction,
            "min_learning_rate_ratio": self.min_learning_rate_ratio,
        }


def learning_rate_schedule(
    learning_rate: float,
    total_steps: int | float | keras.Variable,
    warmup_steps: int,
    min_learning_rate_ratio: float,
    schedule: str = "cosine",
    cooldown_fraction: float = 0.4,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """`"cosine"` (GPT-2, nanoGPT: warm-up then cosine decay) or `"wsd"` (`WarmupStableDecay`)."""
    if schedule == "cosine":
        if not isinstance(total_steps, (int, float)):
            raise ValueError(
                "A time-budgeted length needs schedule 'wsd': cosine decay "
                "depends on the run's length from its first step."
            )
        return keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, int(total_steps) - warmup_steps),
            alpha=min_learning_rate_ratio,
            warmup_target=learning_rate,
            warmup_steps=warmup_steps,
        )
    if schedule == "wsd":
        return WarmupStableDecay(
            learning_rate, total_steps, warmup_steps, cooldown_fraction, min_learning_rate_ratio
        )
    raise ValueError(f"`schedule` must be 'cosine' or 'wsd', got {schedule!r}.")


#: Parameter groups of the speedrun recipe, as regular expressions over variable
#: paths (`re.fullmatch`; Keras' `OptimizerMap` keys). Whatever matches none is a
#: "scalar": norm scales and offsets, biases.
PARAMETER_GROUPS = {
    # The blocks' 2-D weight matrices: QKV, attention output, MLP in and out.
    "matrix": r".*/block_\d+/.*kernel",
    "embedding": r".*/embeddings/(token|position)_embeddings",
    # The untied output projection (nanochat's "unembedding").
    "head": r".*/lm_head/kernel",
}


def parameter_group(path: str) -> str:
    """The group of a variable path: `"matrix"`, `"embedding"`, `"head"` or `"scalar"`.

    Example:
    >>> parameter_group("gpt/block_0/mlp_in/kernel"), parameter_group("gpt/final_norm/scale")
    ('matrix', 'scalar')
    """
    for group, pattern in PARAMETER_GROUPS.items():
        if re.fullmatch(pattern, path):
            return group
    return "scalar"


def speedrun_optimizer(
    total_steps: int | float | keras.Variable,
    learning_rate: float = 3e-3,
    matrix_learning_rate: float = 0.01,
    embedding_learning_rate: float | None = None,
    unembedding_learning_rate: float | None = None,
    scalar_learning_rate: float | None = None,
    matrix_optimizer: str = "muon",
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    cooldown_fraction: float = 0.4,
    min_learning_rate_ratio: float = 0.0,
    schedule: str = "wsd",
    beta_1: float = 0.9,
    beta_2: float = 0.95,
    epsilon: float = 1e-8,
    muon_momentum: float = 0.95,
    muon_ns_steps: int = 5,
    muon_rms_rate: float | None = 0.2,
    clipnorm: float | None = None,
) -> keras.optimizers.Optimizer:
    """The speedrun recipe's optimizer: Muon on the hidden matrices, AdamW on the rest.

    Variables are split by path into `PARAMETER_GROUPS`; each group has its
    own learning rate (every group follows the same `schedule`, scaled to its
    peak). The blocks' matrices use Keras' `keras.optimizers.Muon`
    (momentum with Nesterov, `muon_ns_steps` Newton–Schulz iterations to
    orthogonalise the update, scaled by `muon_rms_rate`·√max(rows, cols) so
    that one rate suits matrices of every shape; `matrix_optimizer="adamw"`
    gives them AdamW instead) and `weight_decay`. Embeddings, the untied head
    and the scalars (norms, biases) use AdamW without weight decay.
    Groups with equal rates share one AdamW. Keras' `MultiOptimizer` routes
    each variable (an `OptimizerMap` of the patterns), so the optimizer
    saves, loads and checkpoints like any other.

    Gradient clipping (`clipnorm`), where set, applies per optimizer: Muon's
    orthogonalised update does not scale with the gradient's norm anyway.

    Args:
        total_steps: steps of the run (or a variable; see `WarmupStableDecay`).
        learning_rate: AdamW's peak rate, for groups whose own rate is `None`.
        matrix_learning_rate: the matrices' peak rate (Muon's, or AdamW's).
        embedding_learning_rate: token and position embeddings.
        unembedding_learning_rate: the untied output head.
        scalar_learning_rate: norm scales and offsets, biases.
        matrix_optimizer: `"muon"` or `"adamw"`.
        weight_decay: decoupled weight decay on the matrices.
        warmup_steps: linear warm-up steps.
        cooldown_fraction: with `"wsd"`, the share of the run spent cooling down.
        min_learning_rate_ratio: final rate as a fraction of each peak.
        schedule: `"wsd"` or `"cosine"`.
        beta_1: AdamW β1.
        beta_2: AdamW β2.
        epsilon: AdamW ε.
        muon_momentum: Muon's momentum.
        muon_ns_steps: Newton–Schulz iterations.
        muon_rms_rate: Keras Muon's `rms_rate` (`None`: no shape scaling).
        clipnorm: per-optimizer global-norm clipping; `None` disables.

    Example:
    >>> model.compile(optimizer=speedrun_optimizer(total_steps=600))
    """

    def schedule_at(peak: float):
        return learning_rate_schedule(
            peak, total_steps, warmup_steps, min_learning_rate_ratio, schedule, cooldown_fraction
        )

    def adamw(peak: float, decay: float, name: str):
        settings = dict(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, global_clipnorm=clipnorm)
        if not decay:
            # Adam is AdamW without the decay step, which Keras runs for a decay of 0
            # too (an assign per variable, every step): the same updates, fewer ops.
            return keras.optimizers.Adam(schedule_at(peak), name=name, **settings)
        return keras.optimizers.AdamW(schedule_at(peak), weight_decay=decay, name=name, **settings)

    if matrix_optimizer == "muon":
        matrices = keras.optimizers.Muon(
            schedule_at(matrix_learning_rate),
            momentum=muon_momentum,
            nesterov=True,
            ns_steps=muon_ns_steps,
            rms_rate=muon_rms_rate,
            # None, not 0: Keras' Muon skips the decay step only for None.
            weight_decay=weight_decay or None,
            global_clipnorm=clipnorm,
            # Muon sees only the blocks' 2-D matrices (the map below), so its
            # own exclusions never apply; its AdamW branch is unused.
            exclude_embeddings=False,
            name="muon",
        )
    elif matrix_optimizer == "adamw":
        matrices = adamw(matrix_learning_rate, weight_decay, "adamw_matrix")
    else:
        raise ValueError(f"`matrix_optimizer` must be 'muon' or 'adamw', got {matrix_optimizer!r}.")
    shared: dict[float, keras.optimizers.Optimizer] = {}

    def adamw_at(rate: float | None) -> keras.optimizers.Optimizer:
        rate = learning_rate if rate is None else rate
        if rate not in shared:
            shared[rate] = adamw(rate, 0.0, f"adamw_{len(shared)}")
        return shared[rate]

    scalars = adamw_at(scalar_learning_rate)
    routes = keras.optimizers.OptimizerMap(
        scalars,
        {
            PARAMETER_GROUPS["matrix"]: matrices,
            PARAMETER_GROUPS["embedding"]: adamw_at(embedding_learning_rate),
            PARAMETER_GROUPS["head"]: adamw_at(unembedding_learning_rate),
        },
    )
    return keras.optimizers.MultiOptimizer(routes, name="speedrun")


def time_budget_variable(optimizer: keras.optimizers.Optimizer, total_steps: int) -> keras.Variable:
    """A run length the training loop can move, for the optimizer's warmup-stable-decay schedules.

    Creates a scalar variable tracked by `optimizer` (so it is part of the
    optimizer's state on every backend, inside JAX's compiled step too, and
    saved with it in checkpoints) and points every `WarmupStableDecay` of
    `optimizer` (or of its sub-optimizers) at it. `train_loop` with
    `max_seconds` then re-estimates the run's length from its speed after each
    round, so the cool-down ends when the time budget does. Call it before
    training.

    Args:
        optimizer: an optimizer whose schedules are `WarmupStableDecay`.
        total_steps: the initial length (the run's `max_steps`).
    """
    inner = getattr(optimizer, "optimizers", None) or [optimizer]
    schedules = [o._learning_rate for o in inner if isinstance(o._learning_rate, WarmupStableDecay)]
    if not schedules:
        raise ValueError("A time-budgeted run length needs warmup-stable-decay schedules.")
    variable = optimizer.add_variable((), initializer="zeros", dtype="float32", name="total_steps")
    variable.assign(float(total_steps))
    for schedule in schedules:
        schedule.total_steps = variable
    return variable


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The optimizer's learning rate now; for a `MultiOptimizer`, its first optimizer's
    (the speedrun recipe's matrices)."""
    if isinstance(optimizer, keras.optimizers.MultiOptimizer):
        optimizer = optimizer.optimizers[0]
    return float(ops.convert_to_numpy(optimizer.learning_rate))
