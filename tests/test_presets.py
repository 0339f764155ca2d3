"""keras_gpt presets: the registry, save_to_preset / from_preset, handles and their errors."""

import json
import os
import textwrap

import numpy as np
import pytest
from conftest import TINY, to_numpy
from helpers import run_job, run_python

import keras_gpt
import keras_gpt.tokenizers
from keras_gpt import GPT
from keras_gpt.presets import PresetError

# Published parameter counts of the four GPT-2 checkpoints (transformers'
# `num_parameters()` of GPT2LMHeadModel, tied output embedding).
GPT2_PARAMETERS = {
    "gpt2_small": 124_439_808,
    "gpt2_medium": 354_823_168,
    "gpt2_large": 774_030_080,
    "gpt2_xl": 1_557_611_200,
}


def test_registry_lists_gpt2_shapes_and_small_configs():
    listed = {info.name: info for info in keras_gpt.presets.list_presets()}
    for name, count in GPT2_PARAMETERS.items():
        assert keras_gpt.count_parameters(listed[name].config) == count
        assert listed[name].has_weights and listed[name].weights.startswith("hf://")
    small = [i for i in listed.values() if keras_gpt.count_parameters(i.config) < 10_000_000]
    assert len(small) >= 3 and not any(info.has_weights for info in small)
    assert "12L 12H 768d" in str(listed["gpt2_small"])


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"tie_embeddings": False, "intermediate_dim": 40},
        {"position_embedding": "sinusoidal"},
        {"use_bias": False},  # the old formula counted biases a use_bias=False model lacks
    ],
)
def test_count_parameters_matches_built_model(variant):
    config = {**keras_gpt.presets.get("gpt_nano").config, **variant}
    model = GPT(**config, seed=0)
    built = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert keras_gpt.count_parameters(config) == built


def test_count_parameters_of_a_subclass_and_leaves_no_deferred_weights():
    """Counting builds the model without weights; nothing is left for Keras to
    initialise later (a JAX decode traces under a StatelessScope, which would)."""

    class Wider(GPT):
        def __init__(self, **config):
            super().__init__(**{**config, "intermediate_dim": 2 * config["hidden_dim"]})

    config = keras_gpt.presets.get("gpt_nano").config
    assert keras_gpt.count_parameters(config, Wider) < (keras_gpt.count_parameters(config))
    assert keras_gpt.count_parameters(keras_gpt.presets.get("gpt2_xl").config) == 1_557_611_200
    # Keras' own list of deferred variables (private: there is no public view of it).
    from keras.src.backend.common import global_state

    assert not global_state.get_global_attribute("uninitialized_variables")


def test_register_rejects_duplicates_and_incomplete_configs():
    with pytest.raises(ValueError, match="gpt2_small"):
        keras_gpt.presets.register("gpt2_small", keras_gpt.presets.get("gpt_nano").config)
    with pytest.raises(ValueError, match="hidden_dim"):
        keras_gpt.presets.register(
            "incomplete", dict(vocabulary_size=10, num_layers=1, num_heads=1)
        )


def test_save_and_load_round_trip(tiny_model, token_batch, tmp_path):
    x = token_batch[:, :12]
    tiny_model.save_to_preset(str(tmp_path), data_description="random ids")
    assert sorted(os.listdir(tmp_path)) == ["config.json", "metadata.json", "model.weights.h5"]
    assert keras_gpt.presets.preset_format(str(tmp_path)) == "keras_gpt"
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["keras_gpt_version"] == keras_gpt.__version__
    assert metadata["parameter_count"] == keras_gpt.count_parameters(TINY)
    assert metadata["data_description"] == "random ids"
    assert metadata["date_saved"][:2] == "20"
    loaded = GPT.from_preset(str(tmp_path))
    assert loaded.get_config() | {"name": None} == tiny_model.get_config() | {"name": None}
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(tiny_model(x)))


def test_overrides_replace_the_saved_config(tiny_model, tmp_path):
    tiny_model.save_to_preset(str(tmp_path))
    loaded = GPT.from_preset(str(tmp_path), dropout=0.25)
    assert loaded.dropout == 0.25
    with pytest.raises(PresetError, match="model.weights.h5"):
        GPT.from_preset(str(tmp_path), hidden_dim=32, num_heads=2)


@pytest.mark.parametrize("format", ["keras_gpt", "huggingface"])
def test_lora_adapters_are_merged_into_the_preset(format, token_batch, tmp_path):
    pytest.importorskip("safetensors")
    model = GPT(**TINY)
    model.enable_lora(rank=2)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "lora_kernel_b" in weight.path:  # B starts at 0: make the adapters matter
            weight.assign(rng.normal(0, 0.5, weight.shape).astype("float32"))
    x = token_batch[:, :12]
    expected = to_numpy(model(x))
    assert np.abs(expected - to_numpy(GPT(**TINY)(x))).max() > 1e-3
    model.save_to_preset(str(tmp_path), format=format)
    assert model.lora_config  # the model itself keeps its adapters
    loaded = GPT.from_preset(str(tmp_path))
    np.testing.assert_allclose(to_numpy(loaded(x)), expected, rtol=0, atol=1e-5)


