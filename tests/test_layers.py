"""Behaviour of the layers that compose GPT."""

import keras
import numpy as np
import pytest
from conftest import to_numpy
from helpers import run_layer_test

from keras_gpt.backend import call_sublayer
from keras_gpt.model.layers import (
    CausalSelfAttention,
    PortableDropout,
    TokenAndPositionEmbedding,
    TransformerBlock,
)
from keras_gpt.model.layers.dense import Dense
from keras_gpt.random import HASH_RANGE, hash_ints

RNG = np.random.default_rng(0)


def hidden(batch=2, length=6, width=8):
    return RNG.standard_normal((batch, length, width)).astype("float32")


@pytest.mark.parametrize("implementation", ["plain", "fused"])
def test_attention_is_causal(implementation):
    attn = CausalSelfAttention(2, 8, attention_implementation=implementation, seed=0)
    x = hidden()
    y = to_numpy(attn(x))
    x2 = x.copy()
    x2[:, 4:] += 1.0  # change the future only
    y2 = to_numpy(attn(x2))
    np.testing.assert_allclose(y[:, :4], y2[:, :4], atol=1e-6)
    assert np.abs(y[:, 4:] - y2[:, 4:]).max() > 1e-3


def test_fused_and_plain_attention_agree():
    plain = CausalSelfAttention(2, 8, attention_implementation="plain", seed=3)
    fused = CausalSelfAttention(2, 8, attention_implementation="fused", seed=3)
    x = hidden()
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], "int32")
    # Same seed, same weights; float32 reorderings stay well inside 1e-5.
    np.testing.assert_allclose(to_numpy(plain(x)), to_numpy(fused(x)), atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(plain(x, padding_mask=mask)), to_numpy(fused(x, padding_mask=mask)), atol=1e-5
    )


def test_padding_mask_hides_padded_keys():
    attn = CausalSelfAttention(2, 8, seed=0)
    x = hidden(batch=1)
    mask = np.array([[1, 1, 0, 1, 1, 1]], "int32")
    y = to_numpy(attn(x, padding_mask=mask))
    x2 = x.copy()
    x2[:, 2] = 100.0  # the masked position may change freely
    y2 = to_numpy(attn(x2, padding_mask=mask))
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(y[:, keep], y2[:, keep], atol=1e-5)


def test_cached_attention_matches_full_attention():
    attn = CausalSelfAttention(2, 8, seed=0)
    x = hidden(length=6)
    full = to_numpy(attn(x))
    cache = keras.ops.zeros((2, 2, 2, 8, 4))  # (batch, 2, heads, cache_length, head_dim)
    out1, cache = attn(x[:, :4], cache=cache, cache_index=0)
    out2, cache = attn(x[:, 4:5], cache=cache, cache_index=4)
    out3, cache = attn(x[:, 5:6], cache=cache, cache_index=5)
    cached = np.concatenate([to_numpy(out1), to_numpy(out2), to_numpy(out3)], axis=1)
    np.testing.assert_allclose(cached, full, atol=1e-5)


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(num_heads=3, hidden_dim=8)


@pytest.mark.parametrize("activation", ["gelu_approximate", "gelu", "relu"])
def test_block_shapes_and_activation(activation):
    block = TransformerBlock(2, 8, activation=activation, seed=0)
    assert block.intermediate_dim == 32
    assert tuple(block(hidden()).shape) == (2, 6, 8)
    assert block.attention_norm.epsilon == 1e-5


def test_block_activation_changes_output():
    x = hidden()
    outs = [to_numpy(TransformerBlock(2, 8, activation=a, seed=0)(x)) for a in ("gelu", "relu")]
    assert np.abs(outs[0] - outs[1]).max() > 1e-4


def test_block_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        TransformerBlock(2, 8, activation="swish")


