"""Pretraining: config → data → GPT → fit with evaluation, checkpoints and resume.

`keras-gpt pretrain` is a thin wrapper around
`pretrain`. A run writes into its output directory:

- `config.toml`: every value, as run;
- `data/`: the tokenised corpus (`keras_gpt.data.prepare`, skipped when unchanged);
- `metrics.jsonl`: one JSON object per evaluation (`step`, `train_loss`,
  `val_loss`, `val_perplexity`, `tokens_per_second`, `mfu`, `learning_rate`,
  `elapsed_seconds`), and the same as `metrics.csv`;
- `checkpoints/`: every model variable, the optimizer state and the step,
  written atomically at every evaluation (`keras_gpt.training.save_checkpoint`);
- `best/`: the model with the lowest validation loss, with its tokenizer;
- `loss_curve.png`: train and validation loss against step (needs matplotlib).

An output directory that already holds a run is refused unless the call
resumes it or sets `overwrite` (`keras_gpt.training.runs.start_run`).
Resuming (`resume=True`) checks the checkpoint against the config, reloads it
and continues at its step.
Batches are a pure function of (seed, step) and dropout masks come from
counters saved with the model, so a resumed run reproduces the loss curve of
an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import keras
import numpy as np

from keras_gpt.backend import accelerator_name
from keras_gpt.data import (
    RandomWindows,
    SequentialWindows,
    make_tokenizer,
    resolve_data,
    tokenize_corpus,
)
from keras_gpt.files import atomic_directory, write_text_atomic
from keras_gpt.model.gpt import GPT
from keras_gpt.model.metrics import Perplexity
from keras_gpt.training.checkpoints import no_tensorflow_import
from keras_gpt.training.config import PretrainConfig
from keras_gpt.training.evaluate import evaluate_run
from keras_gpt.training.history import mean_throughput
from keras_gpt.training.loop import train_loop
from keras_gpt.training.optimizer import gpt_optimizer, speedrun_optimizer, time_budget_variable
from keras_gpt.training.runs import start_run
from keras_gpt.training.throughput import (
    Throughput,
    device_peak_flops,
    flops_per_token,
    probe_peak_flops,
)

#: Tokens per validation forward pass when `eval_batch_size = 0`.
EVAL_TOKENS = 16_384


def load_config(
    path: str | os.PathLike | None = None, overrides: dict | None = None
) -> PretrainConfig:
    """Reads a pretraining TOML config (flat `key = value`) and applies `overrides`."""
    return PretrainConfig.load(path, overrides)


def pretrain(config: PretrainConfig, resume: bool = False) -> dict:
    """Runs (or resumes) pretraining; returns a summary of the run.

    Args:
        config: the run's settings.
        resume: continue from `config.out/checkpoints` if it holds a checkpoint
            (written with the same settings, except those in
            `keras_gpt.training.runs.RESUMABLE_SETTINGS`).

    Returns:
        A dict with `steps`, `val_loss`, `best_val_loss`, `tokens_per_second`,
        `out` and, when asked for, `sample`.

    Example:
    >>> summary = pretrain(load_config("recipes/configs/shakespeare_char.toml"))
    """
    out = pathlib.Path(config.out)
    _start(config, out, resume)
    tokenizer, windows, validation, final_validation = _prepare_data(config, out)
    if config.data_parallel or config.model_parallel > 1:
        from keras_gpt.distribution.jax import configure

        # Before the model exists: variables are placed when they are created.
        configure(data_parallel=config.data_parallel, model_parallel=config.model_parallel)
    model, budget_steps = _compiled_model(config, tokenizer.vocabulary_size)
    print(
        f"model: {model.count_params():,} parameters · "
        f"{len(windows.tokens):,} train / {len(validation.tokens):,} validation tokens"
    )
    tokens_per_step = config.batch_size * config.sequence_length
    peak, source = peak_flops(config)
    print(f"peak {peak / 1e9:,.0f} GFLOP/s ({source}), for MFU")
    flops = flops_per_token(model, config.sequence_length)
    callbacks = [Throughput(tokens_per_step, flops, peak)]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard")))

    def save_best(model):
        _save_best(model, tokenizer, out / "best", config)

    state = train_loop(
        model,
        windows.__getitem__,
        validation,
        out,
        final_validation=final_validation,
        max_steps=config.max_steps,
        eval_interval=config.eval_interval,
        tokens_per_step=tokens_per_step,
        resume=resume,
        verbose=config.verbose,
        callbacks=callbacks,
        max_seconds=config.max_seconds,
        budget_steps=budget_steps,
        save_best=save_best,
        flops_per_token=flops,
        peak_flops=peak,
        settings=dataclasses.asdict(config),
    )
    return _finish(config, out, state, model, tokenizer)


def _start(config: PretrainConfig, out: pathlib.Path, resume: bool) -> None:
    """Checks the output directory, then writes and prints the run's settings."""
    set_threads(config.threads)
    # Before anything is written: refuses to replace a run by accident, and
    # checks a resume against its checkpoint.
    start_run(config, resume)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    print(f"keras_gpt pretrain · backend {keras.backend.backend()}")
    for key, value in dataclasses.asdict(config).items():
        print(f"  {key} = {value!r}")
    write_text_atomic(out / "config.toml", config.to_toml())


