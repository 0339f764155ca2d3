"""Fine-tuning a preset on instruction data, fully or with LoRA.

`keras-gpt finetune` and `recipes/finetune.py` wrap `finetune`. Outputs match
pretraining (`config.toml`, `metrics.jsonl`/`.csv`, `loss_curve.png`,
`checkpoints/`, `best/` as a preset with merged weights, plus
`best/adapters.npz` for LoRA runs). Evaluation runs every `eval_interval`
steps; training stops early after `patience` evaluations without a better
validation loss. `resume=True` continues a killed run exactly: checkpoints
hold every model variable (adapters unmerged) and the optimizer state, and
batches are a pure function of the step.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil

import keras
import numpy as np

from keras_gpt.data import InstructionBatches, read_instructions
from keras_gpt.gpt import GPT
from keras_gpt.metrics import Perplexity
from keras_gpt.presets import load_tokenizer
from keras_gpt.training import RunConfig, gpt_optimizer, train_loop


@dataclasses.dataclass
class FinetuneConfig(RunConfig):
    """Every setting of a fine-tuning run.

    Attributes:
        preset: preset handle or directory to start from.
        data: JSONL file of `{"prompt", "response"}` or `{"messages"}` records.
        validation_data: JSONL for validation; default: the last
            `validation_fraction` of `data`.
        validation_fraction: share of `data` held out when no validation file.
        out: output directory.
        lora_rank: LoRA rank; 0 fine-tunes every weight.
        lora_alpha: LoRA alpha (default: the rank).
        lora_target: comma-separated projections to adapt.
        sequence_length: example length (default: the model's context).
        batch_size: examples per step.
        max_steps: training steps.
        learning_rate: peak learning rate.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay on weight matrices.
        clipnorm: global gradient-norm clipping (0 disables).
        eval_interval: evaluate, log and checkpoint every this many steps.
        patience: stop after this many evaluations without improvement (0: never).
        seed: shuffling seed.
        verbose: Keras progress-bar verbosity.
    """

    preset: str = ""
    data: str = ""
    validation_data: str | None = None
    validation_fraction: float = 0.1
    out: str = "runs/finetune"
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_target: str = "qkv,attn_out,mlp_in,mlp_out"
    sequence_length: int = 0
    batch_size: int = 8
    max_steps: int = 500
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    clipnorm: float = 1.0
    eval_interval: int = 50
    patience: int = 3
    seed: int = 0
    verbose: int = 1


def finetune(config: FinetuneConfig, resume: bool = False) -> dict:
    """Fine-tunes `config.preset` on `config.data`; returns a summary.

    Args:
        config: the run's settings.
        resume: continue from `config.out/checkpoints` if it holds a checkpoint.

    Returns:
        A dict with `steps`, `val_loss`, `best_val_loss`, `trainable_parameters`
        and `out`.

    Example:
    >>> finetune(FinetuneConfig(preset="runs/pretrain/best", data="train.jsonl", lora_rank=8))
    """
    if not config.preset or not config.data:
        raise ValueError("Fine-tuning needs `preset` and `data`.")
    out = pathlib.Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"keras_gpt finetune · backend {keras.backend.backend()}")
    for key, value in dataclasses.asdict(config).items():
        print(f"  {key} = {value!r}")
    (out / "config.toml").write_text(config.to_toml())

    model = GPT.from_preset(config.preset)
    tokenizer = load_tokenizer(config.preset)
    length = config.sequence_length or model.max_sequence_length
    records = read_instructions(config.data)
    if config.validation_data:
        train_records, val_records = records, read_instructions(config.validation_data)
    else:
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(records))
        held = max(1, int(round(config.validation_fraction * len(records))))
        val_records = [records[i] for i in order[:held]]
        train_records = [records[i] for i in order[held:]]
    train = InstructionBatches(train_records, tokenizer, length, config.batch_size, seed=config.seed)
    validation = InstructionBatches(val_records, tokenizer, length, config.batch_size, seed=None)

    if config.lora_rank:
        model.enable_lora(config.lora_rank, alpha=config.lora_alpha or None,
                          target=tuple(t.strip() for t in config.lora_target.split(",")))
    model.compile(
        optimizer=gpt_optimizer(config.learning_rate, total_steps=config.max_steps,
                                warmup_steps=config.warmup_steps,
                                weight_decay=config.weight_decay,
                                clipnorm=config.clipnorm or None),
        metrics=[Perplexity()],
    )
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    print(f"trainable parameters: {trainable:,} of {model.count_params():,} · "
          f"{len(train_records)} train / {len(val_records)} validation examples")

    def batch_at(step: int):
        return train.batch(step // len(train), step % len(train))

    def save_best(model):
        _save_best(model, tokenizer, out / "best", config)

    state = train_loop(model, batch_at, validation, out, max_steps=config.max_steps,
                       eval_interval=config.eval_interval,
                       tokens_per_step=config.batch_size * length, resume=resume,
                       verbose=config.verbose, patience=config.patience, save_best=save_best)
    return {"steps": state["step"], "val_loss": state["val_loss"],
            "best_val_loss": state["best_val_loss"], "trainable_parameters": trainable,
            "out": str(out)}


def _save_best(model, tokenizer, directory: pathlib.Path, config: FinetuneConfig) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_to_preset(  # saves the adapters merged into the kernels
        str(tmp), tokenizer=tokenizer,
        data_description=f"fine-tuned from {config.preset} on {config.data}")
    if model.lora_config:
        model.save_lora(str(tmp / "adapters.npz"))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