@pytest.mark.parametrize("position_embedding", ["learned", "sinusoidal"])
def test_embedding_positions_and_projection(position_embedding):
    layer = TokenAndPositionEmbedding(20, 10, 8, position_embedding=position_embedding, seed=0)
    ids = np.array([[3, 3, 3]], "int32")
    h = to_numpy(layer(ids))
    assert h.shape == (1, 3, 8)
    assert np.abs(h[0, 0] - h[0, 1]).max() > 1e-4  # same token, different positions
    # start_index shifts positions: position 2 of a 3-token call == position 0 of a call at 2.
    np.testing.assert_allclose(to_numpy(layer(ids[:, :1], start_index=2))[0, 0], h[0, 2], atol=1e-6)
    logits = to_numpy(layer.project(h))
    table = to_numpy(layer.token_embeddings)
    np.testing.assert_allclose(logits, h @ table.T, atol=1e-5)


def test_sinusoidal_embedding_has_no_position_weights():
    layer = TokenAndPositionEmbedding(20, 10, 8, position_embedding="sinusoidal", seed=0)
    layer.build()
    assert [w.name for w in layer.weights] == ["token_embeddings"]


def test_embedding_rejects_odd_sinusoidal_width():
    with pytest.raises(ValueError, match="even"):
        TokenAndPositionEmbedding(20, 10, 7, position_embedding="sinusoidal")


MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], "int32")


@pytest.mark.parametrize("implementation", ["plain", "fused"])
def test_attention_layer(implementation):
    run_layer_test(
        CausalSelfAttention,
        dict(
            num_heads=2, hidden_dim=8, dropout=0.1, attention_implementation=implementation, seed=1
        ),
        hidden(),
        expected_output_shape=(2, 6, 8),
        call_kwargs={"padding_mask": MASK},
        expected_trainable_weights=4,  # qkv and output: kernel and bias each
    )


@pytest.mark.parametrize("use_bias", [True, False])
def test_transformer_block_layer(use_bias):
    run_layer_test(
        TransformerBlock,
        dict(
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=12,
            activation="relu",
            dropout=0.1,
            use_bias=use_bias,
            seed=1,
        ),
        hidden(),
        expected_output_shape=(2, 6, 8),
        call_kwargs={"padding_mask": MASK},
        # two LayerNorms (scale, offset) and four Dense layers (kernel, bias)
        expected_trainable_weights=12 if use_bias else 6,
    )


@pytest.mark.parametrize("position_embedding", ["learned", "sinusoidal"])
def test_embedding_layer(position_embedding):
    ids = np.random.default_rng(1).integers(0, 20, (2, 6)).astype("int32")
    run_layer_test(
        TokenAndPositionEmbedding,
        dict(
            vocabulary_size=20,
            max_sequence_length=10,
            hidden_dim=8,
            position_embedding=position_embedding,
            seed=1,
        ),
        ids,
        expected_output_shape=(2, 6, 8),
        expected_trainable_weights=2 if position_embedding == "learned" else 1,
    )


def test_portable_dropout_layer():
    run_layer_test(
        PortableDropout,
        dict(rate=0.2, seed=1),
        hidden(),
        expected_output_shape=(2, 6, 8),
        expected_trainable_weights=0,
        expected_non_trainable_weights=1,  # the call counter
        run_training_step=False,
    )


def test_hash_is_uniform_and_collision_free():
    values = to_numpy(
        hash_ints((1000, 100), seed=3, counter=keras.ops.convert_to_tensor(0, "int32"))
    )
    assert values.min() >= 0 and values.max() < HASH_RANGE
    assert len(np.unique(values)) == values.size  # each round is a bijection
    u = values.ravel() / HASH_RANGE
    hist, _ = np.histogram(u, bins=10, range=(0, 1))
    assert np.abs(hist / u.size - 0.1).max() < 0.005
    # Neighbouring elements are uncorrelated.
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02


