"""Run configs: the recipes' settings, read from TOML files and `--key value` overrides.

This module imports neither Keras nor a backend, so `keras-gpt pretrain --help`
(which lists every setting from these dataclasses) starts in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import os
import re


class RunConfig:
    """Shared behaviour of the recipe configs (dataclasses that inherit this)."""

    def update(self, values: dict):
        """A copy with `values` (strings are converted to each field's type)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        converted = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {sorted(fields)}"
                raise ValueError(f"unknown setting {key!r}; {hint}")
            converted[key] = _convert(value, getattr(self, key), key)
        return dataclasses.replace(self, **converted)

    def to_toml(self) -> str:
        """The config as flat TOML (JSON scalars are valid TOML values)."""
        return "".join(
            f"{key} = {json.dumps(value)}\n"
            for key, value in dataclasses.asdict(self).items()
            if value is not None
        )

    @classmethod
    def settings(cls) -> list[tuple[str, object, str]]:
        """`(name, default, meaning)` of every setting, the meaning from the docstring.

        Example:
        >>> PretrainConfig.settings()[0]
        ('data', None, 'text file, folder, glob or JSONL; `"shakespeare"`; ...')
        """
        meanings = {}
        doc = inspect.cleandoc(cls.__doc__ or "")
        if "Attributes:" in doc:
            body = doc.split("Attributes:", 1)[1]
            for match in re.finditer(r"^ {4}(\w+): (.*(?:\n {8}.*)*)", body, re.M):
                meanings[match.group(1)] = " ".join(match.group(2).split())
        defaults = cls()
        return [
            (f.name, getattr(defaults, f.name), meanings.get(f.name, ""))
            for f in dataclasses.fields(cls)
        ]

    @classmethod
    def help_text(cls) -> str:
        """The settings as the `--help` of a recipe command lists them."""
        lines = ["settings (--key value on the command line, or key = value in --config):"]
        for name, default, meaning in cls.settings():
            flag = "--" + name.replace("_", "-")
            lines.append(f"  {flag:<30} {meaning} (default: {json.dumps(default)})")
        return "\n".join(lines)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict | None = None):
        """Defaults, then the TOML file at `path`, then `overrides`."""
        config = cls()
        if path is not None:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            with open(path, "rb") as f:
                config = config.update(tomllib.load(f))
        return config.update(overrides or {})


def _convert(value, default, key: str):
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return type(default)(value)
    except ValueError:
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(
            type(default).__name__, f"a {type(default).__name__}"
        )
        raise ValueError(f"{key} must be {kind}, got {value!r}") from None


