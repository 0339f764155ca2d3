"""The speedrun recipe's modern block (RoPE, RMSNorm, QK-norm, ReLU², untied zero-initialised
head, zero-initialised output projections, logit soft-cap) and its optimizer groups.

The NumPy references below are written from the papers' formulas, independently of
the layers: RoPE as complex multiplication, RMSNorm and attention from their
definitions. Tolerances: 1e-5 absolute for float32 outputs of size ~1 (the layers
and NumPy sum in different orders; measured differences are ~1e-7).
"""

import json
import pathlib

import keras
import numpy as np
import pytest
from conftest import to_numpy
from helpers import run_layer_test

import keras_gpt
from keras_gpt.model.gpt import MODERN_DEFAULTS
from keras_gpt.model.layers import CausalSelfAttention, TransformerBlock
from keras_gpt.model.layers.normalization import RMSNorm
from keras_gpt.model.layers.rotary import rotary_embedding
from keras_gpt.training.loop import budget_end
from keras_gpt.training.optimizer import (
    WarmupStableDecay,
    parameter_group,
    speedrun_optimizer,
    time_budget_variable,
)

RNG = np.random.default_rng(0)
MODERN = dict(
    position_embedding="rope",
    normalization="rmsnorm",
    norm_scale=False,
    qk_norm=True,
    activation="relu2",
    tie_embeddings=False,
    head_init_stddev=0.0,
    residual_init_stddev=0.0,
    logit_soft_cap=15.0,
    use_bias=False,
)
TINY = dict(vocabulary_size=61, num_layers=2, num_heads=2, hidden_dim=16, max_sequence_length=24)


def modern_gpt(**overrides):
    return keras_gpt.GPT(**{**TINY, **MODERN, "seed": 0, **overrides})


# -- NumPy references ------------------------------------------------------------------


