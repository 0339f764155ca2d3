"""A preset never reads outside its directory.

File names that come from a preset's own files (the `weight_map` of
`model.safetensors.index.json`, `pytorch_model.bin.index.json` and Keras'
`model.weights.json`) and the files a preset holds (symlinks included) must
resolve inside the preset directory, after `..` and symlinks are resolved;
otherwise loading stops with a `PresetError` naming the entry, before any
weight file is opened. The presets here are made by the tests from a tiny
model; nothing is downloaded.
"""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import TINY, to_numpy

from keras_gpt.model import GPT
from keras_gpt.presets import PresetError, load_tokenizer
from keras_gpt.tokenizers import ByteTokenizer

pytest.importorskip("safetensors")


@pytest.fixture
def model():
    return GPT(**TINY)


def huggingface_preset(model, directory) -> str:
    model.save_to_preset(str(directory), format="huggingface")
    return str(directory)


def write_index(directory, weight_map, name="model.safetensors.index.json"):
    with open(os.path.join(directory, name), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def tensor_names(directory) -> list[str]:
    from safetensors import safe_open

    with safe_open(os.path.join(directory, "model.safetensors"), framework="numpy") as f:
        return list(f.keys())


def probe(model):
    ids = np.arange(12, dtype="int32")[None] % TINY["vocabulary_size"]
    return to_numpy(model(ids))


@pytest.mark.parametrize(
    "entry", ["../outside.safetensors", "/etc/passwd", "../../../../etc/passwd", "a/../../x"]
)
def test_index_entries_outside_the_preset_are_refused(model, tmp_path, entry):
    preset = huggingface_preset(model, tmp_path / "preset")
    # A complete, valid checkpoint outside the preset: loading it would succeed.
    names = tensor_names(preset)
    shutil.move(os.path.join(preset, "model.safetensors"), tmp_path / "outside.safetensors")
    write_index(preset, {name: entry for name in names})
    with pytest.raises(PresetError, match="outside the preset directory") as info:
        GPT.from_preset(preset)
    assert repr(entry) in str(info.value) and "model.safetensors.index.json" in str(info.value)


def test_every_entry_is_checked_before_any_file_is_opened(model, tmp_path):
    preset = huggingface_preset(model, tmp_path / "preset")
    names = tensor_names(preset)
    # The inside shard is garbage and sorts first: had it been opened, the error
    # would be about reading it, not about the entry that points outside.
    with open(os.path.join(preset, "a.safetensors"), "wb") as f:
        f.write(b"not a safetensors file")
    write_index(
        preset, {names[0]: "a.safetensors", **{n: "z/../../x.safetensors" for n in names[1:]}}
    )
    with pytest.raises(PresetError, match="'z/../../x.safetensors'.*outside"):
        GPT.from_preset(preset)


def test_pickle_index_entries_outside_the_preset_are_refused(model, tmp_path):
    preset = huggingface_preset(model, tmp_path / "preset")
    names = tensor_names(preset)
    os.remove(os.path.join(preset, "model.safetensors"))
    write_index(preset, {n: "../outside.bin" for n in names}, name="pytorch_model.bin.index.json")
    with pytest.raises(
        PresetError, match="pytorch_model.bin.index.json.*'../outside.bin'.*outside"
    ):
        GPT.from_preset(preset)


@pytest.mark.parametrize("bad", [["model.safetensors"], {"x": 3}, "model.safetensors"])
def test_malformed_weight_map_is_a_preset_error(model, tmp_path, bad):
    preset = huggingface_preset(model, tmp_path / "preset")
    with open(os.path.join(preset, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": bad}, f)
    with pytest.raises(PresetError, match="weight_map"):
        GPT.from_preset(preset)


def test_a_symlinked_weight_file_pointing_outside_is_refused(model, tmp_path):
    preset = huggingface_preset(model, tmp_path / "preset")
    shutil.move(os.path.join(preset, "model.safetensors"), tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", os.path.join(preset, "model.safetensors"))
    with pytest.raises(PresetError, match="'model.safetensors'.*outside the preset directory"):
        GPT.from_preset(preset)


def test_symlinks_and_shards_inside_the_preset_still_load(model, tmp_path):
    preset = huggingface_preset(model, tmp_path / "preset")
    os.makedirs(os.path.join(preset, "weights"))
    shutil.move(os.path.join(preset, "model.safetensors"), os.path.join(preset, "weights", "w"))
    os.symlink(os.path.join("weights", "w"), os.path.join(preset, "model.safetensors"))
    np.testing.assert_array_equal(probe(GPT.from_preset(preset)), probe(model))
    write_index(preset, {n: "weights/./w" for n in tensor_names(preset)})
    np.testing.assert_array_equal(probe(GPT.from_preset(preset)), probe(model))


def test_the_hugging_face_cache_layout_loads(model, tmp_path):
    """huggingface_hub keeps a snapshot's files as symlinks into the repository's
    blobs/ folder: those stay allowed (the download is that repository folder)."""
    repo = tmp_path / "hub" / "models--owner--tiny"
    source = huggingface_preset(model, tmp_path / "saved")
    snapshot = repo / "snapshots" / "0123abcd"
    os.makedirs(repo / "blobs")
    os.makedirs(snapshot)
    for i, name in enumerate(sorted(os.listdir(source))):
        shutil.copy(os.path.join(source, name), repo / "blobs" / f"blob{i}")
        os.symlink(os.path.join("..", "..", "blobs", f"blob{i}"), snapshot / name)
    np.testing.assert_array_equal(probe(GPT.from_preset(str(snapshot))), probe(model))
    # ... but not an index entry that climbs out of the snapshot into blobs/.
    write_index(str(snapshot), {n: "../../blobs/blob1" for n in tensor_names(str(snapshot))})
    with pytest.raises(PresetError, match="outside"):
        GPT.from_preset(str(snapshot))


def test_keras_shards_pointing_outside_are_refused(model, tmp_path):
    preset = tmp_path / "preset"
    model.save_to_preset(str(preset), max_shard_size=10e3 / 1e9)  # 10 kB shards
    shard = sorted(n for n in os.listdir(preset) if n.endswith(".weights.h5"))[-1]
    shutil.move(preset / shard, tmp_path / shard)
    os.symlink(tmp_path / shard, preset / shard)
    with pytest.raises(PresetError, match=f"'{shard}'.*outside the preset directory"):
        GPT.from_preset(str(preset))
    # A shard name in model.weights.json that climbs out is refused too.
    os.remove(preset / shard)
    with open(preset / "model.weights.json") as f:
        sharding = json.load(f)
    sharding["weight_map"] = {
        key: [
            f"../{shard}" if v == shard else v
            for v in (value if isinstance(value, list) else [value])
        ]
        for key, value in sharding["weight_map"].items()
    }
    with open(preset / "model.weights.json", "w") as f:
        json.dump(sharding, f)
    with pytest.raises(PresetError, match=f"model.weights.json.*'../{shard}'.*outside"):
        GPT.from_preset(str(preset))


def test_tokenizer_files_pointing_outside_are_refused(model, tmp_path):
    preset = tmp_path / "preset"
    model.save_to_preset(str(preset), tokenizer=ByteTokenizer())
    # The whole tokenizer folder replaced by a link to a tokenizer elsewhere.
    shutil.move(preset / "tokenizer", tmp_path / "tokenizer")
    os.symlink(tmp_path / "tokenizer", preset / "tokenizer")
    with pytest.raises(PresetError, match="'tokenizer'.*outside the preset directory"):
        load_tokenizer(str(preset))
    # One file of it linked out.
    os.remove(preset / "tokenizer")
    shutil.copytree(tmp_path / "tokenizer", preset / "tokenizer")
    name = sorted(os.listdir(preset / "tokenizer"))[0]
    os.remove(preset / "tokenizer" / name)
    os.symlink(tmp_path / "tokenizer" / name, preset / "tokenizer" / name)
    with pytest.raises(PresetError, match=f"'tokenizer/{name}'.*outside the preset directory"):
        load_tokenizer(str(preset))


def test_a_symlinked_config_pointing_outside_is_refused(model, tmp_path):
    preset = tmp_path / "preset"
    model.save_to_preset(str(preset))
    shutil.move(preset / "config.json", tmp_path / "config.json")
    os.symlink(tmp_path / "config.json", preset / "config.json")
    with pytest.raises(PresetError, match="'config.json'.*outside the preset directory"):
        GPT.from_preset(str(preset))
