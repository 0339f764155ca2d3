"""Behaviour of the GPT model on the current backend."""

import math
import os

import keras
import numpy as np
import pytest
from conftest import TINY, to_numpy

import keras_gpt
from keras_gpt import GPT, Perplexity, causal_lm_loss


def test_logits_shape(tiny_model, token_batch):
    logits = tiny_model(token_batch[:, :12])
    assert tuple(logits.shape) == (4, 12, TINY["vocabulary_size"])


def test_same_seed_same_weights_different_seed_different():
    a, b, c = GPT(**TINY), GPT(**TINY), GPT(**{**TINY, "seed": 1})
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(to_numpy(wa), to_numpy(wb))
    kernels = [
        (to_numpy(wa), to_numpy(wc)) for wa, wc in zip(a.weights, c.weights) if wa.name == "kernel"
    ]
    assert all(np.abs(x - y).max() > 0 for x, y in kernels)


def test_gpt2_initialisation():
    config = dict(
        vocabulary_size=300,
        num_layers=4,
        num_heads=4,
        hidden_dim=64,
        max_sequence_length=128,
        seed=0,
    )
    model = GPT(**config)
    residual_std = 0.02 / math.sqrt(2 * config["num_layers"])
    for weight in model.weights:
        value = to_numpy(weight)
        path = weight.path
        if weight.name == "bias" or (weight.name == "beta"):
            assert not value.any(), path
        elif weight.name == "gamma":
            assert (value == 1).all(), path
        elif weight.name in ("kernel", "token_embeddings", "position_embeddings"):
            expected = residual_std if ("attention/output" in path or "mlp_out" in path) else 0.02
            assert abs(value.std() - expected) < 0.1 * expected, path
            assert abs(value.mean()) < 0.1 * expected, path


def test_seed_none_is_recorded_and_reproducible():
    model = GPT(**{**TINY, "seed": None})
    assert isinstance(model.get_config()["seed"], int)
    clone = GPT.from_config(model.get_config())
    for wa, wb in zip(model.weights, clone.weights):
        np.testing.assert_array_equal(to_numpy(wa), to_numpy(wb))


def test_is_causal_end_to_end(tiny_model, token_batch):
    x = token_batch[:, :12]
    y = to_numpy(tiny_model(x))
    x2 = x.copy()
    x2[:, 8:] = (x2[:, 8:] + 1) % TINY["vocabulary_size"]
    y2 = to_numpy(tiny_model(x2))
    np.testing.assert_allclose(y[:, :8], y2[:, :8], atol=1e-5)


def test_dict_inputs_and_padding_mask(tiny_model, token_batch):
    x = token_batch[:, :12]
    mask = np.ones_like(x)
    plain = to_numpy(tiny_model(x))
    as_dict = to_numpy(tiny_model({"token_ids": x, "padding_mask": mask}))
    np.testing.assert_allclose(plain, as_dict, atol=1e-5)


def test_cache_path_matches_full_forward(tiny_model, token_batch):
    x = token_batch[:, :10]
    full = to_numpy(tiny_model(x))
    cache = tiny_model.init_cache(batch_size=4, cache_length=12)
    logits, cache = tiny_model.call_with_cache(x[:, :7], cache, 0)
    steps = [to_numpy(logits)]
    for i in range(7, 10):
        logits, cache = tiny_model.call_with_cache(x[:, i : i + 1], cache, i)
        steps.append(to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_untied_head_and_sinusoidal_positions(token_batch):
    model = GPT(**TINY, tie_embeddings=False, position_embedding="sinusoidal")
    names = [w.path for w in model.weights]
    assert any("lm_head" in n for n in names)
    assert not any("position_embeddings" in n for n in names)
    assert tuple(model(token_batch[:, :12]).shape) == (4, 12, TINY["vocabulary_size"])


def test_bias_free_model(tmp_path, token_batch):
    """use_bias=False (nanoGPT's bias=False) drops every bias and LayerNorm beta."""
    model = GPT(**TINY, use_bias=False)
    biased = GPT(**TINY)
    names = [w.path for w in model.weights if "float" in str(w.dtype)]
    assert not any(n.endswith(("/bias", "/beta")) for n in names)
    h, layers = TINY["hidden_dim"], TINY["num_layers"]
    # Per block: qkv 3h + out h + mlp 4h + h biases, two LayerNorm betas; final beta.
    assert biased.count_params() - model.count_params() == layers * (11 * h) + h
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config()["use_bias"] is False
    np.testing.assert_array_equal(
        to_numpy(loaded(token_batch[:, :12])), to_numpy(model(token_batch[:, :12]))
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_dim": 15}, "divisible"),
        ({"num_layers": 0}, "num_layers"),
    ],
)
def test_bad_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPT(**{**TINY, **kwargs})


