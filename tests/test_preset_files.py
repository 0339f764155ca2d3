"""What exported presets and SavedModels hold for their users: special token ids, file modes."""

import json
import os
import stat

import keras
import pytest
from conftest import TINY

from keras_gpt.model import GPT
from keras_gpt.tokenizers import ByteTokenizer


@pytest.fixture
def umask_022():
    """A known umask for the test (restored afterwards): files 0o644, folders 0o755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_huggingface_export_writes_bos_and_eos_ids(tmp_path):
    tokenizer = ByteTokenizer()  # <|endoftext|> is id 256
    model = GPT(**{**TINY, "vocabulary_size": tokenizer.vocabulary_size})
    model.save_to_preset(str(tmp_path), format="huggingface", tokenizer=tokenizer)
    end = tokenizer.token_to_id("<|endoftext|>")
    for name in ("config.json", "generation_config.json"):
        with open(tmp_path / name) as f:
            written = json.load(f)
        assert (written["bos_token_id"], written["eos_token_id"]) == (end, end), name
    transformers = pytest.importorskip("transformers")
    assert transformers.GenerationConfig.from_pretrained(str(tmp_path)).eos_token_id == end
    assert transformers.AutoConfig.from_pretrained(str(tmp_path)).bos_token_id == end


def test_huggingface_export_without_special_tokens_writes_no_ids(tmp_path):
    GPT(**TINY).save_to_preset(str(tmp_path), format="huggingface")
    with open(tmp_path / "config.json") as f:
        assert "eos_token_id" not in json.load(f)
    assert not (tmp_path / "generation_config.json").exists()


def test_presets_get_the_usual_modes(tmp_path, umask_022):
    preset = tmp_path / "preset"
    GPT(**TINY).save_to_preset(str(preset), tokenizer=ByteTokenizer())
    assert mode(preset) == 0o755
    for path in preset.rglob("*"):
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the SavedModel is written by the same code from every backend; the "
    "TensorFlow pass exports once",
)
def test_exported_saved_model_gets_the_usual_modes(tmp_path, umask_022):
    from keras_gpt.export import export

    path = str(tmp_path / "served" / "1")
    export(GPT(**TINY), path, max_new_tokens=2)
    # Was 0o700 (the private temporary folder it is written in, renamed).
    assert mode(path) == 0o755
    assert mode(os.path.join(path, "saved_model.pb")) == 0o644