def test_hash_offset_places_a_slice_in_the_whole_batch():
    # A data-parallel replica hashes its rows of the global batch with an offset
    # of the elements before them, and so draws one device's mask for those rows.
    counter = keras.ops.convert_to_tensor(5, "int32")
    whole = to_numpy(hash_ints((4, 3, 5), seed=7, counter=counter))
    first = to_numpy(hash_ints((2, 3, 5), seed=7, counter=counter))
    second = to_numpy(hash_ints((2, 3, 5), seed=7, counter=counter, offset=30))
    second_tensor_offset = to_numpy(
        hash_ints(
            (2, 3, 5), seed=7, counter=counter, offset=keras.ops.convert_to_tensor(30, "int32")
        )
    )
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    np.testing.assert_array_equal(second_tensor_offset, second)
    assert (first != second).any()


def test_portable_dropout_rate_scale_and_fresh_masks():
    layer = PortableDropout(0.25, seed=0)
    x = np.ones((64, 64), "float32")
    first = to_numpy(layer(x, training=True))
    second = to_numpy(layer(x, training=True))
    assert abs((first == 0).mean() - 0.25) < 0.02
    np.testing.assert_allclose(first[first != 0], 1 / 0.75, rtol=1e-6)
    assert (first != second).any()
    assert int(to_numpy(layer.counter)) == 2
    np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)


def test_portable_dropout_repeats_for_a_seed():
    x = np.ones((16, 16), "float32")
    a = to_numpy(PortableDropout(0.5, seed=9)(x, training=True))
    b = to_numpy(PortableDropout(0.5, seed=9)(x, training=True))
    c = to_numpy(PortableDropout(0.5, seed=10)(x, training=True))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_portable_dropout_rejects_bad_rate():
    with pytest.raises(ValueError, match="rate"):
        PortableDropout(1.0)


class _Parent(keras.layers.Layer):
    """Calls one sublayer, through `call_sublayer` or through Keras' `__call__`."""

    def __init__(self, sublayer, direct, **kwargs):
        super().__init__(**kwargs)
        self.sublayer, self.direct = sublayer, direct

    def call(self, x):
        return call_sublayer(self.sublayer, x) if self.direct else self.sublayer(x)


def _random_layer_norm(dtype):
    norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype)
    norm.build((None, 8))
    norm.gamma.assign(RNG.standard_normal(8).astype("float32"))
    norm.beta.assign(RNG.standard_normal(8).astype("float32"))
    return norm


def _dense(mode, dtype="float32"):
    dense = Dense(8, dtype=dtype)
    dense.build((None, 8))
    dense.kernel.assign(RNG.standard_normal((8, 8)).astype("float32"))
    if mode == "int8":
        dense.quantize("int8")
    if mode == "lora":
        dense.enable_lora(2)
        dense.lora_kernel_b.assign(RNG.standard_normal((2, 8)).astype("float32"))
    return dense


@pytest.mark.parametrize(
    "make, policy",
    [
        (lambda: _random_layer_norm("float32"), "float32"),
        (lambda: _random_layer_norm("mixed_bfloat16"), "mixed_bfloat16"),
        # A mixed-precision layer in a float32 parent: its __call__ casts the input and
        # the kernel to bfloat16, which calling `call` straight would not.
        (lambda: _dense("float", "mixed_bfloat16"), "float32"),
        (lambda: _dense("float"), "float32"),
        (lambda: _dense("int8"), "float32"),  # Keras routes int8 layers' calls elsewhere
        (lambda: _dense("lora"), "float32"),
    ],
    ids=[
        "layer_norm",
        "layer_norm_mixed_bfloat16",
        "dense_mixed_bfloat16",
        "dense",
        "dense_int8",
        "dense_lora",
    ],
)
def test_call_sublayer_is_calling_the_layer(make, policy):
    # On PyTorch call_sublayer skips Keras' __call__ where that changes nothing; the
    # output must be the layer's own, bit for bit, in every case, skipped or not.
    sublayer = make()
    x = hidden(width=8)
    direct = to_numpy(_Parent(sublayer, direct=True, dtype=policy)(x))
    keras_call = to_numpy(_Parent(sublayer, direct=False, dtype=policy)(x))
    np.testing.assert_array_equal(direct, keras_call)
