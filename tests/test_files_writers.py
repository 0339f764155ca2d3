"""The writers that must never leave half a result: a checkpoint, LoRA adapters and any
folder written through `keras_gpt.files.atomic_directory` are the old one or the whole
new one, whatever fails half-way."""

import os
import stat

import numpy as np
import pytest
from helpers import tiny_gpt

from keras_gpt.files import atomic_directory
from keras_gpt.training import checkpoints


def test_a_failed_directory_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as temporary:
        (temporary / "saved_model.pb").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as temporary:
            (temporary / "saved_model.pb").write_text("new, half")
            raise RuntimeError("disk full")
    assert (target / "saved_model.pb").read_text() == "old"
    assert os.listdir(tmp_path) == ["export"]


def test_a_directory_write_replaces_only_with_overwrite_and_is_readable(tmp_path):
    target = tmp_path / "nested" / "export"
    with atomic_directory(target, durable=True) as temporary:
        (temporary / "a").write_text("a")
        assert not target.exists()  # readers see nothing until the rename
    with pytest.raises(FileExistsError, match="export"):
        with atomic_directory(target) as temporary:
            (temporary / "a").write_text("b")
    assert (target / "a").read_text() == "a"
    with atomic_directory(target, overwrite=True) as temporary:
        (temporary / "b").write_text("b")
    assert os.listdir(target) == ["b"] and os.listdir(target.parent) == ["export"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0o700


def _compiled_model():
    model = tiny_gpt()
    model.compile(optimizer="adamw")
    model.optimizer.build(model.trainable_variables)
    return model


def test_a_checkpoint_that_fails_half_way_leaves_the_previous_one_current(tmp_path, monkeypatch):
    model = _compiled_model()
    folder = tmp_path / "checkpoints"
    first = checkpoints.save_checkpoint(model, {"step": 1}, folder)
    savez = np.savez

    def savez_then_fail(path, **arrays):
        savez(path, **arrays)
        if str(path).endswith("optimizer.npz"):
            raise OSError("disk full")

    monkeypatch.setattr(checkpoints.np, "savez", savez_then_fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_checkpoint(model, {"step": 2}, folder)
    assert checkpoints.latest_checkpoint(folder) == first
    assert os.listdir(folder) == [first.name]
    checkpoints.read_manifest(first)  # still complete


def test_lora_adapters_that_fail_half_way_leave_the_previous_file(tmp_path, monkeypatch):
    from keras_gpt.model import lora

    model = tiny_gpt()
    model.enable_lora(rank=2)
    path = tmp_path / "adapters.npz"
    model.save_lora(str(path))
    before = path.read_bytes()
    savez = np.savez

    def savez_half(file, **arrays):
        savez(file, **arrays)
        with open(file, "r+b") as f:
            f.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(lora.np, "savez", savez_half)
    with pytest.raises(OSError, match="disk full"):
        model.save_lora(str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["adapters.npz"]
    model.load_lora(str(path))


def test_a_best_model_save_that_fails_half_way_keeps_the_previous_best(tmp_path, monkeypatch):
    # `best/` is what `keras-gpt generate RUN` and a server read while training goes on:
    # it is the previous best or the whole new one, never a half-written preset.
    import importlib

    from keras_gpt import GPT
    from keras_gpt.tokenizers import ByteTokenizer
    from keras_gpt.training import runs
    from keras_gpt.training.config import PretrainConfig

    pretrain = importlib.import_module("keras_gpt.training.pretrain")  # the module

    model, best = tiny_gpt(), tmp_path / "best"
    pretrain._save_best(model, ByteTokenizer(), best, PretrainConfig(data="corpus.txt"))
    before = sorted(os.listdir(best))
    save = type(model).save_to_preset

    def save_then_fail(self, directory, **kwargs):
        save(self, directory, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_to_preset", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        pretrain._save_best(tiny_gpt(seed=1), ByteTokenizer(), best, PretrainConfig())
    assert sorted(os.listdir(best)) == before and os.listdir(tmp_path) == ["best"]
    reloaded = GPT.from_preset(best)
    np.testing.assert_array_equal(reloaded.get_weights()[0], model.get_weights()[0])

    # A staging folder a killed process left behind goes with the run on --overwrite.
    (tmp_path / ".best.x1y2.tmp").mkdir()
    runs.start_run(PretrainConfig(out=str(tmp_path), overwrite=True))
    assert os.listdir(tmp_path) == []