def test_bad_input_errors(tiny_model):
    with pytest.raises(ValueError, match="exceeds"):
        tiny_model(np.zeros((1, 13), "int32"))
    with pytest.raises(ValueError, match="integers"):
        tiny_model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="Token id 50 is outside"):
        tiny_model(np.array([[1, 50]], "int32"))
    with pytest.raises(ValueError, match="Token id -1 is outside"):
        tiny_model(np.array([[-1, 2]], "int32"))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        tiny_model(np.zeros((4,), "int32"))
    with pytest.raises(ValueError, match="token_ids"):
        tiny_model({"ids": np.zeros((1, 4), "int32")})
    with pytest.raises(ValueError, match="cache_length"):
        tiny_model.init_cache(1, 13)


def fit_losses(model, data, **fit_kwargs):
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), metrics=[Perplexity()])
    return model.fit(**fit_kwargs, epochs=1, verbose=0).history


def repeating_data(n=32, length=13):
    # Each row counts upward: perfectly learnable.
    start = np.random.default_rng(0).integers(0, 50, (n, 1))
    return ((start + np.arange(length)) % 50).astype("int32")


def test_fit_on_arrays_reduces_loss():
    model = GPT(**TINY)
    data = repeating_data()
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    before = model.evaluate(data[:, :-1], data[:, 1:], verbose=0)
    model.fit(data[:, :-1], data[:, 1:], batch_size=8, epochs=5, verbose=0)
    after = model.evaluate(data[:, :-1], data[:, 1:], verbose=0)
    assert after < 0.7 * before


def test_default_compile_chooses_xla_by_backend_and_size():
    backend = keras.backend.backend()
    small = GPT(**TINY)
    big = GPT(
        vocabulary_size=4096,
        num_layers=2,
        num_heads=2,
        hidden_dim=256,
        max_sequence_length=64,
        seed=0,
    )
    assert small.count_params() < keras_gpt.model.gpt.XLA_MIN_PARAMETERS <= big.count_params()
    for model in (small, big):
        model.compile(optimizer="adamw")
    # JAX: Keras' "auto" jit; PyTorch: eager; TensorFlow on CPU: ours, by size.
    assert small.jit_compile is (backend == "jax")
    assert big.jit_compile is (backend != "torch")


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="jit_compile=True means torch.compile on PyTorch, minutes on CPU",
)
def test_xla_and_plain_training_agree_and_loaded_models_are_compiled(tmp_path):
    # XLA may fuse and reorder float32 arithmetic: losses agree to 1e-5
    # relative, not bitwise. The comparison runs on TensorFlow, where
    # jit_compile="auto" chooses between the two; JAX's plain mode is
    # op-by-op eager execution (~30 s for this fit) of the same XLA ops.
    data = repeating_data()
    models = [GPT(**TINY) for _ in range(2 if keras.backend.backend() == "tensorflow" else 1)]
    for model, jit in zip(models, (True, False)):
        model.compile(optimizer=keras.optimizers.AdamW(1e-2), jit_compile=jit)
    losses = [
        m.fit(data[:, :-1], data[:, 1:], batch_size=8, epochs=3, verbose=0, shuffle=False).history[
            "loss"
        ]
        for m in models
    ]
    assert np.all(np.isfinite(losses[0]))
    if len(models) == 2:
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    xla = models[0]
    # A saved compiled model loads compiled (our `compile` is custom, so Keras
    # would skip it without `compile_from_config`), XLA chosen afresh.
    xla.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.compiled and loaded.jit_compile is (keras.backend.backend() == "jax")
    loaded.fit(data[:8, :-1], data[:8, 1:], batch_size=8, epochs=1, verbose=0)


def test_fit_on_tf_data_and_pydataset():
    import tensorflow as tf

    data = repeating_data()
    ds = tf.data.Dataset.from_tensor_slices((data[:, :-1], data[:, 1:])).batch(8)
    history = fit_losses(GPT(**TINY), data, x=ds)
    assert np.isfinite(history["loss"][0])

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            rows = data[8 * i : 8 * (i + 1)]
            return rows[:, :-1], rows[:, 1:]

    history = fit_losses(GPT(**TINY), data, x=Batches())
    assert np.isfinite(history["loss"][0])


def test_perplexity_is_exp_of_loss(tiny_model):
    data = repeating_data(8)
    tiny_model.compile(optimizer="adamw", metrics=[Perplexity()])
    loss, ppl = tiny_model.evaluate(data[:, :-1], data[:, 1:], batch_size=8, verbose=0)
    assert ppl == pytest.approx(math.exp(loss), rel=1e-5)


def test_padding_mask_loss_matches_hand_computation(tiny_model):
    data = repeating_data(4)
    x, y = data[:, :-1], data[:, 1:]
    mask = np.ones_like(x)
    mask[0, 6:] = 0
    mask[2, 3:] = 0
    logits = to_numpy(tiny_model(x)).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_nll = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    expected = (token_nll * mask).sum() / mask.sum()

    tiny_model.compile(optimizer="adamw")
    got = tiny_model.evaluate({"token_ids": x, "padding_mask": mask}, y, batch_size=4, verbose=0)
    assert got == pytest.approx(expected, rel=1e-5)
    # Masked positions are ignored: changing their labels changes nothing.
    y2 = y.copy()
    y2[0, 6:] = 0
    got2 = tiny_model.evaluate({"token_ids": x, "padding_mask": mask}, y2, batch_size=4, verbose=0)
    assert got2 == pytest.approx(got, rel=1e-6)
    direct = float(to_numpy(causal_lm_loss(y, tiny_model(x), mask)))
    assert direct == pytest.approx(expected, rel=1e-5)


