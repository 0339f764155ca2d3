"""The end of a run: its best model scored on the user's data (`evaluate_data`), the
figures recorded with the run's metrics.

The scoring is `keras_gpt.evaluation.evaluate_preset`'s; what is here is the run's
bookkeeping around it (`evaluation.json`, a row of `metrics.jsonl`).
"""

from __future__ import annotations

import pathlib

from keras_gpt.evaluation import evaluate_preset
from keras_gpt.files import write_json_atomic
from keras_gpt.training.history import append_metrics


def evaluate_run(out: pathlib.Path, step: int, data: str, task: str = "perplexity") -> dict:
    """Evaluates `out/best` on `data` with `keras_gpt.evaluation.evaluate_preset`; records
    the figures.

    The figures are written to `out/evaluation.json` and appended to
    `out/metrics.jsonl` as a row `{"step", "task", "data", ...figures}`
    (`read_metrics(out, evaluations=True)` reads those rows back).

    Args:
        out: the run's output directory (its best model is in `out/best`).
        step: the run's last step, recorded with the figures.
        data: the files to evaluate on (as `keras-gpt evaluate --data`).
        task: `"perplexity"`, `"multiple_choice"` or `"last_word"`.

    Returns:
        The row that was recorded.

    Example:
    >>> import shutil
    >>> _ = shutil.copytree("my_preset", "runs/shakespeare_char/best")   # a finished run
    >>> row = evaluate_run(pathlib.Path("runs/shakespeare_char"), 2000, "valid.txt")
    evaluation (perplexity on valid.txt): ...
    >>> row["step"], row["task"]
    (2000, 'perplexity')
    """
    figures = evaluate_preset(str(out / "best"), data, task=task)
    row = {"step": int(step), "task": task, "data": str(data), **figures}
    write_json_atomic(out / "evaluation.json", row)
    append_metrics(out, row)
    print(
        f"evaluation ({task} on {data}): "
        + ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, float))
    )
    return row
