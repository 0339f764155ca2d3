"""Generation on the current backend: samplers, KV-cache decoding, ragged prompts.

Exactness: greedy decoding with the cache is compared token for token with
argmax over a full forward pass (no cache). The two paths sum in different
orders (~1e-7 apart); the tiny seeded model's top-2 logit gaps at the checked
positions are far larger, so any mismatch is a real bug, not rounding.
"""

import gc
import os
import weakref

import keras
import numpy as np
import pytest
from conftest import to_numpy
from helpers import run_on_backends
from keras import ops

import keras_gpt
from keras_gpt import generation
from keras_gpt.generation import bucket_length, new_tokens
from keras_gpt.generation.samplers import GreedySampler, RandomSampler, Sampler, get_sampler

CONFIG = dict(
    vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, max_sequence_length=32, seed=0
)


@pytest.fixture(scope="module")
def model():
    return keras_gpt.GPT(**CONFIG)


def full_forward_argmax(model, ids):
    """Argmax of a full causal forward pass (no cache): the greedy choice after
    each prefix. A sequence is greedy iff each new token equals the choice
    after the tokens before it. (Causal: padding after a row's end does not
    change the choices before it, so one padded batch serves every row.)"""
    return to_numpy(model(np.asarray(ids, "int32"))).argmax(-1)


# -- samplers on hand-built logits ---------------------------------------------------


def draw(sampler, logits, n=4000, seed=0):
    """n samples from one row of logits (n rows in one call: fresh noise per row)."""
    batch = ops.convert_to_tensor(np.tile(np.asarray(logits, "float32"), (n, 1)))
    return to_numpy(sampler(batch, seed, 7))


LOGITS = np.log(np.array([0.05, 0.4, 0.1, 0.3, 0.15], "float32"))


def test_greedy_and_temperature_zero_pick_argmax():
    logits = ops.convert_to_tensor(np.array([[0.1, 2.0, 0.3], [5.0, -1.0, 4.9]], "float32"))
    np.testing.assert_array_equal(to_numpy(GreedySampler()(logits, 0, 0)), [1, 0])
    np.testing.assert_array_equal(to_numpy(RandomSampler(temperature=0)(logits, 3, 9)), [1, 0])


def test_temperature_sampling_matches_softmax():
    # 4000 draws: each frequency's standard error is <= 0.008; 0.03 is ~4 sigma.
    counts = np.bincount(draw(RandomSampler(), LOGITS), minlength=5) / 4000
    np.testing.assert_allclose(counts, np.exp(LOGITS), atol=0.03)
    sharp = np.bincount(draw(RandomSampler(temperature=0.5), LOGITS), minlength=5) / 4000
    expected = np.exp(2 * LOGITS) / np.exp(2 * LOGITS).sum()
    np.testing.assert_allclose(sharp, expected, atol=0.03)


def test_top_k_keeps_exactly_k():
    ids = draw(RandomSampler(top_k=2), LOGITS)
    assert set(ids) == {1, 3}
    # Within the kept set, probabilities are renormalised: 0.4 / 0.7.
    assert abs((ids == 1).mean() - 0.4 / 0.7) < 0.03


def test_top_p_keeps_smallest_set_reaching_p():
    # Sorted probs 0.4, 0.3, 0.15, 0.1, 0.05: mass 0.7 after two tokens.
    assert set(draw(RandomSampler(top_p=0.69), LOGITS)) == {1, 3}
    assert set(draw(RandomSampler(top_p=0.71), LOGITS)) == {1, 3, 4}
    assert set(draw(RandomSampler(top_p=0.1), LOGITS)) == {1}
    assert set(draw(RandomSampler(top_p=0.71, top_k=2), LOGITS)) == {1, 3}


def test_sampler_noise_depends_on_seed_and_position():
    sampler = RandomSampler()
    a = draw(sampler, LOGITS, n=64, seed=0)
    np.testing.assert_array_equal(a, draw(sampler, LOGITS, n=64, seed=0))
    assert (a != draw(sampler, LOGITS, n=64, seed=1)).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="top_k"), "needs `top_k`"),
        (dict(sampler="top_p"), "needs `top_p`"),
        (dict(sampler="beam"), "must be one of"),
        (dict(sampler="greedy", top_k=3), "greedy"),
        (dict(sampler="top_k", top_k=0), "positive integer"),
        (dict(sampler="top_p", top_p=1.5), r"\(0, 1\]"),
        (dict(sampler="temperature", temperature=-1.0), ">= 0"),
        (dict(sampler=GreedySampler(), top_k=3), "sampler object"),
    ],
)
def test_bad_sampler_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(**kwargs)


