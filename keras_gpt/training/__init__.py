"""Training: GPT-2's optimizer recipe, throughput, run configs, the recipes' loop and checkpoints,
and the two recipes themselves (`pretrain`, `finetune`).

- `optimizer.py`: `gpt_optimizer` (AdamW, warm-up + cosine, clipping, decay exclusions).
- `throughput.py`: FLOPs per token, peak FLOP/s, the `Throughput` callback.
- `config.py`: `RunConfig`, the TOML + `--key value` configs of the recipes.
- `history.py`: a run's `metrics.jsonl` / `metrics.csv` / `loss_curve.png`.
- `checkpoints.py`: atomic, checksummed checkpoints with exact resume.
- `runs.py`: `start_run`, which keeps a run from being replaced by accident
  and checks a resume against its checkpoint.
- `loop.py`: `train_loop`, rounds of `fit` with evaluation, logging and checkpoints.
- `pretrain.py`, `finetune.py`: the recipes behind `keras-gpt pretrain` / `finetune`.
"""

from keras_gpt.training.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from keras_gpt.training.config import RunConfig
from keras_gpt.training.finetune import FinetuneConfig, finetune
from keras_gpt.training.history import (
    append_metrics,
    mean_throughput,
    plot_loss_curve,
    read_metrics,
    write_json_atomic,
)
from keras_gpt.training.loop import StepBatches, train_loop
from keras_gpt.training.optimizer import (
    NO_DECAY_NAMES,
    exclude_from_decay,
    gpt_optimizer,
)
from keras_gpt.training.pretrain import PretrainConfig, load_config, pretrain
from keras_gpt.training.runs import RESUMABLE_SETTINGS, RunError, start_run
from keras_gpt.training.throughput import Throughput, flops_per_token, probe_peak_flops

__all__ = [
    "NO_DECAY_NAMES",
    "RESUMABLE_SETTINGS",
    "CheckpointError",
    "RunError",
    "FinetuneConfig",
    "PretrainConfig",
    "RunConfig",
    "StepBatches",
    "Throughput",
    "append_metrics",
    "exclude_from_decay",
    "finetune",
    "flops_per_token",
    "gpt_optimizer",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "mean_throughput",
    "plot_loss_curve",
    "pretrain",
    "probe_peak_flops",
    "read_metrics",
    "save_checkpoint",
    "start_run",
    "train_loop",
    "write_json_atomic",
]