@dataclasses.dataclass
class PretrainConfig(RunConfig):
    """Every setting of a pretraining run (a TOML file or `--key value` flags).

    Attributes:
        data: text file, folder, glob or JSONL; `"shakespeare"`; `None` (or
            `"stdlib"`) for Python's own standard-library source; `"stdlib-code"`
            for that source without its docstrings and comments.
        tokenizer: `"byte"`, `"char"` (vocabulary from the corpus) or a
            directory holding a saved tokenizer.
        out: output directory.
        num_layers: transformer blocks.
        num_heads: attention heads.
        hidden_dim: model width.
        sequence_length: context length (the model's `max_sequence_length`).
        dropout: dropout rate.
        use_bias: biases in Dense layers and LayerNorms (GPT-2); `false` is
            nanoGPT's `bias=False`.
        activation: the MLP's `"gelu_approximate"` (GPT-2's tanh GELU), `"gelu"`
            (exact, nanoGPT's `nn.GELU()`; 2.8x faster on a PyTorch CPU), `"relu"`
            or `"relu2"` (ReLU squared, modded-nanogpt's and nanochat's).
        position_embedding: `"learned"` (GPT-2), `"sinusoidal"` or `"rope"` (rotary).
        rope_base: RoPE's frequency base θ.
        normalization: `"layernorm"` (GPT-2) or `"rmsnorm"`.
        norm_scale: with `"rmsnorm"`: learn a per-channel scale (Llama) or not.
        qk_norm: RMS-normalize queries and keys in attention.
        embedding_norm: normalize the embeddings before the first block.
        tie_embeddings: the output head reuses the token embedding (GPT-2);
            `false`: a separate head (nanochat's "unembedding").
        head_init_stddev: initial standard deviation of an untied head (0: zeros).
        residual_init_stddev: initial standard deviation of the blocks' output
            projections (0: zeros, each block starts as the identity; -1:
            GPT-2's 0.02/√(2·num_layers)).
        logit_soft_cap: bound the logits to (−c, c) with c·tanh(logits/c) (0: off).
        value_embeddings: `"alternate"` or `"all"`: blocks (every other one, or each)
            get a token table whose rows are added to the attention values
            (nanochat's); `""`: none.
        batch_size: sequences per step.
        gradient_accumulation_steps: batches per optimizer update.
        max_steps: training steps.
        max_seconds: stop early after this much training time (0 = no limit).
        learning_rate: peak learning rate (AdamW's; with `optimizer = "muon"`,
            of the groups whose own rate is 0).
        min_learning_rate_ratio: final learning rate as a fraction of the peak.
        warmup_steps: linear warm-up steps.
        schedule: `"cosine"` (warm-up, cosine decay: GPT-2, nanoGPT) or `"wsd"`
            (warm-up, constant, linear cool-down: modded-nanogpt, nanochat).
            With `"wsd"` and `max_seconds`, the run's length follows the time
            budget, so that the cool-down ends when the budget does.
        cooldown_fraction: with `"wsd"`, the share of the run spent cooling down.
        optimizer: `"adamw"` (one AdamW for every weight) or `"muon"` (the
            speedrun recipe: Muon on the blocks' matrices, AdamW on the
            embeddings, head and scalars; `keras_gpt.training.speedrun_optimizer`).
        matrix_learning_rate: with `"muon"`: the blocks' matrices' peak rate
            (Keras Muon's, its update scaled by `muon_rms_rate`·√max(rows, cols)).
        embedding_learning_rate: with `"muon"`: the embeddings' rate (0: `learning_rate`).
        unembedding_learning_rate: with `"muon"`: the untied head's rate (0: `learning_rate`).
        scalar_learning_rate: with `"muon"`: norms' and biases' rate (0: `learning_rate`).
        muon_momentum: Muon's (Nesterov) momentum.
        muon_ns_steps: Muon's Newton–Schulz iterations.
        muon_rms_rate: Keras Muon's `rms_rate` (0: no scaling by the matrix's shape).
        weight_decay: AdamW decay on weight matrices (with `"muon"`: Muon's, on
            the blocks' matrices).
        beta_1: Adam β1.
        beta_2: Adam β2.
        clipnorm: global gradient-norm clipping (0 disables).
        adam_epsilon: Adam ε (Keras' 1e-7; nanoGPT, through PyTorch, 1e-8).
        decay_embeddings: weight-decay the embeddings too, as nanoGPT does.
        dtype: `"float32"` or `"mixed_bfloat16"` (bfloat16 matmuls, float32
            weights; fast on CPUs with native bfloat16, `avx512_bf16` or
            `amx_bf16`, and on accelerators; see `cpu_bfloat16`).
        jit_compile: `"auto"`: XLA on TensorFlow for runs of 100 steps or more
            (its compile time is repaid: the Shakespeare recipe's step runs
            ~2.4x faster), each backend's Keras default otherwise; `true` or
            `false` to decide (`true` on PyTorch is `torch.compile`).
        threads: CPU threads for the backend's math (0: its default, all
            cores); 1 can be much faster on a machine other work keeps busy.
        eval_interval: evaluate, log and checkpoint every this many steps.
        eval_batches: validation batches per evaluation (of `batch_size`
            windows each, evenly spaced over the split; 0: the whole split).
        final_eval_batches: the same for the run's last evaluation (-1: as
            `eval_batches`; 0: the whole split, for a final figure that is not
            an estimate).
        eval_batch_size: windows per forward pass when evaluating; the same
            windows and loss to float rounding (0: as many as fit in 16,384
            tokens, at least `batch_size`, or down to half that where equal passes
            then cover the split; fewer, larger passes are faster).
        seed: seed for weights, dropout and batches.
        data_parallel: JAX: split each batch over all devices
            (`keras_gpt.distribution.configure`).
        model_parallel: JAX: shard the weights over this many devices (1: off).
        peak_flops: peak FLOP/s for MFU; 0: the device's published peak for
            known accelerators, else a matmul probe (a lower bound on a busy
            machine: an MFU above 1 against it is not logged).
        tensorboard: also write TensorBoard logs to `out/tensorboard`.
        verbose: Keras progress-bar verbosity (0, 1 or 2).
        sample_prompt: prompt for the sample printed at the end.
        sample_tokens: length of that sample (0: no sample).
        sample_temperature: its sampling temperature (top-k 20); lower reads
            more regular for an undertrained model.
        overwrite: replace a run already in `out` (its checkpoints, metrics
            and `best/`); without it such a run is refused unless resumed.
        evaluate_data: evaluate the best model at the end of the run on these
            files (`keras-gpt evaluate`'s `--data`); the figures go to
            `out/evaluation.json` and a row of `metrics.jsonl`.
        evaluate_task: `"perplexity"`, `"multiple_choice"` or `"last_word"`.
    """

    data: str | None = None
    tokenizer: str = "byte"
    out: str = "runs/pretrain"
    num_layers: int = 4
    num_heads: int = 4
    hidden_dim: int = 128
    sequence_length: int = 128
    dropout: float = 0.0
    use_bias: bool = True
    activation: str = "gelu_approximate"
    position_embedding: str = "learned"
    rope_base: float = 10000.0
    normalization: str = "layernorm"
    norm_scale: bool = True
    qk_norm: bool = False
    embedding_norm: bool = False
    tie_embeddings: bool = True
    head_init_stddev: float = 0.02
    residual_init_stddev: float = -1.0
    logit_soft_cap: float = 0.0
    value_embeddings: str = ""
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_steps: int = 2000
    max_seconds: float = 0.0
    learning_rate: float = 1e-3
    min_learning_rate_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"
    cooldown_fraction: float = 0.4
    optimizer: str = "adamw"
    matrix_learning_rate: float = 0.01
    embedding_learning_rate: float = 0.0
    unembedding_learning_rate: float = 0.0
    scalar_learning_rate: float = 0.0
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5
    muon_rms_rate: float = 0.2
    weight_decay: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.95
    clipnorm: float = 1.0
    adam_epsilon: float = 1e-7
    decay_embeddings: bool = False
    dtype: str = "float32"
    jit_compile: str = "auto"
    threads: int = 0
    eval_interval: int = 250
    eval_batches: int = 20
    final_eval_batches: int = -1
    eval_batch_size: int = 0
    seed: int = 0
    data_parallel: bool = False
    model_parallel: int = 1
    peak_flops: float = 0.0
    tensorboard: bool = False
    verbose: int = 1
    sample_prompt: str = "\n"
    sample_tokens: int = 200
    sample_temperature: float = 0.8
    overwrite: bool = False
    evaluate_data: str | None = None
    evaluate_task: str = "perplexity"


