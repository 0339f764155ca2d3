"""Fine-tuning a preset, fully or with LoRA, on instruction data or plain text.

`keras-gpt finetune` wraps `finetune`. The data is
read in one of two ways (`format`):

- `"instructions"`: a JSONL file of `{"prompt", "response"}` or
  `{"messages"}` records, trained on the response tokens only
  (`keras_gpt.data.InstructionBatches`, padded or packed);
- `"text"`: continued pretraining on any corpus `keras_gpt.data.prepare`
  reads (a text file, folder, glob, or JSONL of `{"text"}` documents),
  tokenised with the preset's own tokenizer and cut into random windows, as
  in pretraining (`keras_gpt.training.pretrain.tokenize_corpus`).

`"auto"` (the default) picks `"instructions"` for a JSONL file whose first
record has `prompt`, `response` or `messages`, and `"text"` otherwise.

Outputs match pretraining (`config.toml`, `metrics.jsonl`/`.csv`,
`loss_curve.png`, `checkpoints/`, `data/` for text, `best/` as a preset with
merged weights, plus `best/adapters.npz` for LoRA runs). Evaluation runs every
`eval_interval` steps; training stops early after `patience` evaluations
without a better validation loss. `resume=True` continues a killed run
exactly: checkpoints hold every model variable (adapters unmerged) and the
optimizer state, and batches are a pure function of the step.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import keras
import numpy as np

from keras_gpt.data import (
    InstructionBatches,
    RandomWindows,
    SequentialWindows,
    read_instructions,
    resolve_data,
    tokenize_corpus,
)
from keras_gpt.data.instructions import is_instruction_file
from keras_gpt.files import atomic_directory, write_text_atomic
from keras_gpt.model.gpt import GPT
from keras_gpt.model.metrics import Perplexity
from keras_gpt.presets import load_tokenizer
from keras_gpt.training.checkpoints import no_tensorflow_import
from keras_gpt.training.config import FinetuneConfig
from keras_gpt.training.evaluate import evaluate_run
from keras_gpt.training.loop import train_loop
from keras_gpt.training.optimizer import gpt_optimizer
from keras_gpt.training.runs import start_run

FORMATS = ("auto", "instructions", "text")


def finetune(config: FinetuneConfig, resume: bool = False) -> dict:
    """Fine-tunes `config.preset` on `config.data`; returns a summary.

    Args:
        config: the run's settings.
        resume: continue from `config.out/checkpoints` if it holds a checkpoint
            (written with the same settings, except those in
            `keras_gpt.training.runs.RESUMABLE_SETTINGS`).

    Returns:
        A dict with `steps`, `val_loss`, `best_val_loss`, `trainable_parameters`,
        `format` and `out`.

    Example:
    >>> finetune(FinetuneConfig(preset="runs/pretrain/best", data="train.jsonl", lora_rank=8))
    >>> finetune(FinetuneConfig(preset="runs/pretrain/best", data="books/", out="runs/more"))
    """
    if not config.preset or not config.data:
        raise ValueError("Fine-tuning needs `preset` and `data`.")
    if config.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {config.format!r}.")
    data_format = config.format
    if data_format == "auto":
        data_format = "instructions" if is_instruction_file(config.data) else "text"
    out = pathlib.Path(config.out)
    start_run(config, resume)  # before anything is written (see pretrain)
    out.mkdir(parents=True, exist_ok=True)
    print(f"keras_gpt finetune · backend {keras.backend.backend()} · {data_format} data")
    for key, value in dataclasses.asdict(config).items():
        print(f"  {key} = {value!r}")
    write_text_atomic(out / "config.toml", config.to_toml())

    model = GPT.from_preset(config.preset)
    tokenizer = load_tokenizer(config.preset)
    length = config.sequence_length or model.max_sequence_length
    if length > model.max_sequence_length:
        raise ValueError(
            f"sequence_length={length} exceeds the preset's context of "
            f"{model.max_sequence_length} tokens."
        )
    if data_format == "instructions":
        batch_at, validation, description = _instruction_data(config, tokenizer, length)
    else:
        batch_at, validation, description = _text_data(config, tokenizer, length, out / "data")

    if config.lora_rank:
        model.enable_lora(
            config.lora_rank,
            alpha=config.lora_alpha or None,
            target=tuple(t.strip() for t in config.lora_target.split(",")),
        )
    model.compile(
        optimizer=gpt_optimizer(
            config.learning_rate,
            total_steps=config.max_steps,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            clipnorm=config.clipnorm or None,
        ),
        metrics=[Perplexity()],
    )
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    print(f"trainable parameters: {trainable:,} of {model.count_params():,} · {description}")

    # What `keras-gpt serve` needs to answer chat completions: the template trained.
    chat_template = None
    if data_format == "instructions":
        records = read_instructions(config.data)
        chat_template = "messages" if any("messages" in r for r in records) else "instruction"

    def save_best(model):
        _save_best(model, tokenizer, out / "best", config, chat_template)

    state = train_loop(
        model,
        batch_at,
        validation,
        out,
        max_steps=config.max_steps,
        eval_interval=config.eval_interval,
        tokens_per_step=config.batch_size * length,
        resume=resume,
        verbose=config.verbose,
        max_seconds=config.max_seconds,
        patience=config.patience,
        save_best=save_best,
        settings=dataclasses.asdict(config),
    )
    summary = {
        "steps": state["step"],
        "val_loss": state["val_loss"],
        "best_val_loss": state["best_val_loss"],
        "trainable_parameters": trainable,
        "format": data_format,
        "out": str(out),
    }
    if config.evaluate_data:
        summary["evaluation"] = evaluate_run(
            out, state["step"], config.evaluate_data, config.evaluate_task
        )
    return summary


def _instruction_data(config: FinetuneConfig, tokenizer, length: int):
    """Batches of a step, validation batches and a description, for instruction JSONL."""
    records = read_instructions(config.data)
    if config.validation_data:
        train_records, val_records = records, read_instructions(config.validation_data)
    else:
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(records))
        held = max(1, int(round(config.validation_fraction * len(records))))
        val_records = [records[i] for i in order[:held]]
        train_records = [records[i] for i in order[held:]]
    train = InstructionBatches(
        train_records, tokenizer, length, config.batch_size, seed=config.seed, pack=config.pack
    )
    validation = InstructionBatches(
        val_records, tokenizer, length, config.batch_size, seed=None, pack=config.pack
    )

    def batch_at(step: int):
        return train.batch(step // len(train), step % len(train))

    return (
        batch_at,
        validation,
        (
            f"{len(train_records)} train / {len(val_records)} "
            f"validation examples in {len(train.encoded)} rows"
        ),
    )


def _text_data(config: FinetuneConfig, tokenizer, length: int, directory: pathlib.Path):
    """Batches of a step, validation batches and a description, for plain text (as pretraining)."""
    inputs = resolve_data(config.data, directory)
    if config.validation_data:
        train_tokens = tokenize_corpus(inputs, directory / "tokens", tokenizer, 0.0)[0]
        val_tokens = tokenize_corpus(
            resolve_data(config.validation_data, directory),
            directory / "validation_tokens",
            tokenizer,
            0.0,
        )[0]
    else:
        train_tokens, val_tokens = tokenize_corpus(
            inputs, directory / "tokens", tokenizer, config.validation_fraction
        )
    windows = RandomWindows(
        train_tokens, length, config.batch_size, steps=config.max_steps, seed=config.seed
    )
    validation = SequentialWindows(
        val_tokens, length, config.batch_size, max_batches=config.eval_batches or None
    )
    return (
        windows.__getitem__,
        validation,
        (f"{len(train_tokens):,} train / {len(val_tokens):,} validation tokens"),
    )


def _save_best(
    model, tokenizer, directory: pathlib.Path, config: FinetuneConfig, chat_template=None
) -> None:
    # Staged beside `directory` and renamed over it (see pretrain's `_save_best`).
    with atomic_directory(directory, overwrite=True) as staging:
        with no_tensorflow_import():
            model.save_to_preset(  # saves the adapters merged into the kernels
                str(staging),
                tokenizer=tokenizer,
                data_description=f"fine-tuned from {config.preset} on {config.data}",
            )
        if chat_template:
            # The instruction template the model learned (`keras_gpt.data.instructions`):
            # "instruction" for prompt/response records, "messages" for chat records.
            metadata_path = staging / "metadata.json"
            metadata = json.loads(metadata_path.read_text())
            metadata["chat_template"] = chat_template
            metadata_path.write_text(json.dumps(metadata, indent=2))
        if model.lora_config:
            model.save_lora(str(staging / "adapters.npz"))