def test_large_weights_are_sharded(token_batch, tmp_path):
    model = GPT(**TINY)
    shard_gb = 10e3 / 1e9  # 10 kB shards: the tiny model has ~30 kB of weights
    model.save_to_preset(str(tmp_path), max_shard_size=shard_gb)
    shards = [n for n in os.listdir(tmp_path) if n.endswith(".weights.h5")]
    assert "model.weights.json" in os.listdir(tmp_path) and len(shards) > 1
    loaded = GPT.from_preset(str(tmp_path))
    x = token_batch[:, :12]
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    # Saving again unsharded into the same directory leaves no stale shards behind.
    model.save_to_preset(str(tmp_path))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".weights.json")]


def test_truncated_weights_give_a_clear_error(tiny_model, tmp_path):
    tiny_model.save_to_preset(str(tmp_path))
    path = tmp_path / "model.weights.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PresetError, match=f"{tmp_path}.*model.weights.h5.*corrupt") as info:
        GPT.from_preset(str(tmp_path))
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_bad_handles_name_the_handle(tmp_path):
    with pytest.raises(PresetError, match="'no_such_preset'.*gpt2_small"):
        GPT.from_preset("no_such_preset")
    with pytest.raises(PresetError, match="does not exist"):
        GPT.from_preset(str(tmp_path / "missing" / "dir"))
    with pytest.raises(PresetError, match="no config.json"):
        GPT.from_preset(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PresetError, match="config.json"):
        GPT.from_preset(str(tmp_path))
    with pytest.raises(PresetError, match="'gpt_nano'.*without published weights"):
        GPT.from_preset("gpt_nano")
    with pytest.raises(PresetError, match="hf://owner/name"):
        GPT.from_preset("hf://just-a-name")
    with pytest.raises(PresetError, match="kaggle://owner/model"):
        GPT.from_preset("kaggle://keras/gpt2")
    with pytest.raises(ValueError, match="format"):
        GPT(**TINY).save_to_preset(str(tmp_path / "x"), format="onnx")


@pytest.mark.backend_independent
def test_unreachable_hubs_give_a_clear_error(tmp_path):
    """hf:// offline with an empty cache, and a Kaggle model that cannot be fetched
    (no network, or no such model): both name the handle."""
    script = textwrap.dedent("""
        import keras_gpt
        for handle in ("gpt2_small", "hf://openai-community/gpt2",
                       "kaggle://keras-gpt-test/none/keras/none/1"):
            try:
                keras_gpt.GPT.from_preset(handle)
            except keras_gpt.presets.PresetError as error:
                print("ERROR", error)
    """)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "KAGGLEHUB_CACHE": str(tmp_path / "kaggle"),
    }
    proc = run_python(["-c", script], env=env, timeout=300, check=False)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 3, proc.stdout + proc.stderr[-3000:]
    assert "'hf://openai-community/gpt2'" in errors[0] and "Hugging Face" in errors[0]
    assert "'hf://openai-community/gpt2'" in errors[1]
    assert "'kaggle://keras-gpt-test/none/keras/none/1'" in errors[2]


def test_tokenizer_travels_with_the_preset(tiny_model, tmp_path):
    # No skip guard: it checked keras_gpt.tokenizers.load_tokenizer, not this function.
    tokenizer = keras_gpt.tokenizers.ByteTokenizer(special_tokens=["<|endoftext|>", "<|pad|>"])
    tiny_model.save_to_preset(str(tmp_path), tokenizer=tokenizer)
    loaded = keras_gpt.presets.load_tokenizer(str(tmp_path))
    assert type(loaded) is keras_gpt.tokenizers.ByteTokenizer
    assert loaded.special_tokens == ["<|endoftext|>", "<|pad|>"]
    text = "presets: hé<|endoftext|><|pad|>"
    assert loaded.encode(text) == tokenizer.encode(text) == [*text[:-20].encode(), 256, 257]


def test_missing_tokenizer_is_a_clear_error(tiny_model, tmp_path):
    tiny_model.save_to_preset(str(tmp_path))
    with pytest.raises(PresetError, match="no tokenizer"):
        keras_gpt.presets.load_tokenizer(str(tmp_path))


# -- across backends ---------------------------------------------------------------

_CROSS_BACKEND_WORKER = textwrap.dedent("""
    import glob, os, sys
    import keras, numpy as np
    import keras_gpt

    out, backend = sys.argv[1], keras.backend.backend()
    seed = {"tensorflow": 1, "jax": 2, "torch": 3}[backend]
    probe = np.random.default_rng(0).integers(0, 61, (2, 16)).astype("int32")
    if not os.path.exists(os.path.join(out, backend)):
        model = keras_gpt.GPT(vocabulary_size=61, num_layers=2, num_heads=2, hidden_dim=32,
                              max_sequence_length=16, tie_embeddings=False, seed=seed)
        model.save_to_preset(os.path.join(out, backend))
        np.save(os.path.join(out, f"{backend}.npy"), keras.ops.convert_to_numpy(model(probe)))
    for source in ("tensorflow", "jax", "torch"):
        result = os.path.join(out, f"{source}_on_{backend}.npy")
        if source != backend and os.path.exists(os.path.join(out, source)) \
                and not os.path.exists(result):
            loaded = keras_gpt.GPT.from_preset(os.path.join(out, source))
            np.save(result, keras.ops.convert_to_numpy(loaded(probe)))
""")


