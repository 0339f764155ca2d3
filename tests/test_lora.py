"""LoRA adapters: freezing, training, merging, saving and loading."""

import keras
import numpy as np
import pytest
from conftest import TINY, to_numpy

from keras_gpt import GPT


def data(n=16, length=13):
    start = np.random.default_rng(1).integers(0, 50, (n, 1))
    return ((start + 2 * np.arange(length)) % 50).astype("int32")


def snapshot(model):
    return {v.path.split("/", 1)[1]: to_numpy(v).copy() for v in model.weights}


def test_lora_trains_only_adapters_and_leaves_base_untouched():
    model = GPT(**TINY)
    x = data()
    base_logits = to_numpy(model(x[:, :-1]))
    model.enable_lora(rank=2)
    # B starts at zero: the adapted model equals the base model.
    np.testing.assert_allclose(to_numpy(model(x[:, :-1])), base_logits, atol=1e-6)
    trainable = {v.path.split("/", 1)[1] for v in model.trainable_variables}
    assert trainable and all(
        p.rsplit("/", 1)[-1] in ("lora_kernel_a", "lora_kernel_b") for p in trainable
    )
    # 2 blocks × 4 targets × (A, B)
    assert len(trainable) == 16
    before = snapshot(model)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    model.fit(x[:, :-1], x[:, 1:], batch_size=8, epochs=2, verbose=0)
    after = snapshot(model)
    for key in before:
        changed = not np.array_equal(before[key], after[key])
        is_adapter = key.rsplit("/", 1)[-1].startswith("lora_kernel")
        if key.endswith("counter"):
            continue
        if is_adapter:
            # B starts at 0 and moves at the first step; A gets a gradient once B != 0.
            assert changed, key
        if not is_adapter:
            assert not changed, key


def test_train_biases_option():
    model = GPT(**TINY)
    model.enable_lora(rank=2, target=("qkv",), train_biases=True)
    names = {v.path.rsplit("/", 1)[-1] for v in model.trainable_variables}
    assert names == {"lora_kernel_a", "lora_kernel_b", "bias"}


def test_merged_model_matches_adapted_model(tmp_path):
    model = GPT(**TINY)
    x = data()
    model.enable_lora(rank=4, alpha=8)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    model.fit(x[:, :-1], x[:, 1:], batch_size=8, epochs=2, verbose=0)
    adapted = to_numpy(model(x[:, :-1]))
    model.merge_lora()
    merged = to_numpy(model(x[:, :-1]))
    # Merging reorders one float32 sum (W + AB vs W·x + A(Bx)); 1e-5 is the bound.
    np.testing.assert_allclose(merged, adapted, atol=1e-5)
    assert len(model.trainable_variables) > 16  # a plain model again
    path = tmp_path / "merged.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(reloaded(x[:, :-1])), adapted, atol=1e-5)


def test_adapters_save_and_load_onto_a_fresh_model(tmp_path):
    x = data()
    model = GPT(**TINY)
    model.enable_lora(rank=2, target=("qkv", "mlp_out"))
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    model.fit(x[:, :-1], x[:, 1:], batch_size=8, epochs=1, verbose=0)
    model.save_lora(tmp_path / "adapters.npz")
    fresh = GPT(**TINY)  # e.g. the same preset loaded again
    fresh.load_lora(tmp_path / "adapters.npz")
    assert fresh.lora_config == model.lora_config
    np.testing.assert_allclose(to_numpy(fresh(x[:, :-1])), to_numpy(model(x[:, :-1])), atol=1e-6)
    with np.load(tmp_path / "adapters.npz") as f:
        assert "block_0/attention/qkv/lora_kernel_a" in f.files


def test_lora_errors(tmp_path):
    model = GPT(**TINY)
    with pytest.raises(ValueError, match="target"):
        model.enable_lora(rank=2, target=("nope",))
    with pytest.raises(ValueError, match="rank"):
        model.enable_lora(rank=0)
    with pytest.raises(ValueError, match="not enabled"):
        model.merge_lora()
    with pytest.raises(ValueError, match="not enabled"):
        model.save_lora(tmp_path / "a.npz")
    model.enable_lora(rank=2)
    with pytest.raises(ValueError, match="already enabled"):
        model.enable_lora(rank=2)
    model.save_lora(tmp_path / "a.npz")
    other = GPT(**{**TINY, "hidden_dim": 32})
    with pytest.raises(ValueError, match="shape"):
        other.load_lora(tmp_path / "a.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="Could not read LoRA"):
        GPT(**TINY).load_lora(tmp_path / "bad.npz")


def test_attention_output_target_is_named_as_its_layer_and_keeps_its_earlier_name(tmp_path):
    new, old = GPT(**TINY), GPT(**TINY)
    new.enable_lora(rank=2, target=("qkv", "output"))
    old.enable_lora(rank=2, target=("qkv", "attn_out"))  # the name before the rename
    assert new.lora_config["target"] == old.lora_config["target"] == ["qkv", "output"]
    adapters = {k: v for k, v in snapshot(new).items() if "lora_kernel" in k}
    assert "block_0/attention/output/lora_kernel_a" in adapters
    for key, value in snapshot(old).items():  # same layers, same seeded start
        if "lora_kernel" in key:
            np.testing.assert_array_equal(value, adapters[key])
    # An adapter file saved before the rename names the target "attn_out".
    for variable in new.weights:  # non-zero B: the loaded adapters change the logits
        if "lora_kernel_b" in variable.path:
            variable.assign(np.full(variable.shape, 0.5, "float32"))
    new.save_lora(tmp_path / "adapters.npz")
    with np.load(tmp_path / "adapters.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["__lora_config__"] = np.array('{"rank": 2, "alpha": 2.0, "target": ["qkv", "attn_out"]}')
    np.savez(tmp_path / "earlier.npz", **arrays)
    x = data()[:, :-1]
    for model in (GPT(**TINY), old):  # a fresh model, and one with the same LoRA enabled
        model.load_lora(tmp_path / "earlier.npz")
        assert model.lora_config["target"] == ["qkv", "output"]
        np.testing.assert_allclose(to_numpy(model(x)), to_numpy(new(x)), atol=1e-6)
    with pytest.raises(ValueError, match="attn_out"):  # one layer named twice
        GPT(**TINY).enable_lora(rank=2, target=("output", "attn_out"))