@dataclasses.dataclass
class FinetuneConfig(RunConfig):
    """Every setting of a fine-tuning run.

    Attributes:
        preset: preset handle or directory to start from.
        data: JSONL file of `{"prompt", "response"}` or `{"messages"}` records,
            or plain text: a file, folder, glob, JSONL of `{"text"}`
            documents, or `"shakespeare"` (see `format`).
        format: `"instructions"`, `"text"` or `"auto"` (instructions for a
            JSONL file of such records, text otherwise).
        validation_data: validation data in the same format; default: a
            held-out `validation_fraction` of `data` (random records for
            instructions, the last tokens for text).
        validation_fraction: share of `data` held out when no validation data.
        out: output directory.
        lora_rank: LoRA rank; 0 fine-tunes every weight.
        lora_alpha: LoRA alpha (default: the rank).
        lora_target: comma-separated projections to adapt.
        sequence_length: example or window length (default: the model's context).
        batch_size: rows per step.
        pack: instructions: several examples per row (see `InstructionBatches`).
        max_steps: training steps.
        max_seconds: stop after this much training time (0: no limit).
        learning_rate: peak learning rate.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay on weight matrices.
        clipnorm: global gradient-norm clipping (0 disables).
        eval_interval: evaluate, log and checkpoint every this many steps.
        eval_batches: text: validation batches per evaluation (0: all).
        patience: stop after this many evaluations without improvement (0: never).
        seed: shuffling seed.
        verbose: Keras progress-bar verbosity.
        overwrite: replace a run already in `out` (its checkpoints, metrics
            and `best/`); without it such a run is refused unless resumed.
        evaluate_data: evaluate the best model at the end of the run on these
            files (`keras-gpt evaluate`'s `--data`); the figures go to
            `out/evaluation.json` and a row of `metrics.jsonl`.
        evaluate_task: `"perplexity"`, `"multiple_choice"` or `"last_word"`.
    """

    preset: str = ""
    data: str = ""
    format: str = "auto"
    validation_data: str | None = None
    validation_fraction: float = 0.1
    out: str = "runs/finetune"
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_target: str = "qkv,output,mlp_in,mlp_out"
    sequence_length: int = 0
    batch_size: int = 8
    pack: bool = False
    max_steps: int = 500
    max_seconds: float = 0.0
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    clipnorm: float = 1.0
    eval_interval: int = 50
    eval_batches: int = 20
    patience: int = 3
    seed: int = 0
    verbose: int = 1
    overwrite: bool = False
    evaluate_data: str | None = None
    evaluate_task: str = "perplexity"
