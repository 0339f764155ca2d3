"""A run's output directory: never replaced by accident, resumed only by the same run.

`start_run` runs before a recipe writes anything into its output directory:

- a directory that already holds a run (a checkpoint, `metrics.jsonl` or
  `best/`) is refused unless the call resumes it or sets `overwrite`;
- a resume is checked against the newest checkpoint first: its files must be
  intact (`read_manifest`) and the settings it was written with must equal
  the new ones, except those a resumed run may change (`RESUMABLE_SETTINGS`).

On failure nothing in the directory has changed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

from keras_gpt.training.checkpoints import CheckpointError, latest_checkpoint, read_manifest
from keras_gpt.training.config import RunConfig

#: Settings a resumed run may change: how long it runs and what it prints, not
#: what it trains.
RESUMABLE_SETTINGS = frozenset(
    {
        "max_steps",
        "max_seconds",
        "patience",
        "verbose",
        "tensorboard",
        "sample_prompt",
        "sample_tokens",
        "sample_temperature",
        "peak_flops",
        "overwrite",
        # How fast it runs, not what it trains (float rounding aside).
        "threads",
        "jit_compile",
        "eval_batch_size",
        # What happens after training: the end-of-run evaluation.
        "final_eval_batches",
        "evaluate_data",
        "evaluate_task",
    }
)

#: What a run writes, besides its `data/` cache (kept: it is reused when the
#: corpus is unchanged).
RUN_OUTPUTS = (
    "checkpoints",
    "best",
    "metrics.jsonl",
    "metrics.csv",
    "loss_curve.png",
    "tensorboard",
    "config.toml",
)


class RunError(ValueError):
    """An output directory that already holds a run, used without `resume` or `overwrite`."""


def start_run(config: RunConfig, resume: bool = False) -> pathlib.Path | None:
    """Checks (and with `config.overwrite`, clears) `config.out` before a run writes to it.

    Args:
        config: the run's settings (a `PretrainConfig` or `FinetuneConfig`:
            a dataclass with `out` and `overwrite`).
        resume: the run continues the one in `config.out`.

    Returns:
        The checkpoint to resume from, or None for a run that starts at step 0.

    Raises:
        RunError: `config.out` holds a run and neither `resume` nor `overwrite`
            is set. (Resuming a run that has no checkpoint yet starts it at step 0.)
        CheckpointError: the checkpoint is damaged, or was written with other
            settings (they are named).

    Example:
    >>> from keras_gpt.training import PretrainConfig
    >>> print(start_run(PretrainConfig(out="runs/a")))     # None: a new run
    None
    """
    out = pathlib.Path(config.out)
    found = [name for name in ("checkpoints", "metrics.jsonl", "best") if _holds(out / name)]
    if resume:
        checkpoint = latest_checkpoint(out / "checkpoints")
        if checkpoint is None:
            # Killed before its first checkpoint: nothing to continue from, and
            # nothing lost by starting at step 0 (its rows are redone).
            if found:
                print(f"no checkpoint in {str(out)!r}: the run starts at step 0")
            return None
        check_settings(checkpoint, dataclasses.asdict(config), dataclasses.asdict(type(config)()))
        return checkpoint
    if not found:
        return None
    if not getattr(config, "overwrite", False):
        raise RunError(
            f"{str(out)!r} already holds a run ({', '.join(found)}): pass --resume to "
            "continue it, or --overwrite to replace it, or choose another --out."
        )
    # With the folders an interrupted writer left staged (`.best.<random>.tmp`, see
    # `keras_gpt.files.atomic_directory`).
    staged = [p.name for name in RUN_OUTPUTS for p in out.glob(f".{name}.*.tmp")]
    for name in [*RUN_OUTPUTS, *staged]:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return None


def check_settings(checkpoint: pathlib.Path, settings: dict, defaults: dict | None = None) -> None:
    """Raises `CheckpointError` unless `checkpoint` is intact and was written with `settings`.

    Args:
        checkpoint: a checkpoint folder.
        settings: the new run's settings (`dataclasses.asdict(config)`).
        defaults: the settings' defaults; a setting that the checkpoint does not
            record (added to keras_gpt after it was written) counts as its default,
            which reproduces what the run did then.
    """
    saved = read_manifest(checkpoint).get("settings")
    if saved is None:
        return  # written by `save_checkpoint` without settings: nothing to compare
    saved = {**{k: v for k, v in (defaults or {}).items() if k not in saved}, **saved}
    differ = [
        f"{key} = {saved.get(key)!r} (now {settings.get(key)!r})"
        for key in sorted(set(saved) | set(settings))
        if key not in RESUMABLE_SETTINGS and saved.get(key) != settings.get(key)
    ]
    if differ:
        raise CheckpointError(
            f"Cannot resume from {str(checkpoint)!r}: it was written with "
            f"{'; '.join(differ)}. Resume with the run's own settings "
            f"({str(checkpoint.parent.parent / 'config.toml')!r}), or start over with "
            "--overwrite."
        )


def _holds(path: pathlib.Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()