# -- generate ------------------------------------------------------------------------


def test_greedy_matches_full_forward_without_cache(model):
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]
    out, lengths = model.generate(prompts, max_new_tokens=10, return_lengths=True)
    assert out.shape == (3, 15) and out.dtype == np.int32
    choices = full_forward_argmax(model, out)
    for row, prompt, length, choice in zip(out, prompts, lengths, choices):
        assert length == len(prompt) + 10
        np.testing.assert_array_equal(row[: len(prompt)], prompt)
        np.testing.assert_array_equal(
            row[len(prompt) : length], choice[len(prompt) - 1 : length - 1]
        )
        assert (row[length:] == 0).all()


def test_ragged_list_equals_padded_array_with_mask_and_single_rows(model):
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    ragged = model.generate(prompts, max_new_tokens=6)
    right = np.array([[1, 2, 3, 4, 5], [7, 8, 0, 0, 0]])
    left = np.array([[1, 2, 3, 4, 5], [0, 0, 0, 7, 8]])
    mask_right = np.array([[1] * 5, [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(ragged, model.generate(right, 6, padding_mask=mask_right))
    np.testing.assert_array_equal(ragged, model.generate(left, 6, padding_mask=mask_right[:, ::-1]))
    for row, prompt in zip(ragged, prompts):
        alone = model.generate(np.array(prompt), 6)[0]
        np.testing.assert_array_equal(row[: len(alone)], alone)


def test_stop_tokens_per_row_and_new_tokens(model):
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    free = model.generate(prompts, max_new_tokens=8)
    stop = int(free[0, 5])  # row 0's third new token
    out, lengths = model.generate(
        prompts, 8, stop_token_ids=[stop], pad_token_id=49, return_lengths=True
    )
    first_stop = [
        int(np.flatnonzero(r[len(p) :] == stop)[0]) if (r[len(p) :] == stop).any() else None
        for r, p in zip(free, prompts)
    ]
    for r, (prompt, hit) in enumerate(zip(prompts, first_stop)):
        expected_length = len(prompt) + (8 if hit is None else hit + 1)
        assert lengths[r] == expected_length
        np.testing.assert_array_equal(out[r, :expected_length], free[r, :expected_length])
        assert (out[r, expected_length:] == 49).all()
    news = new_tokens(out, [len(p) for p in prompts], lengths)
    assert news[0][-1] == stop and len(news[0]) <= 3


def test_sampling_reproducible_per_seed(model):
    kwargs = dict(max_new_tokens=12, sampler="top_k", top_k=20, temperature=0.8)
    prompt = np.array([[3, 1, 4]])
    a = model.generate(prompt, seed=1, **kwargs)
    np.testing.assert_array_equal(a, model.generate(prompt, seed=1, **kwargs))
    assert (a != model.generate(prompt, seed=2, **kwargs)).any()
    top_p = model.generate(prompt, 12, sampler="top_p", top_p=0.9, seed=1)
    np.testing.assert_array_equal(
        top_p, model.generate(prompt, 12, sampler="top_p", top_p=0.9, seed=1)
    )


def test_streaming_callback_sees_every_new_token(model):
    prompts = [[1, 2, 3, 4], [5]]
    seen = [[], []]

    def callback(token_ids, is_new):
        assert token_ids.shape == is_new.shape == (2,)
        for r in np.flatnonzero(is_new):
            seen[r].append(int(token_ids[r]))

    kwargs = dict(max_new_tokens=7, sampler="top_k", top_k=5, seed=3)
    out, lengths = model.generate(prompts, callback=callback, return_lengths=True, **kwargs)
    np.testing.assert_array_equal(out, model.generate(prompts, **kwargs))
    for r, prompt in enumerate(prompts):
        assert seen[r] == list(out[r, len(prompt) : lengths[r]])


def test_custom_sampler_object(model):
    class Smallest(Sampler):
        def __call__(self, logits, seed, position):
            return ops.cast(ops.argmin(logits, axis=-1), "int32")

    out = model.generate([[1, 2, 3, 4, 5]], 10, sampler=Smallest())
    logits = to_numpy(model(out))
    np.testing.assert_array_equal(out[0, 5:], logits[0, 4:-1].argmin(-1))


def test_no_recompilation_within_a_bucket(model):
    fresh = keras_gpt.GPT(**CONFIG)
    fresh.generate([[1, 2, 3]], 4)
    compiled = len(generation.compiled_programs(fresh))
    assert compiled >= 1
    fresh.generate([[1, 2, 3, 4, 5]], 6)  # same batch, same buckets
    assert len(generation.compiled_programs(fresh)) == compiled
    fresh.generate([[1, 2, 3]] * 2, 4)  # a new batch size compiles once more
    assert len(generation.compiled_programs(fresh)) == 2 * compiled
    assert bucket_length(21, 1024) == 24 and bucket_length(3, 1024) == 16
    assert [bucket_length(n, 1024) for n in (129, 160, 161, 193, 225, 256)] == [
        160,
        160,
        192,
        224,
        256,
        256,
    ]
    assert bucket_length(900, 512) == 512
    assert bucket_length(21, 1024, per_doubling=1) == 32
    # The program cache must not keep the model (or its compiled programs) alive.
    ref = weakref.ref(fresh)
    del fresh
    gc.collect()
    assert ref() is None


def test_sees_weight_updates_after_compiling():
    a, b = keras_gpt.GPT(**CONFIG), keras_gpt.GPT(**{**CONFIG, "seed": 1})
    prompt = [[1, 2, 3]]
    expected = b.generate(prompt, 8)
    assert (a.generate(prompt, 8) != expected).any()
    a.set_weights(b.get_weights())
    np.testing.assert_array_equal(a.generate(prompt, 8), expected)


def test_recipe_call(model):
    out = model.generate(
        np.array([[1, 2, 3]]), max_new_tokens=5, sampler="top_k", top_k=20, temperature=0.8, seed=0
    )
    assert out.shape == (1, 8) and ((0 <= out) & (out < 50)).all()


@pytest.mark.parametrize(
    "prompt, kwargs, message",
    [
        ([], {}, "empty"),
        ([[1, 2], []], {}, "Prompt 1 is empty"),
        (np.zeros((1, 0), "int32"), {}, "Prompt 0 is empty"),
        ([[1, 2, 50]], {}, "token id 50"),
        ([[1, -1]], {}, "token id -1"),
        ([[1.5, 2.0]], {}, "integer"),
        ([[1] * 30], dict(max_new_tokens=3), "keep its last 29 tokens"),
        # max_new_tokens alone fills the context: no prompt length helps (was "keep its
        # last -8 tokens").
        ([[1] * 4], dict(max_new_tokens=40), "Ask for at most 28 new tokens"),
        ([[1]], dict(max_new_tokens=-1), "non-negative"),
        ([[1]], dict(stop_token_ids=[99]), "Stop token id 99"),
        ([[1]], dict(stop_token_ids=3), r"write \[3\]"),
        (np.ones((2, 3), "int32"), dict(padding_mask=np.ones((2, 4))), "does not match"),
    ],
)
def test_bad_input_raises(model, prompt, kwargs, message):
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.generate(prompt, **kwargs)


def test_zero_new_tokens_returns_prompt(model):
    out, lengths = model.generate([[1, 2, 3], [4]], 0, return_lengths=True)
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])


# -- the same tokens on every backend --------------------------------------------------

WORKER = os.path.join(os.path.dirname(__file__), "generation_worker.py")


@pytest.mark.cross_backend
def test_generation_identical_across_backends(tmp_path):
    """Greedy tokens must match exactly; sampled ones too, since the sampler noise
    is an integer hash (identical everywhere) and these logits have no near-ties."""
    results = run_on_backends(WORKER, tmp_path)
    reference = results["tensorflow"]
    for backend in ("jax", "torch"):
        for key in reference:
            np.testing.assert_array_equal(
                results[backend][key], reference[key], err_msg=f"{key} on {backend}"
            )


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow warning")
def test_programs_compiled_one_after_another_do_not_warn_of_retracing():
    # A server compiles a program per prompt bucket and sampler mode, each a
    # tf.function of its own from one line of compile_function; TensorFlow took
    # them for a retracing loop and warned during every warm-up.
    import logging

    from keras_gpt.backend.compile import compile_function

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        for scale in range(1, 8):
            program = compile_function(lambda x, s=scale: x * s, [])
            assert float(to_numpy(program(None, ops.ones(())))) == scale
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "retracing" in r.getMessage()]