def test_explicit_loss_is_respected(tiny_model):
    data = repeating_data(8)
    tiny_model.compile(
        optimizer="adamw",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
    )
    total = tiny_model.evaluate(data[:, :-1], data[:, 1:], batch_size=8, verbose=0)
    default = GPT(**TINY)  # same seed, same weights; compiled without a loss
    default.compile(optimizer="adamw")
    mean = default.evaluate(data[:, :-1], data[:, 1:], batch_size=8, verbose=0)
    assert total == pytest.approx(mean * data[:, 1:].size, rel=1e-4)


def test_save_and_load_round_trip(tmp_path, tiny_model, token_batch):
    path = os.path.join(tmp_path, "model.keras")
    tiny_model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, GPT)
    assert loaded.get_config() == tiny_model.get_config()
    np.testing.assert_array_equal(
        to_numpy(loaded(token_batch[:, :12])), to_numpy(tiny_model(token_batch[:, :12]))
    )


def test_mixed_bfloat16_trains():
    model = GPT(**TINY, dtype="mixed_bfloat16")
    assert model.compute_dtype == "bfloat16"
    assert all(w.dtype in ("float32", "int32") for w in model.weights)
    data = repeating_data(16)
    history = fit_losses(model, data, x=data[:, :-1], y=data[:, 1:], batch_size=8)
    assert np.isfinite(history["loss"][0])


def test_dropout_is_deterministic_per_seed():
    data = repeating_data(16)
    runs = []
    for _ in range(2):
        model = GPT(**TINY, dropout=0.2)
        history = fit_losses(
            model, data, x=data[:, :-1], y=data[:, 1:], batch_size=8, shuffle=False
        )
        runs.append((history["loss"][0], to_numpy(model.weights[0])))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    eval_model = GPT(**TINY, dropout=0.2)
    x = data[:2, :-1]
    np.testing.assert_array_equal(to_numpy(eval_model(x)), to_numpy(eval_model(x)))


def test_dropout_is_active_inside_fit_and_draws_fresh_masks():
    """Dropout changes the training losses (same seed, same data) and every dropout
    layer's counter advances once per step, so each step draws a new mask."""
    data = repeating_data(16)
    losses = {}
    for rate in (0.0, 0.2):
        model = GPT(**TINY, dropout=rate)
        model.compile(optimizer=keras.optimizers.AdamW(3e-3))
        losses[rate] = [float(model.train_on_batch(data[:8, :-1], data[:8, 1:])) for _ in range(3)]
        counters = [w for w in model.weights if w.path.endswith("counter")]
        assert counters
        if rate:
            # 3 steps: each dropout layer drew 3 masks.
            assert {int(to_numpy(c)) for c in counters} == {3}
    assert losses[0.0][0] != losses[0.2][0]
    assert all(a != b for a, b in zip(losses[0.0], losses[0.2]))


@pytest.mark.backend_independent
def test_public_api():
    """Each public name is the object its home module defines (the lazy `__getattr__`
    maps them), each part's `__all__` names only what the part holds, and a wrong
    name is an AttributeError that names it."""
    import importlib

    homes = {
        "GPT": "keras_gpt.model.gpt",
        "Perplexity": "keras_gpt.model.metrics",
        "causal_lm_loss": "keras_gpt.model.losses",
        "count_parameters": "keras_gpt.model.parameters",
        "Tokenizer": "keras_gpt.tokenizers.tokenizer",
        "export": "keras_gpt.export.saved_model",
        "export_onnx": "keras_gpt.export.onnx",
    }
    for name, home in homes.items():
        assert getattr(keras_gpt, name) is getattr(importlib.import_module(home), name), name
    assert keras_gpt.layers is importlib.import_module("keras_gpt.model.layers")
    assert keras_gpt.presets is importlib.import_module("keras_gpt.presets")
    assert set(keras_gpt.__all__) == {*homes, "layers", "presets", "__version__"}
    assert set(keras_gpt.__all__) <= set(dir(keras_gpt))
    for part in ("data", "evaluation", "generation", "model", "presets", "tokenizers"):
        module = getattr(keras_gpt, part)
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"keras_gpt.{part}.__all__ names {missing}, which it lacks"
    for name in ("CausalSelfAttention", "TransformerBlock", "TokenAndPositionEmbedding"):
        assert issubclass(getattr(keras_gpt.layers, name), keras.layers.Layer), name
    with pytest.raises(AttributeError, match="has no attribute 'GTP'"):
        keras_gpt.GTP  # noqa: B018
