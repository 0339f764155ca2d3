"""Seeds are independent: the counter hash keys on the seed, not on seed + counter.

`hash_ints` once added the seed to the counter (the dropout call count, or the
sampled position), so seed s + 1 drew exactly the noise of seed s one step
later: `generate(seed=s + 1)` was `generate(seed=s)` shifted by a token, and
dropout's seed s + 1 repeated seed s's masks one call later. These tests
compare seeds at shifted positions and calls and expect the agreement of
independent draws.
"""

import numpy as np
import pytest
from conftest import to_numpy

from keras_gpt.model import GPT
from keras_gpt.model.layers import PortableDropout

SHIFTS = range(-4, 5)

# An untrained model with default initialisation has near-uniform next-token
# probabilities, so a sample is decided by the sampler noise: exactly the case
# where a noise shared between seeds shows up as shared tokens.
CONFIG = dict(
    vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=64, seed=0
)
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def model():
    return GPT(**CONFIG)


def agreement(a: np.ndarray, b: np.ndarray, shift: int) -> float:
    """Fraction of positions t where a[t] == b[t + shift] (over the overlap)."""
    if shift >= 0:
        a, b = a[: len(a) - shift], b[shift:]
    else:
        a, b = a[-shift:], b[: len(b) + shift]
    return float((a == b).mean())


def test_samples_of_different_seeds_are_not_shifted_copies(model):
    samples = [
        model.generate([[1, 2, 3]], NEW_TOKENS, sampler="temperature", seed=seed)[0, 3:]
        for seed in range(8)
    ]
    # Two independent samples from near-uniform probabilities over 64 tokens
    # agree on ~1/64 of positions (plus a little for the model's preferences);
    # a shifted copy agrees on nearly all. 0.25 (12 of 44-48 tokens) separates
    # the two with a wide margin on both sides.
    for i in range(8):
        for j in range(i + 1, 8):
            for shift in SHIFTS:
                share = agreement(samples[i], samples[j], shift)
                assert share < 0.25, f"seeds {i} and {j} at shift {shift}: {share:.2f} agree"


def dropout_masks(seed: int, rate: float, calls: int, size: int) -> np.ndarray:
    """The masks (True = kept) of a layer's first `calls` calls, `(calls, size)`."""
    layer = PortableDropout(rate, seed=seed)
    x = np.ones((size,), "float32")
    return np.stack([to_numpy(layer(x, training=True)) != 0 for _ in range(calls)])


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_masks_of_neighbouring_seeds_are_independent(rate):
    size, calls = 4096, 9
    expected = rate**2 + (1 - rate) ** 2  # two independent masks agree there
    # Binomial standard error of a 4096-element agreement is at most 0.008;
    # 0.04 is 5 of them, and a shared mask (agreement 1) is far outside.
    tolerance = 0.04
    for seed in (0, 1, 41):
        a = dropout_masks(seed, rate, calls, size)
        b = dropout_masks(seed + 1, rate, calls, size)
        # Shifts in the call counter (seed + 1 once repeated seed's next call)...
        for shift in SHIFTS:
            for call in range(max(0, -shift), min(calls, calls - shift)):
                share = float((b[call] == a[call + shift]).mean())
                assert abs(share - expected) < tolerance, (seed, shift, call, share)
        # ... and in the element index.
        for shift in SHIFTS:
            share = agreement(a[0], b[0], shift)
            assert abs(share - expected) < tolerance, (seed, "index", shift, share)


# -- several samples per prompt --------------------------------------------------------


def test_num_samples_rows_in_prompt_order_with_independent_noise(model):
    prompts = [[1, 2, 3], [4, 5]]
    kwargs = dict(max_new_tokens=NEW_TOKENS, sampler="temperature", seed=3)
    out, lengths = model.generate(prompts, num_samples=3, return_lengths=True, **kwargs)
    assert out.shape == (6, 3 + NEW_TOKENS)
    np.testing.assert_array_equal(lengths, [3 + NEW_TOKENS] * 3 + [2 + NEW_TOKENS] * 3)
    for row in range(3):
        np.testing.assert_array_equal(out[row, :3], [1, 2, 3])
        np.testing.assert_array_equal(out[3 + row, :2], [4, 5])
    # The same as passing each prompt three times, and reproducible for a seed.
    repeated = [prompts[0]] * 3 + [prompts[1]] * 3
    np.testing.assert_array_equal(model.generate(repeated, **kwargs), out)
    # Samples of one prompt are neither equal nor shifted copies (bound as above).
    for first, start in ((0, 3), (3, 2)):
        rows = [out[first + k, start : start + NEW_TOKENS - 1] for k in range(3)]
        for i in range(3):
            for j in range(i + 1, 3):
                for shift in SHIFTS:
                    assert agreement(rows[i], rows[j], shift) < 0.25, (first, i, j, shift)


def test_num_samples_greedy_repeats_and_bad_values(model):
    out = model.generate([[1, 2, 3]], 6, num_samples=2)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[:1], model.generate([[1, 2, 3]], 6))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            model.generate([[1, 2, 3]], 6, num_samples=bad)


# How the command prints the rows; the rows on each backend are
# test_num_samples_rows_in_prompt_order_with_independent_noise's (every pass).
@pytest.mark.backend_independent
def test_cli_num_samples_prints_the_batched_samples(model, tmp_path, capsys):
    from keras_gpt.cli import main
    from keras_gpt.tokenizers import ByteTokenizer

    tokenizer = ByteTokenizer()
    byte_model = GPT(**{**CONFIG, "vocabulary_size": tokenizer.vocabulary_size})
    byte_model.save_to_preset(str(tmp_path), tokenizer=tokenizer)
    args = ["generate", "--preset", str(tmp_path), "--prompt", "ab", "--max-new-tokens", "24"]
    main([*args, "--temperature", "1", "--seed", "5", "--num-samples", "3"])
    samples = [s for s in capsys.readouterr().out.split("\n" + "-" * 40 + "\n") if s]
    prompt = tokenizer.encode("ab")
    expected = byte_model.generate(
        [prompt], 24, sampler="temperature", seed=5, num_samples=3, return_lengths=True
    )
    assert samples == [
        "ab" + tokenizer.decode(row[len(prompt) : length].tolist())
        for row, length in zip(*expected)
    ]
    assert len(set(samples)) == 3
