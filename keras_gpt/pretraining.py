"""Pretraining: config → data → GPT → fit with evaluation, checkpoints and resume.

`keras-gpt pretrain` and `recipes/pretrain.py` are thin wrappers around
`pretrain`. A run writes into its output directory:

- `config.toml`: every value, as run;
- `data/`: the tokenised corpus (`keras_gpt.data.prepare`, skipped when unchanged);
- `metrics.jsonl`: one JSON object per evaluation (`step`, `train_loss`,
  `val_loss`, `val_perplexity`, `tokens_per_second`, `mfu`, `learning_rate`,
  `elapsed_seconds`), and the same as `metrics.csv`;
- `checkpoints/latest.keras` + `checkpoints/state.json`: model, optimizer
  state and step, written atomically at every evaluation;
- `best/`: the model with the lowest validation loss, with its tokenizer;
- `loss_curve.png`: train and validation loss against step (needs matplotlib).

Resuming (`resume=True`) reloads the checkpoint and continues at its step.
Batches are a pure function of (seed, step) and dropout masks come from
counters saved with the model, so a resumed run reproduces the loss curve of
an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import time
import urllib.request

import keras
import numpy as np

from keras_gpt.data import RandomWindows, SequentialWindows, TokenStream, prepare, stdlib_corpus
from keras_gpt.gpt import GPT
from keras_gpt.metrics import Perplexity
from keras_gpt.tokenizers import ByteTokenizer, CharTokenizer, load_tokenizer
from keras_gpt.training import (
    RunConfig,
    Throughput,
    append_metrics,
    exclude_from_decay,
    flops_per_token,
    gpt_optimizer,
    mean_throughput,
    plot_loss_curve,
    probe_peak_flops,
    read_metrics,
    write_json_atomic,
)

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_CANDIDATES = ("../shared/data/tinyshakespeare.txt", "data/tinyshakespeare.txt")


@dataclasses.dataclass
class PretrainConfig(RunConfig):
    """Every setting of a pretraining run (a TOML file or `--key value` flags).

    Attributes:
        data: text file, folder, glob or JSONL; `"shakespeare"`; `None` (or
            `"stdlib"`) for Python's own standard-library source.
        tokenizer: `"byte"`, `"char"` (vocabulary from the corpus) or a
            directory holding a saved tokenizer.
        out: output directory.
        num_layers: transformer blocks.
        num_heads: attention heads.
        hidden_dim: model width.
        sequence_length: context length (the model's `max_sequence_length`).
        dropout: dropout rate.
        batch_size: sequences per step.
        gradient_accumulation_steps: batches per optimizer update.
        max_steps: training steps.
        max_seconds: stop early after this much training time (0 = no limit).
        learning_rate: peak learning rate.
        min_learning_rate_ratio: final learning rate as a fraction of the peak.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW decay on weight matrices.
        beta_1: Adam β1.
        beta_2: Adam β2.
        clipnorm: global gradient-norm clipping (0 disables).
        dtype: `"float32"` or `"mixed_bfloat16"`.
        eval_interval: evaluate, log and checkpoint every this many steps.
        eval_batches: validation batches per evaluation.
        seed: seed for weights, dropout and batches.
        peak_flops: peak FLOP/s for MFU; 0 measures it with a matmul probe.
        tensorboard: also write TensorBoard logs to `out/tensorboard`.
        verbose: Keras progress-bar verbosity (0, 1 or 2).
        sample_prompt: prompt for the sample printed at the end.
        sample_tokens: length of that sample (0: no sample).
    """

    data: str | None = None
    tokenizer: str = "byte"
    out: str = "runs/pretrain"
    num_layers: int = 4
    num_heads: int = 4
    hidden_dim: int = 128
    sequence_length: int = 128
    dropout: float = 0.0
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_steps: int = 2000
    max_seconds: float = 0.0
    learning_rate: float = 1e-3
    min_learning_rate_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.95
    clipnorm: float = 1.0
    dtype: str = "float32"
    eval_interval: int = 250
    eval_batches: int = 20
    seed: int = 0
    peak_flops: float = 0.0
    tensorboard: bool = False
    verbose: int = 1
    sample_prompt: str = "\n"
    sample_tokens: int = 200


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> PretrainConfig:
    """Reads a pretraining TOML config (flat `key = value`) and applies `overrides`."""
    return PretrainConfig.load(path, overrides)


def resolve_data(data: str | None, cache_dir: pathlib.Path) -> list[str]:
    """Input paths for `prepare`: the stdlib corpus, Shakespeare, or the user's."""
    if data in (None, "", "stdlib"):
        path = cache_dir / "stdlib.txt"
        if not path.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(stdlib_corpus(), encoding="utf-8")
            os.replace(tmp, path)
        return [str(path)]
    if data == "shakespeare":
        for candidate in (os.environ.get("KERAS_GPT_SHAKESPEARE"), *SHAKESPEARE_CANDIDATES):
            if candidate and os.path.exists(candidate):
                return [candidate]
        path = cache_dir / "tinyshakespeare.txt"
        if not path.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            try:
                urllib.request.urlretrieve(SHAKESPEARE_URL, path.with_suffix(".tmp"))
            except OSError as error:
                raise FileNotFoundError(
                    "tinyshakespeare not found locally (set KERAS_GPT_SHAKESPEARE or pass "
                    f"--data PATH) and downloading {SHAKESPEARE_URL} failed: {error}"
                ) from None
            os.replace(path.with_suffix(".tmp"), path)
        return [str(path)]
    return [data]


def make_tokenizer(name: str, inputs: list[str]):
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        from keras_gpt.data import read_documents

        return CharTokenizer.from_text(read_documents(inputs))
    if os.path.isdir(name):
        return load_tokenizer(name)
    raise ValueError(f"tokenizer must be 'byte', 'char' or a tokenizer directory, got {name!r}.")


class _FromStep(keras.utils.PyDataset):
    """Batches `start … start + steps` of a `RandomWindows`: resuming skips ahead exactly."""

    def __init__(self, windows: RandomWindows, start: int, steps: int):
        super().__init__()
        self.windows, self.start, self.steps = windows, start, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        return self.windows[self.start + index]


def pretrain(config: PretrainConfig, resume: bool = False) -> dict:
    """Runs (or resumes) pretraining; returns a summary of the run.

    Args:
        config: the run's settings.
        resume: continue from `config.out/checkpoints` if it holds a checkpoint.

    Returns:
        A dict with `steps`, `val_loss`, `best_val_loss`, `tokens_per_second`,
        `out` and, when asked for, `sample`.

    Example:
    >>> summary = pretrain(load_config("recipes/configs/shakespeare_char.toml"))
    """
    out = pathlib.Path(config.out)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    print(f"keras_gpt pretrain · backend {keras.backend.backend()}")
    for key, value in dataclasses.asdict(config).items():
        print(f"  {key} = {value!r}")
    (out / "config.toml").write_text(config.to_toml())

    inputs = resolve_data(config.data, out / "data")
    tokenizer = make_tokenizer(config.tokenizer, inputs)
    end_of_text = "<|endoftext|>" if "<|endoftext|>" in getattr(tokenizer, "special_tokens", ()) else None
    prepare(inputs, out / "data" / "tokens", tokenizer, end_of_text=end_of_text)
    train_tokens = TokenStream.from_directory(out / "data" / "tokens", "train")
    val_tokens = TokenStream.from_directory(out / "data" / "tokens", "val")
    windows = RandomWindows(train_tokens, config.sequence_length, config.batch_size,
                            steps=config.max_steps, seed=config.seed)
    validation = SequentialWindows(val_tokens, config.sequence_length, config.batch_size,
                                   max_batches=config.eval_batches)

    state_path = checkpoints / "state.json"
    latest = checkpoints / "latest.keras"
    if resume and state_path.exists() and latest.exists():
        state = json.loads(state_path.read_text())
        model = keras.saving.load_model(latest)
        exclude_from_decay(model.optimizer)
        print(f"resumed from step {state['step']}")
    else:
        state = {"step": 0, "best_val_loss": math.inf, "elapsed_seconds": 0.0}
        model = GPT(vocabulary_size=tokenizer.vocabulary_size, num_layers=config.num_layers,
                    num_heads=config.num_heads, hidden_dim=config.hidden_dim,
                    max_sequence_length=config.sequence_length, dropout=config.dropout,
                    seed=config.seed, dtype=config.dtype)
        model.compile(
            optimizer=gpt_optimizer(
                config.learning_rate, total_steps=config.max_steps,
                warmup_steps=config.warmup_steps,
                min_learning_rate_ratio=config.min_learning_rate_ratio,
                weight_decay=config.weight_decay, beta_1=config.beta_1, beta_2=config.beta_2,
                clipnorm=config.clipnorm or None,
                gradient_accumulation_steps=(config.gradient_accumulation_steps
                                             if config.gradient_accumulation_steps > 1 else None),
            ),
            metrics=[Perplexity()],
        )
        for name in ("metrics.jsonl", "metrics.csv"):
            (out / name).unlink(missing_ok=True)
    print(f"model: {model.count_params():,} parameters · "
          f"{train_tokens.__len__():,} train / {len(val_tokens):,} validation tokens")

    tokens_per_step = config.batch_size * config.sequence_length
    peak = config.peak_flops or probe_peak_flops()
    throughput = Throughput(tokens_per_step, flops_per_token(model, config.sequence_length), peak)
    callbacks = [throughput]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard")))

    step, val_loss = state["step"], state.get("val_loss", math.nan)
    while step < config.max_steps:
        if config.max_seconds and state["elapsed_seconds"] >= config.max_seconds:
            print(f"time budget of {config.max_seconds:.0f} s reached at step {step}")
            break
        steps = min(config.eval_interval, config.max_steps - step)
        start = time.perf_counter()
        history = model.fit(_FromStep(windows, step, steps), epochs=1,
                            verbose=config.verbose, callbacks=callbacks)
        seconds = time.perf_counter() - start
        step += steps
        state["elapsed_seconds"] += seconds
        val_loss, val_ppl = model.evaluate(validation, verbose=0)
        row = {
            "step": step,
            "train_loss": float(history.history["loss"][-1]),
            "val_loss": float(val_loss),
            "val_perplexity": float(val_ppl),
            "tokens_per_second": steps * tokens_per_step / seconds,
            "mfu": steps * tokens_per_step * throughput.flops_per_token / seconds / peak,
            "learning_rate": float(keras.ops.convert_to_numpy(
                model.optimizer.learning_rate)),
            "elapsed_seconds": state["elapsed_seconds"],
        }
        print(f"step {step}: train loss {row['train_loss']:.4f} · val loss {val_loss:.4f} · "
              f"{row['tokens_per_second']:,.0f} tokens/s")
        state.update(step=step, val_loss=float(val_loss))
        if val_loss < state["best_val_loss"]:
            state["best_val_loss"] = float(val_loss)
            _save_best(model, tokenizer, out / "best", config)
        _checkpoint(model, state, latest, state_path)
        append_metrics(out, row)

    summary = {"steps": step, "val_loss": float(val_loss), "best_val_loss": state["best_val_loss"],
               "tokens_per_second": mean_throughput(out), "elapsed_seconds": state["elapsed_seconds"],
               "out": str(out)}
    plot_loss_curve(out)
    if config.sample_tokens:
        prompt = tokenizer.encode(config.sample_prompt) or [0]
        room = config.sequence_length - len(prompt)
        ids = model.generate(np.array([prompt]), max_new_tokens=min(config.sample_tokens, room),
                             sampler="top_k", top_k=20, temperature=0.8, seed=config.seed)
        summary["sample"] = tokenizer.decode(ids[0])
        print("sample:\n" + summary["sample"])
    return summary


def _checkpoint(model, state: dict, latest: pathlib.Path, state_path: pathlib.Path) -> None:
    # Model first, then the state that points at it: a crash in between leaves
    # the previous pair (or a newer model with the older step, which --resume
    # never sees because state.json is what it trusts).
    tmp = latest.with_name("latest.tmp.keras")
    model.save(tmp)
    os.replace(tmp, latest)
    write_json_atomic(state_path, state)


def _save_best(model, tokenizer, directory: pathlib.Path, config: PretrainConfig) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_to_preset(tmp, tokenizer=tokenizer,
                         data_description=f"pretrained on {config.data or 'stdlib'}")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
