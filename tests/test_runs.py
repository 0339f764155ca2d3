"""A run is never lost: no silent overwrite, resumes checked first, atomic checkpoints.

Runs are tiny (a 1-block, 16-wide model on a repetitive text, a few steps).
The kill test SIGKILLs a run in a subprocess at seeded moments, counted in
program order (a training step's batch, each file operation of a checkpoint,
each metrics row), so it never races: each moment is hit exactly.
"""

import dataclasses
import json
import multiprocessing
import os
import pathlib
import signal

import helpers
import numpy as np
import pytest

from keras_gpt.cli import main
from keras_gpt.training import (
    CheckpointError,
    RunError,
    latest_checkpoint,
    read_metrics,
)
from keras_gpt.training.checkpoints import read_manifest
from keras_gpt.training.pretrain import pretrain

# What protects a run (refusals, the settings check, checkpoint files and their
# damage, kills) is the package's own file and config code, the same on every
# backend: the file runs once. Resuming training on each backend is
# test_pretraining.py's (per pass).
pytestmark = pytest.mark.backend_independent


def tiny_config(tmp_path, out_name="run", **overrides):
    """helpers.tiny_config on 200 lines of text, 4 steps by default."""
    return helpers.tiny_config(tmp_path, out_name, lines=200, **{"max_steps": 4, **overrides})


def snapshot(directory: pathlib.Path) -> dict:
    """Every file under `directory` with its bytes and modification time."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_a_run_is_not_replaced_without_resume_or_overwrite(tmp_path):
    config = tiny_config(tmp_path)
    pretrain(config)
    out = tmp_path / "run"
    before = snapshot(out)
    with pytest.raises(RunError, match="already holds a run.*--resume.*--overwrite"):
        pretrain(config)
    assert snapshot(out) == before
    # --overwrite (a setting, so also `overwrite = true` in a TOML file) replaces it.
    main(["pretrain", "--config", str(out / "config.toml"), "--overwrite", "--max-steps", "2"])
    assert [row["step"] for row in read_metrics(out)] == [2]
    assert latest_checkpoint(out / "checkpoints").name == "step_00000002"


def test_the_cli_refuses_in_one_line(tmp_path, capsys):
    pretrain(tiny_config(tmp_path))
    capsys.readouterr()  # the run's own progress output
    out = tmp_path / "run"
    before = snapshot(out)
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--config", str(out / "config.toml")])
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("keras-gpt: error: ")
    assert "--resume" in error[0] and "--overwrite" in error[0]
    assert snapshot(out) == before


def test_resume_with_other_settings_names_them_and_changes_nothing(tmp_path):
    pretrain(tiny_config(tmp_path))
    out = tmp_path / "run"
    before = snapshot(out)
    changed = tiny_config(tmp_path, num_layers=2, hidden_dim=32)
    with pytest.raises(CheckpointError, match=r"hidden_dim = 16 \(now 32\); num_layers = 1"):
        pretrain(changed, resume=True)
    assert snapshot(out) == before
    # Settings that only say how long to run may change: the run continues.
    summary = pretrain(tiny_config(tmp_path, max_steps=6), resume=True)
    assert summary["steps"] == 6 and [r["step"] for r in read_metrics(out)] == [2, 4, 6]


def test_a_checkpoint_from_before_a_setting_existed_resumes_as_its_default(tmp_path):
    # Checkpoints record every setting; one written before `activation` existed
    # does not name it. Its run used what is now the default, so that resumes,
    # and a different value is refused as any changed setting is.
    pretrain(tiny_config(tmp_path))
    out = tmp_path / "run"
    manifest = latest_checkpoint(out / "checkpoints") / "manifest.json"
    data = json.loads(manifest.read_text())
    assert data["settings"].pop("activation") == "gelu_approximate"
    manifest.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"activation = 'gelu_approximate' \(now 'gelu'\)"):
        pretrain(tiny_config(tmp_path, max_steps=6, activation="gelu"), resume=True)
    summary = pretrain(tiny_config(tmp_path, max_steps=6), resume=True)
    assert summary["steps"] == 6


@pytest.mark.parametrize(
    "damage, file",
    [
        ("truncate", "weights.npz"),
        ("flip", "optimizer.npz"),
        ("delete", "state.json"),
        ("garbage", "manifest.json"),
    ],
)
def test_a_damaged_checkpoint_names_the_file_and_what_to_do(tmp_path, damage, file):
    config = tiny_config(tmp_path)
    pretrain(config)
    path = latest_checkpoint(tmp_path / "run" / "checkpoints") / file
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "delete":
        path.unlink()
    else:
        path.write_text("{not json")
    before = snapshot(tmp_path / "run")
    with pytest.raises(CheckpointError, match=f"{file}.*damaged.*--overwrite"):
        pretrain(config, resume=True)
    assert snapshot(tmp_path / "run") == before


# -- killed at any moment -------------------------------------------------------------


def _run_until_killed(settings: dict, label: str, k: int) -> None:
    """Runs `pretrain` (resuming whatever is in its `out`) and SIGKILLs its own process at
    the K-th occurrence of event LABEL: "batch" (a training step's batch is read),
    "savez" / "fsync" / "rename" (before and after each such file operation of a
    checkpoint) or "metrics" (before and after a metrics row is appended). Runs in a
    child process; the patches below die with it."""
    import keras_gpt.training.loop as loop
    from keras_gpt.training.pretrain import PretrainConfig

    counts = {}

    def event(name):
        counts[name] = counts.get(name, 0) + 1
        if name == label and counts[name] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    def counted(name, function):
        def wrapper(*args, **kwargs):
            event(name)
            result = function(*args, **kwargs)
            event(name)
            return result

        return wrapper

    np.savez = counted("savez", np.savez)
    os.fsync = counted("fsync", os.fsync)
    os.rename = counted("rename", os.rename)
    loop.append_metrics = counted("metrics", loop.append_metrics)
    getitem = loop.StepBatches.__getitem__

    def batch(self, index):
        event("batch")
        return getitem(self, index)

    loop.StepBatches.__getitem__ = batch
    pretrain(PretrainConfig(**settings), resume=True)


def run_until_killed(settings: dict, label: str, k: int) -> int:
    """`_run_until_killed` in a child process; its exit status (-9: killed).

    The children fork from a forkserver that has imported Keras and the recipe once:
    each is a separate process that can be SIGKILLed, without a fresh process's
    8-15 s import (up to nine children here)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["keras_gpt.training.pretrain", "test_runs"])
    child = context.Process(target=_run_until_killed, args=(settings, label, k))
    child.start()
    child.join(300)
    if child.exitcode is None:
        child.kill()
        child.join()
        pytest.fail(f"the run killed at {label} {k} did not end in 300 s")
    return child.exitcode


