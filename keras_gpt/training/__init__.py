"""Training: GPT-2's optimizer recipe, throughput, run configs, the recipes' loop and checkpoints,
and the two recipes themselves (`pretrain`, `finetune`).

- `optimizer.py`: `gpt_optimizer` (AdamW, warm-up + cosine, clipping, decay exclusions),
  `speedrun_optimizer` (Muon on the blocks' matrices, AdamW on the rest), the
  `WarmupStableDecay` schedule and `parameter_group`.
- `throughput.py`: FLOPs per token, peak FLOP/s, the `Throughput` callback.
- `config.py`: `RunConfig`, the TOML + `--key value` configs of the recipes.
- `history.py`: a run's `metrics.jsonl` / `metrics.csv` / `loss_curve.png`.
- `checkpoints.py`: atomic, checksummed checkpoints with exact resume.
- `runs.py`: `start_run`, which keeps a run from being replaced by accident
  and checks a resume against its checkpoint.
- `evaluate.py`: `evaluate_run`, the end-of-run evaluation (`evaluate_data`).
- `loop.py`: `train_loop`, rounds of `fit` with evaluation, logging and checkpoints.
- `pretrain.py`, `finetune.py`: the recipes behind `keras-gpt pretrain` / `finetune`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names are imported on first use (PEP 562): `keras-gpt pretrain --help` reads the
# configs (`config.py`, no Keras) without importing the training code and a backend.
_EXPORTS = {
    "CheckpointError": "keras_gpt.training.checkpoints",
    "FinetuneConfig": "keras_gpt.training.config",
    "NO_DECAY_NAMES": "keras_gpt.training.optimizer",
    "PretrainConfig": "keras_gpt.training.config",
    "RESUMABLE_SETTINGS": "keras_gpt.training.runs",
    "RunConfig": "keras_gpt.training.config",
    "RunError": "keras_gpt.training.runs",
    "StepBatches": "keras_gpt.training.loop",
    "WarmupStableDecay": "keras_gpt.training.optimizer",
    "Throughput": "keras_gpt.training.throughput",
    "append_metrics": "keras_gpt.training.history",
    "evaluate_run": "keras_gpt.training.evaluate",
    "exclude_from_decay": "keras_gpt.training.optimizer",
    "finetune": "keras_gpt.training.finetune",
    "flops_per_token": "keras_gpt.training.throughput",
    "gpt_optimizer": "keras_gpt.training.optimizer",
    "latest_checkpoint": "keras_gpt.training.checkpoints",
    "parameter_group": "keras_gpt.training.optimizer",
    "load_checkpoint": "keras_gpt.training.checkpoints",
    "load_config": "keras_gpt.training.pretrain",
    "mean_throughput": "keras_gpt.training.history",
    "plot_loss_curve": "keras_gpt.training.history",
    "pretrain": "keras_gpt.training.pretrain",
    "probe_peak_flops": "keras_gpt.training.throughput",
    "read_metrics": "keras_gpt.training.history",
    "save_checkpoint": "keras_gpt.training.checkpoints",
    "speedrun_optimizer": "keras_gpt.training.optimizer",
    "start_run": "keras_gpt.training.runs",
    "time_budget_variable": "keras_gpt.training.optimizer",
    "train_loop": "keras_gpt.training.loop",
    "write_json_atomic": "keras_gpt.files",
}

__all__ = [
    "CheckpointError",
    "FinetuneConfig",
    "NO_DECAY_NAMES",
    "PretrainConfig",
    "RESUMABLE_SETTINGS",
    "RunConfig",
    "RunError",
    "StepBatches",
    "Throughput",
    "WarmupStableDecay",
    "append_metrics",
    "evaluate_run",
    "exclude_from_decay",
    "finetune",
    "flops_per_token",
    "gpt_optimizer",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "mean_throughput",
    "parameter_group",
    "plot_loss_curve",
    "pretrain",
    "probe_peak_flops",
    "read_metrics",
    "save_checkpoint",
    "speedrun_optimizer",
    "start_run",
    "time_budget_variable",
    "train_loop",
    "write_json_atomic",
]

if TYPE_CHECKING:
    from keras_gpt.files import write_json_atomic
    from keras_gpt.training.checkpoints import (
        CheckpointError,
        latest_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )
    from keras_gpt.training.config import FinetuneConfig, PretrainConfig, RunConfig
    from keras_gpt.training.evaluate import evaluate_run
    from keras_gpt.training.finetune import finetune
    from keras_gpt.training.history import (
        append_metrics,
        mean_throughput,
        plot_loss_curve,
        read_metrics,
    )
    from keras_gpt.training.loop import StepBatches, train_loop
    from keras_gpt.training.optimizer import (
        NO_DECAY_NAMES,
        WarmupStableDecay,
        exclude_from_decay,
        gpt_optimizer,
        parameter_group,
        speedrun_optimizer,
        time_budget_variable,
    )
    from keras_gpt.training.pretrain import load_config, pretrain
    from keras_gpt.training.runs import RESUMABLE_SETTINGS, RunError, start_run
    from keras_gpt.training.throughput import Throughput, flops_per_token, probe_peak_flops


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_gpt.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