def numpy_rope(x, start=0, base=10000.0):
    """RoPE as in RoFormer: pairs (x_i, x_{i+d/2}) as complex numbers times e^{i·m·θ_i}."""
    d = x.shape[-1]
    theta = base ** (-np.arange(d // 2) * 2.0 / d)
    m = np.arange(start, start + x.shape[1])
    z = (x[..., : d // 2] + 1j * x[..., d // 2 :]) * np.exp(1j * m[None, :, None, None] * theta)
    return np.concatenate([z.real, z.imag], axis=-1).astype(np.float32)


def numpy_rms(x, eps=1e-6):
    return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps)


def test_rotary_embedding_matches_complex_rotation():
    x = RNG.standard_normal((2, 5, 3, 8)).astype("float32")
    for start in (0, 7):
        np.testing.assert_allclose(
            to_numpy(rotary_embedding(x, start)), numpy_rope(x, start), atol=1e-5
        )


def test_rotary_scores_depend_only_on_relative_position():
    q = RNG.standard_normal((1, 1, 1, 8)).astype("float32")
    k = RNG.standard_normal((1, 1, 1, 8)).astype("float32")

    def score(m, n):
        return float((to_numpy(rotary_embedding(q, m)) * to_numpy(rotary_embedding(k, n))).sum())

    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


@pytest.mark.parametrize("scale", [False, True])
def test_rms_norm_matches_definition(scale):
    x = (RNG.standard_normal((2, 3, 8)) * 5).astype("float32")
    norm = RMSNorm(epsilon=1e-6, scale=scale)
    norm.build(x.shape)
    expected = numpy_rms(x)
    if scale:
        gamma = RNG.standard_normal(8).astype("float32")
        norm.gamma.assign(gamma)
        expected = expected * gamma
    np.testing.assert_allclose(to_numpy(norm(x)), expected, atol=1e-5)
    assert len(norm.weights) == int(scale)


def test_attention_with_rope_and_qk_norm_matches_numpy():
    heads, width, length = 2, 8, 5
    attn = CausalSelfAttention(
        heads,
        width,
        rope=True,
        qk_norm=True,
        use_bias=False,
        attention_implementation="plain",
        seed=1,
    )
    x = RNG.standard_normal((1, length, width)).astype("float32")
    out = to_numpy(attn(x))
    qkv = (x @ to_numpy(attn.qkv.kernel)).reshape(1, length, 3, heads, width // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = numpy_rope(numpy_rms(q)), numpy_rope(numpy_rms(k))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // heads)
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(1, length, width)
    np.testing.assert_allclose(out, y @ to_numpy(attn.output_dense.kernel), atol=1e-5)


def test_soft_cap_bounds_the_logits_of_the_same_weights():
    capped = modern_gpt(head_init_stddev=1.0, logit_soft_cap=2.0)
    plain = modern_gpt(head_init_stddev=1.0, logit_soft_cap=None)
    ids = RNG.integers(0, 61, (2, 7)).astype("int32")
    raw = to_numpy(plain(ids))
    assert np.abs(raw).max() > 2.0  # the cap has something to do
    np.testing.assert_allclose(to_numpy(capped(ids)), 2.0 * np.tanh(raw / 2.0), atol=1e-5)


def test_zero_initialised_head_and_projections_start_uniform():
    model = modern_gpt()
    for block in model.blocks:
        assert not to_numpy(block.attention.output_dense.kernel).any()
        assert not to_numpy(block.mlp_out.kernel).any()
    logits = to_numpy(model(RNG.integers(0, 61, (1, 5)).astype("int32")))
    assert not logits.any()  # uniform next-token distribution at step 0


def test_relu2_is_relu_squared():
    block = TransformerBlock(2, 8, activation="relu2", seed=0)
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0], "float32")
    from keras_gpt.model.layers.block import ACTIVATIONS

    np.testing.assert_allclose(to_numpy(ACTIVATIONS[block.activation](x)), [0, 0, 0, 0.25, 9])


def gradient_of_sum_times(fn, x, weights):
    """d/dx sum(fn(x) * weights) with the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        t = torch.tensor(x, requires_grad=True)
        (fn(t) * torch.tensor(weights)).sum().backward()
        return t.grad.numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda t: (fn(t) * weights).sum())(x))
    import tensorflow as tf

    t = tf.Variable(x)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(fn(t) * weights)
    return tape.gradient(total, t).numpy()


def test_relu_squared_gradient_is_twice_the_relu():
    """d/dx max(x, 0)² = 2·max(x, 0), 0 at x = 0 (PyTorch's hand-written backward included;
    exact: doubling and one product round the same way as autograd's)."""
    from keras_gpt.backend.ops import relu_squared

    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0, 1e-3], "float32")
    g = np.array([1.0, 2.0, 3.0, -4.0, 0.5, 7.0], "float32")
    np.testing.assert_array_equal(
        gradient_of_sum_times(relu_squared, x, g), 2 * np.maximum(x, 0) * g
    )
    np.testing.assert_array_equal(to_numpy(relu_squared(x)), np.maximum(x, 0) ** 2)


# -- layers through the shared harness ---------------------------------------------------


@pytest.mark.parametrize("scale", [False, True])
def test_rms_norm_layer(scale):
    run_layer_test(
        RMSNorm,
        dict(scale=scale),
        RNG.standard_normal((2, 4, 8)).astype("float32"),
        (2, 4, 8),
        expected_trainable_weights=int(scale),
        run_training_step=scale,
    )


def test_modern_block_layer():
    run_layer_test(
        TransformerBlock,
        dict(
            num_heads=2,
            hidden_dim=8,
            normalization="rmsnorm",
            rope=True,
            qk_norm=True,
            activation="relu2",
            use_bias=False,
            seed=0,
        ),
        RNG.standard_normal((2, 5, 8)).astype("float32"),
        (2, 5, 8),
        expected_trainable_weights=6,  # qkv, output, mlp_in, mlp_out, two norm scales
    )


# -- the model: defaults, decoding, presets -----------------------------------------------


def test_defaults_leave_gpt2_and_its_config_unchanged():
    model = keras_gpt.GPT(**TINY, seed=0)
    assert model.modern_options() == {}
    assert not set(MODERN_DEFAULTS) & set(model.get_config())
    assert "rmsnorm" not in json.dumps(model.get_config())


def cached_logits(model, ids: np.ndarray, prefill: int = 5) -> np.ndarray:
    """`ids`' logits through the KV cache: `prefill` tokens at once, then one at a time."""
    cache = model.init_cache(ids.shape[0], 2 * ids.shape[1])
    logits, cache = model.call_with_cache(ids[:, :prefill], cache, 0)
    steps = [to_numpy(logits)]
    for i in range(prefill, ids.shape[1]):
        logits, cache = model.call_with_cache(ids[:, i : i + 1], cache, i)
        steps.append(to_numpy(logits))
    return np.concatenate(steps, 1)


def test_rope_cached_decoding_equals_full_forward():
    model = modern_gpt(head_init_stddev=0.5, residual_init_stddev=0.1)
    ids = RNG.integers(0, 61, (2, 12)).astype("int32")
    full = to_numpy(model(ids))
    np.testing.assert_allclose(cached_logits(model, ids), full, atol=1e-5)


def test_rope_ragged_generation_equals_each_prompt_alone():
    model = modern_gpt(head_init_stddev=0.5, residual_init_stddev=0.1)
    prompts = [[5, 9, 2, 33, 17], [40, 1], [12, 12, 3]]
    together = model.generate(prompts, max_new_tokens=6, return_lengths=True)
    ids, lengths = together
    for row, prompt in enumerate(prompts):
        alone = model.generate([prompt], max_new_tokens=6)[0]
        np.testing.assert_array_equal(ids[row, : lengths[row]], alone[: lengths[row]])


def test_modern_preset_round_trip_and_gpt2_formats_refuse(tmp_path):
    model = modern_gpt(head_init_stddev=0.5, residual_init_stddev=0.1, norm_scale=True)
    model.save_to_preset(str(tmp_path / "modern"))
    loaded = keras_gpt.GPT.from_preset(str(tmp_path / "modern"))
    assert loaded.modern_options() == model.modern_options()
    ids = RNG.integers(0, 61, (1, 9)).astype("int32")
    np.testing.assert_array_equal(to_numpy(loaded(ids)), to_numpy(model(ids)))
    with pytest.raises(ValueError, match="position_embedding='rope'"):
        model.save_to_preset(str(tmp_path / "hf"), format="huggingface")


def test_modern_model_quantizes_and_takes_lora():
    model = modern_gpt(head_init_stddev=0.5, residual_init_stddev=0.1)
    ids = RNG.integers(0, 61, (1, 9)).astype("int32")
    before = to_numpy(model(ids))
    model.enable_lora(rank=2)
    np.testing.assert_allclose(to_numpy(model(ids)), before, atol=1e-6)
    model.merge_lora()
    model.quantize("int8")
    # int8 weights: within a few percent of the largest logit.
    assert np.abs(to_numpy(model(ids)) - before).max() < 0.05 * np.abs(before).max()


# -- the optimizer: groups, decay, schedules ------------------------------------------------


def test_parameter_groups_by_path():
    model = modern_gpt(norm_scale=True, use_bias=True)
    groups = {v.path.split("/", 1)[1]: parameter_group(v.path) for v in model.trainable_variables}
    assert groups["embeddings/token_embeddings"] == "embedding"
    assert groups["lm_head/kernel"] == "head"
    assert groups["final_norm/scale"] == "scalar"
    for i in range(2):
        for name in ("attention/qkv", "attention/output", "mlp_in", "mlp_out"):
            assert groups[f"block_{i}/{name}/kernel"] == "matrix"
            assert groups[f"block_{i}/{name}/bias"] == "scalar"
        assert groups[f"block_{i}/attention_norm/scale"] == "scalar"
    assert set(groups.values()) == {"matrix", "embedding", "head", "scalar"}


def test_speedrun_optimizer_decays_only_the_matrices():
    """With zero gradients only weight decay moves a weight: the matrices shrink by exactly
    (1 - lr·wd) and nothing else changes."""
    model = modern_gpt(norm_scale=True, use_bias=True, head_init_stddev=0.5)
    lr, wd = 0.01, 0.5
    optimizer = speedrun_optimizer(10, matrix_learning_rate=lr, weight_decay=wd)
    variables = model.trainable_variables
    before = {v.path: to_numpy(v) for v in variables}
    optimizer.apply([keras.ops.zeros(v.shape) for v in variables], variables)
    for v in variables:
        expected = before[v.path] * (1 - lr * wd) if parameter_group(v.path) == "matrix" else None
        if expected is None:
            np.testing.assert_array_equal(to_numpy(v), before[v.path], err_msg=v.path)
        else:
            np.testing.assert_allclose(to_numpy(v), expected, rtol=1e-6, err_msg=v.path)
    muon = optimizer.optimizers[0]
    assert isinstance(muon, keras.optimizers.Muon)


def test_warmup_stable_decay_follows_its_formula():
    schedule = WarmupStableDecay(
        0.1, total_steps=100, warmup_steps=10, cooldown_fraction=0.4, min_learning_rate_ratio=0.1
    )

    def expected(step):  # warm-up, flat, then linear from 0.1 at step 60 to 0.01 at 100
        step = min(step, 100)
        if step < 10:
            return 0.1 * (step + 1) / 10
        if step < 60:
            return 0.1
        return 0.1 * (0.1 + 0.9 * (100 - step) / 40)

    for step in (0, 4, 9, 10, 30, 59, 60, 75, 99, 100, 120):
        assert float(schedule(step)) == pytest.approx(expected(step), rel=1e-6), step


def test_time_budget_variable_moves_the_cooldown():
    optimizer = speedrun_optimizer(100, matrix_learning_rate=0.02, cooldown_fraction=0.5)
    total = time_budget_variable(optimizer, 100)
    muon = optimizer.optimizers[0]
    assert total in optimizer.variables
    assert float(muon._learning_rate(40)) == pytest.approx(0.02)
    total.assign(60.0)  # the budget will end the run at step 60: cooling down from 30
    assert float(muon._learning_rate(40)) == pytest.approx(0.02 * 20 / 30)
    assert float(muon._learning_rate(60)) == 0.0


def test_budget_end_counts_the_steps_that_fit():
    assert budget_end(100, 50.0, 4.0, 60.0, 10_000) == 140
    assert budget_end(100, 70.0, 4.0, 60.0, 10_000) == 100  # over budget: end now
    assert budget_end(100, 0.0, 4.0, 60.0, 150) == 150  # never past max_steps


# -- the recipes --------------------------------------------------------------------------

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "recipes" / "configs"


@pytest.mark.parametrize("name", ["shakespeare_char_speedrun", "shakespeare_char_speedrun_long"])
def test_speedrun_configs_build_the_modern_model_and_muon(name):
    from keras_gpt.training.pretrain import build_model, build_optimizer, load_config

    config = load_config(CONFIGS / f"{name}.toml")
    model = build_model(config, 65)
    assert model.modern_options()["position_embedding"] == "rope"
    optimizer = build_optimizer(config)
    assert isinstance(optimizer.optimizers[0], keras.optimizers.Muon)
    assert config.data == "shakespeare" and config.sequence_length == 64  # nanoGPT's setup


def test_time_budgeted_run_ends_with_its_cooldown_finished(tmp_path):
    """With `max_seconds` and wsd the loop moves the run's end to where the budget runs
    out, so the last logged rate is the cool-down's floor (0) long before max_steps."""
    from keras_gpt.training import read_metrics
    from keras_gpt.training.pretrain import load_config, pretrain

    text = tmp_path / "text.txt"
    text.write_text("".join(f"line {i % 7}: the quick brown fox.\n" for i in range(300)))
    config = load_config(
        CONFIGS / "shakespeare_char_speedrun.toml",
        {
            "data": str(text), "out": str(tmp_path / "run"), "num_layers": 1,
            "num_heads": 2, "hidden_dim": 16, "sequence_length": 16, "batch_size": 4,
            "max_steps": 100_000, "max_seconds": 2, "eval_interval": 5, "eval_batches": 2,
            "sample_tokens": 0, "verbose": 0, "peak_flops": 1e9, "jit_compile": "false",
        },
    )  # fmt: skip
    summary = pretrain(config)
    rows = read_metrics(tmp_path / "run")
    assert summary["steps"] < 100_000
    assert rows[-1]["step"] == summary["steps"]
    assert rows[-1]["learning_rate"] == 0.0


def test_gpt_optimizer_leaves_rms_norm_scales_undecayed():
    """GPT-2's AdamW recipe (used by fine-tuning) on a modern model: with zero gradients
    only the kernels shrink; RMSNorm scales, like LayerNorm's, are not decayed."""
    from keras_gpt.training import gpt_optimizer

    model = modern_gpt(norm_scale=True, head_init_stddev=0.5, residual_init_stddev=0.1)
    optimizer = gpt_optimizer(0.1, total_steps=10, warmup_steps=0, weight_decay=0.5)
    variables = model.trainable_variables
    before = {v.path: to_numpy(v) for v in variables}
    optimizer.apply([keras.ops.zeros(v.shape) for v in variables], variables)
    for v in variables:
        changed = not np.array_equal(to_numpy(v), before[v.path])
        assert changed == v.path.endswith("kernel"), v.path


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("position_embedding", "alibi", "'learned', 'sinusoidal' or 'rope'"),
        ("normalization", "batchnorm", "normalization"),
        ("activation", "swish", "activation"),
    ],
)
def test_unknown_options_are_refused_by_name(option, value, message):
    with pytest.raises(ValueError, match=message):
        modern_gpt(**{option: value})