# Events of one two-step round: 2 batches, 2x2 savez, 2x6 fsync, 2x1 rename and
# 2x1 metrics; a K up to these lands in the process's first round (or right
# after its checkpoint), so each process completes at most one round.
_EVENTS = {"batch": 2, "savez": 4, "fsync": 12, "rename": 2, "metrics": 2}


def test_a_run_killed_at_seeded_moments_resumes_to_the_same_metrics(tmp_path):
    reference = tiny_config(tmp_path, "reference", max_steps=8)
    pretrain(reference)
    expected = read_metrics(tmp_path / "reference")
    config = tiny_config(tmp_path, "killed", max_steps=8)
    settings = dataclasses.asdict(config)
    rng = np.random.default_rng(22)
    kills = 0
    for attempt in range(8):
        label = ["batch", "savez", "fsync", "rename", "metrics"][attempt % 5]
        k = int(rng.integers(1, _EVENTS[label] + 1))
        status = run_until_killed(settings, label, k)
        if status == 0:
            break
        assert status == -signal.SIGKILL, f"the run ended with status {status} (its stderr above)"
        kills += 1
        # Whatever moment the kill came at, the newest checkpoint is complete.
        checkpoint = latest_checkpoint(tmp_path / "killed" / "checkpoints")
        if checkpoint is not None:
            manifest = read_manifest(checkpoint)
            state = json.loads((checkpoint / "state.json").read_text())
            assert manifest["step"] == state["step"] == int(checkpoint.name.split("_")[1])
    else:
        assert run_until_killed(settings, "none", 0) == 0
    # Each process completes at most one of the four rounds before it dies: at
    # least four kills before the run can end.
    assert kills >= 4, kills
    rows = read_metrics(tmp_path / "killed")
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    # Same batches, dropout counters and optimizer state: the resumed curve is
    # the uninterrupted one up to float32 rounding (as in test_pretraining).
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in expected], rtol=1e-5)
    assert (tmp_path / "killed" / "metrics.csv").read_text().count("\n") == len(rows) + 1
    assert os.path.isdir(tmp_path / "killed" / "best")