@pytest.mark.cross_backend
def test_preset_saved_on_one_backend_loads_on_every_other(tmp_path):
    """Logits of a loaded preset equal the saving backend's to float32 kernel
    differences (~1e-7; bound 1e-5, as in tests/test_cross_backend.py)."""
    # Each run saves its backend's preset once and loads every preset saved
    # before it; the last two runs load what was saved after their first.
    for backend in ("tensorflow", "jax", "torch", "tensorflow", "jax"):
        run_job(["-c", _CROSS_BACKEND_WORKER, tmp_path], backend=backend)
    backends = ("tensorflow", "jax", "torch")
    for source in backends:
        saved = np.load(tmp_path / f"{source}.npy")
        for target in backends:
            if target != source:
                loaded = np.load(tmp_path / f"{source}_on_{target}.npy")
                np.testing.assert_allclose(
                    loaded, saved, rtol=0, atol=1e-5, err_msg=f"{source} → {target}"
                )


def hugging_face_cache(cache, repo_id: str, files: dict[str, bytes], commit: str) -> None:
    """`files` as huggingface_hub keeps a downloaded repository in `cache` (HF_HUB_CACHE):
    contents in `blobs/<sha256>`, `snapshots/<commit>/<name>` relative symlinks to them,
    and `refs/main` naming the commit."""
    import hashlib

    repository = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repository / "snapshots" / commit
    (repository / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commit)
    for name, content in files.items():
        blob = hashlib.sha256(content).hexdigest()
        (repository / "blobs" / blob).write_bytes(content)
        (snapshot / name).symlink_to(os.path.join("..", "..", "blobs", blob))


@pytest.mark.backend_independent
def test_hf_handle_loads_from_the_local_hugging_face_cache(tmp_path):
    """`hf://owner/name` offline: the model and tokenizer come from the snapshot
    huggingface_hub cached (its symlinked blobs), with no network. In the same fresh
    process, the package's lazy face: `keras_gpt.export` stays the function after
    `import keras_gpt.export`, and importing keras_gpt imports no backend."""
    tokenizer = keras_gpt.tokenizers.BytePairTokenizer.train(
        ["hugging face hub cache " * 50], vocabulary_size=280
    )
    model = GPT(**dict(TINY, vocabulary_size=tokenizer.vocabulary_size))
    source = tmp_path / "source"
    model.save_to_preset(str(source), format="huggingface", tokenizer=tokenizer)
    files = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    hugging_face_cache(tmp_path / "hub", "tiny-owner/tiny-gpt", files, "a" * 40)
    ids = tokenizer.encode("hugging face")
    script = textwrap.dedent(f"""
        import json, sys
        import keras_gpt
        backend_at_import = [m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules]
        import keras_gpt.export
        face = [keras_gpt.export is sys.modules["keras_gpt.export"].export,
                keras_gpt.export_onnx is sys.modules["keras_gpt.export"].export_onnx]
        import keras
        model = keras_gpt.GPT.from_preset("hf://tiny-owner/tiny-gpt")
        tokenizer = keras_gpt.presets.load_tokenizer("hf://tiny-owner/tiny-gpt")
        logits = keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor([{ids!r}])))
        print(json.dumps(dict(backend_at_import=backend_at_import, face=face,
                              ids=tokenizer.encode("hugging face"), logits=logits.tolist())))
    """)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "HF_HOME": None}
    proc = run_python(["-c", script], env=env, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend_at_import"] == [] and result["face"] == [True, True]
    assert result["ids"] == ids
    expected = to_numpy(model(np.array([ids])))
    np.testing.assert_allclose(result["logits"], expected, atol=1e-5, rtol=0)


@pytest.mark.backend_independent
def test_load_tokenizer_reads_a_tokenizer_directory_too(tmp_path):
    """The one load_tokenizer: a preset's tokenizer, a directory `Tokenizer.save` wrote,
    or GPT-2's vocabulary files alone; a directory with neither is a clear error."""
    bpe = keras_gpt.tokenizers.BytePairTokenizer.train(["one two three " * 30], 270)
    bpe.save(tmp_path / "saved")
    text = "three two one<|endoftext|>"
    assert keras_gpt.presets.load_tokenizer(tmp_path / "saved").encode(text) == bpe.encode(text)
    gpt2_files = tmp_path / "gpt2_files"
    gpt2_files.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (gpt2_files / name).write_bytes((tmp_path / "saved" / name).read_bytes())
    loaded = keras_gpt.presets.load_tokenizer(gpt2_files)
    assert loaded.encode(text) == bpe.encode(text)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No tokenizer in"):
        keras_gpt.presets.load_tokenizer(tmp_path / "empty")