# -- value embeddings ------------------------------------------------------------------------


def value_embedding_gpt():
    """A modern GPT with value embeddings whose gates and output projections are not
    at their (neutral, zero) initial values, so that every term shows in the logits."""
    model = modern_gpt(head_init_stddev=0.5, residual_init_stddev=0.1, value_embeddings="all")
    for block in model.blocks:
        gate = block.attention.value_gate
        gate.assign(RNG.standard_normal(gate.shape).astype("float32"))
    return model


def test_value_embeddings_add_gated_rows_to_the_values():
    heads, width, length, vocab = 2, 8, 5, 11
    attn = CausalSelfAttention(
        heads,
        width,
        rope=True,
        qk_norm=True,
        use_bias=False,
        attention_implementation="plain",
        value_embedding_vocabulary_size=vocab,
        seed=1,
    )
    x = RNG.standard_normal((1, length, width)).astype("float32")
    ids = RNG.integers(0, vocab, (1, length)).astype("int32")
    attn(x, token_ids=ids)  # builds
    gate_weights = RNG.standard_normal(attn.value_gate.shape).astype("float32")
    attn.value_gate.assign(gate_weights)
    out = to_numpy(attn(x, token_ids=ids))
    qkv = (x @ to_numpy(attn.qkv.kernel)).reshape(1, length, 3, heads, width // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    gate = 2.0 / (1.0 + np.exp(-(x @ gate_weights)))  # (1, length, heads); width < 32 channels
    rows = to_numpy(attn.value_embeddings)[ids].reshape(1, length, heads, width // heads)
    v = v + gate[..., None] * rows
    q, k = numpy_rope(numpy_rms(q)), numpy_rope(numpy_rms(k))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // heads)
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(1, length, width)
    np.testing.assert_allclose(out, y @ to_numpy(attn.output_dense.kernel), atol=1e-5)
    with pytest.raises(ValueError, match="token_ids"):
        attn(x)


def test_value_embeddings_cached_decoding_equals_full_forward():
    model = value_embedding_gpt()
    ids = RNG.integers(0, 61, (2, 12)).astype("int32")
    full = to_numpy(model(ids))
    np.testing.assert_allclose(cached_logits(model, ids), full, atol=1e-5)
    # One position per row (continuous batching, `keras_gpt.generation.slots`): row 0
    # decodes its token 5, row 1 rewrites its token 3 at position 3.
    cache = model.init_cache(2, 24)
    _, cache = model.call_with_cache(ids[:, :5], cache, 0)
    tokens = np.array([[ids[0, 5]], [ids[1, 3]]], "int32")
    positions = keras.ops.convert_to_tensor(np.array([5, 3], "int32"))
    logits, _ = model.call_with_cache(tokens, cache, positions)
    np.testing.assert_allclose(to_numpy(logits)[:, 0], full[[0, 1], [5, 3]], atol=1e-5)


def test_value_embeddings_change_the_logits_and_survive_a_preset(tmp_path):
    model = value_embedding_gpt()
    ids = RNG.integers(0, 61, (1, 9)).astype("int32")
    logits = to_numpy(model(ids))
    for block in model.blocks:  # zero rows: the model without value embeddings
        table = block.attention.value_embeddings
        table.assign(np.zeros(table.shape, "float32"))
    assert np.abs(to_numpy(model(ids)) - logits).max() > 1e-3
    model = value_embedding_gpt()
    assert model.modern_options()["value_embeddings"] == "all"
    assert model.get_config()["value_embeddings"] == "all"
    # nanochat's "alternate": every other block, the last one included.
    tables = [
        hasattr(block.attention, "value_embeddings")
        for block in modern_gpt(num_layers=5, value_embeddings="alternate").blocks
    ]
    assert tables == [True, False, True, False, True]
    with pytest.raises(ValueError, match="value_embeddings"):
        modern_gpt(value_embeddings=True)
    model.save_to_preset(str(tmp_path / "ve"))
    loaded = keras_gpt.GPT.from_preset(str(tmp_path / "ve"))
    np.testing.assert_array_equal(to_numpy(loaded(ids)), to_numpy(model(ids)))
    np.testing.assert_array_equal(
        loaded.generate([[5, 9, 2], [40]], max_new_tokens=4),
        model.generate([[5, 9, 2], [40]], max_new_tokens=4),
    )
    # The tables and gates go to AdamW (the "scalar" group), not to Muon.
    groups = {parameter_group(v.path) for v in model.trainable_variables if "value_" in v.path}
    assert groups == {"scalar"}