def _prepare_data(config: PretrainConfig, out: pathlib.Path):
    """The tokenizer, the training batches and the validation windows (tokenised once
    into `out/data`)."""
    inputs = resolve_data(config.data, out / "data")
    tokenizer = make_tokenizer(config.tokenizer, inputs)
    train_tokens, val_tokens = tokenize_corpus(inputs, out / "data" / "tokens", tokenizer)
    windows = RandomWindows(
        train_tokens,
        config.sequence_length,
        config.batch_size,
        steps=config.max_steps,
        seed=config.seed,
    )
    validation = validation_windows(val_tokens, config)
    return tokenizer, windows, validation, final_validation_windows(val_tokens, config)


def _compiled_model(config: PretrainConfig, vocabulary_size: int):
    """The compiled model, and the run-length variable a time budget moves (or None)."""
    model = build_model(config, vocabulary_size)
    optimizer = build_optimizer(config)
    # With a time budget and warmup-stable-decay, the loop moves the run's length
    # (the schedules' total steps) to where the budget will end it.
    budget_steps = None
    if config.max_seconds and config.schedule == "wsd":
        budget_steps = time_budget_variable(optimizer, config.max_steps)
    model.compile(optimizer=optimizer, metrics=[Perplexity()], jit_compile=jit_compile(config))
    # The optimizer's variables exist before the first step: TensorFlow traces a step
    # that creates variables twice (once to create them, once without).
    optimizer.build(model.trainable_variables)
    return model, budget_steps


def _finish(config: PretrainConfig, out: pathlib.Path, state: dict, model, tokenizer) -> dict:
    """The run's summary, with the sample and the evaluation its config asks for."""
    summary = {
        "steps": state["step"],
        "val_loss": state["val_loss"],
        "best_val_loss": state["best_val_loss"],
        "tokens_per_second": mean_throughput(out),
        "elapsed_seconds": state["elapsed_seconds"],
        "out": str(out),
    }
    if config.sample_tokens:
        prompt = tokenizer.encode(config.sample_prompt) or [0]
        room = config.sequence_length - len(prompt)
        ids = model.generate(
            np.array([prompt]),
            max_new_tokens=min(config.sample_tokens, room),
            sampler="top_k",
            top_k=20,
            temperature=config.sample_temperature,
            seed=config.seed,
        )
        summary["sample"] = tokenizer.decode(ids[0])
        print("sample:\n" + summary["sample"])
    if config.evaluate_data:
        summary["evaluation"] = evaluate_run(
            out, state["step"], config.evaluate_data, config.evaluate_task
        )
    return summary


def build_model(config: PretrainConfig, vocabulary_size: int) -> GPT:
    """The `GPT` a pretraining config describes."""
    return GPT(
        vocabulary_size=vocabulary_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        hidden_dim=config.hidden_dim,
        max_sequence_length=config.sequence_length,
        dropout=config.dropout,
        use_bias=config.use_bias,
        activation=config.activation,
        position_embedding=config.position_embedding,
        rope_base=config.rope_base,
        normalization=config.normalization,
        norm_scale=config.norm_scale,
        qk_norm=config.qk_norm,
        embedding_norm=config.embedding_norm,
        tie_embeddings=config.tie_embeddings,
        head_init_stddev=config.head_init_stddev,
        residual_init_stddev=None
        if config.residual_init_stddev < 0
        else config.residual_init_stddev,
        logit_soft_cap=config.logit_soft_cap or None,
        value_embeddings=config.value_embeddings or None,
        seed=config.seed,
        dtype=config.dtype,
    )


def build_optimizer(config: PretrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer a pretraining config describes: GPT-2's AdamW or the speedrun's Muon groups."""
    accumulation = (
        config.gradient_accumulation_steps if config.gradient_accumulation_steps > 1 else None
    )
    if config.optimizer == "adamw":
        return gpt_optimizer(
            config.learning_rate,
            total_steps=config.max_steps,
            warmup_steps=config.warmup_steps,
            min_learning_rate_ratio=config.min_learning_rate_ratio,
            weight_decay=config.weight_decay,
            beta_1=config.beta_1,
            beta_2=config.beta_2,
            clipnorm=config.clipnorm or None,
            gradient_accumulation_steps=accumulation,
            epsilon=config.adam_epsilon,
            decay_embeddings=config.decay_embeddings,
            schedule=config.schedule,
            cooldown_fraction=config.cooldown_fraction,
        )
    if config.optimizer != "muon":
        raise ValueError(f"optimizer must be 'adamw' or 'muon', got {config.optimizer!r}")
    if accumulation:
        raise ValueError("gradient_accumulation_steps > 1 is not supported with optimizer 'muon'")
    return speedrun_optimizer(
        config.max_steps,
        learning_rate=config.learning_rate,
        matrix_learning_rate=config.matrix_learning_rate,
        embedding_learning_rate=config.embedding_learning_rate or None,
        unembedding_learning_rate=config.unembedding_learning_rate or None,
        scalar_learning_rate=config.scalar_learning_rate or None,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        cooldown_fraction=config.cooldown_fraction,
        min_learning_rate_ratio=config.min_learning_rate_ratio,
        schedule=config.schedule,
        beta_1=config.beta_1,
        beta_2=config.beta_2,
        epsilon=config.adam_epsilon,
        muon_momentum=config.muon_momentum,
        muon_ns_steps=config.muon_ns_steps,
        muon_rms_rate=config.muon_rms_rate or None,
        clipnorm=config.clipnorm or None,
    )


def validation_windows(
    tokens, config: PretrainConfig, batches: int | None = None
) -> SequentialWindows:
    """The windows an evaluation scores: `batches` (default `eval_batches`) batches of
    `batch_size` windows, evenly spaced over the validation split (0: the whole split),
    read in passes of `eval_batch_size` windows (larger passes, fewer calls: the same
    windows)."""
    length, batch = config.sequence_length, config.batch_size
    batches = config.eval_batches if batches is None else batches
    spread = batches * batch if batches else None
    size = config.eval_batch_size or max(batch, EVAL_TOKENS // length)
    windows = SequentialWindows(tokens, length, size, spread=spread)
    even = even_batch_size(windows.windows, size)
    if config.eval_batch_size or even == size:
        return windows
    return SequentialWindows(tokens, length, even, spread=spread)


def even_batch_size(windows: int, target: int) -> int:
    """The largest batch size in `[target / 2, target]` that divides `windows` into equal
    passes, else `target`.

    A last batch smaller than the others is a new input shape, which JAX and
    TensorFlow compile a second program for (about a second on a CPU); passes of
    at least half the target size cost no more calls than that saves.
    """
    if windows <= target or windows % target == 0:
        return target  # one pass, or passes of one size already
    for size in range(target - 1, max(1, (target + 1) // 2) - 1, -1):
        if windows % size == 0:
            return size
    return target


def final_validation_windows(tokens, config: PretrainConfig) -> SequentialWindows | None:
    """The windows of the run's last evaluation, when `final_eval_batches` makes them
    differ from the others' (`None`: the same)."""
    if config.final_eval_batches < 0 or config.final_eval_batches == config.eval_batches:
        return None
    return validation_windows(tokens, config, config.final_eval_batches)


def jit_compile(config: PretrainConfig) -> bool | str:
    """`config.jit_compile` as `GPT.compile` takes it (see `PretrainConfig`)."""
    value = str(config.jit_compile).lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    if value != "auto":
        raise ValueError(f"jit_compile must be auto, true or false, got {config.jit_compile!r}")
    # TensorFlow without XLA runs this model's many small ops one by one (the
    # Shakespeare recipe: 258 ms a step against 107 ms with XLA); XLA's
    # seconds of compiling are repaid within a hundred steps.
    if keras.backend.backend() == "tensorflow" and config.max_steps >= 100:
        return True
    return "auto"


def set_threads(threads: int) -> None:
    """Limits the backend's CPU math to `threads` threads (0: leave its default)."""
    if threads <= 0:
        return
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    elif backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            print("threads: TensorFlow has already started; its thread count is unchanged")
    else:
        # XLA's CPU thread pool is sized when JAX starts: XLA_FLAGS must say it.
        print(
            "threads: on JAX set XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
            "intra_op_parallelism_threads=1' before starting, for one thread"
        )


def peak_flops(config: PretrainConfig) -> tuple[float, str]:
    """The peak FLOP/s MFU is measured against, and where it came from."""
    if config.peak_flops:
        return config.peak_flops, "peak_flops setting"
    compute = "bfloat16" if "bfloat16" in config.dtype else "float32"
    name = accelerator_name()
    if name is not None:
        peak = device_peak_flops(name, compute)
        if peak:
            return peak, f"{name}, published {compute} peak"
    return probe_peak_flops(dtype=compute), f"{compute} matmul probe, a lower bound"


def _save_best(model, tokenizer, directory: pathlib.Path, config: PretrainConfig) -> None:
    # Staged beside `directory` and renamed over it: a reader (a server, `generate`)
    # never sees a half-written best/, and a crash mid-save keeps the previous one.
    with atomic_directory(directory, overwrite=True) as staging, no_tensorflow_import():
        model.save_to_preset(
            staging,
            tokenizer=tokenizer,
            data_description=f"pretrained on {config.data or 'stdlib'}",
        )
