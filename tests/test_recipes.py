"""The `keras-gpt generate` and `keras-gpt export` commands, run through `keras_gpt.cli.main`
on a preset made here.

Pretraining and fine-tuning go through the same `keras_gpt.cli.main` in
test_pretraining.py and test_finetuning.py.

The `generate` tests are marked `backend_independent` (run once): they check the
command's plumbing (flags, streaming, the interactive loop, its errors); the greedy
and seeded decoding they reach are test_generation.py's, run on every backend.
"""

import builtins
import sys

import keras
import numpy as np
import pytest

import keras_gpt
from keras_gpt.cli import main
from keras_gpt.tokenizers import ByteTokenizer, CharTokenizer

CONTEXT = 16


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    tokenizer = CharTokenizer("abcdefgh \n")
    model = keras_gpt.GPT(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=CONTEXT,
        seed=3,
    )
    directory = str(tmp_path_factory.mktemp("preset"))
    model.save_to_preset(directory, tokenizer=tokenizer)
    return directory, model, tokenizer


def run_recipe(name, args, monkeypatch):
    """`keras-gpt NAME ARGS...`, in this process."""
    monkeypatch.setattr(sys, "argv", ["keras-gpt", name, *args])
    main()


def greedy_by_recomputation(model, ids, steps):
    """Greedy continuation by running the whole sequence each step (no cache, no generate)."""
    ids = list(ids)
    for _ in range(steps):
        # One input shape for every step (right-padded to the context; causal
        # attention keeps the padding out of earlier positions): JAX's eager
        # ops then compile once, not once per length (~15 s here).
        padded = np.zeros((1, CONTEXT), "int32")
        padded[0, : len(ids)] = ids
        logits = keras.ops.convert_to_numpy(model(padded))[0, len(ids) - 1]
        top2 = np.sort(logits)[-2:]
        # A near-tie could flip between the cached and the full computation (~1e-6 apart).
        assert top2[1] - top2[0] > 1e-4, "near-tie in the reference: pick another seed"
        ids.append(int(np.argmax(logits)))
    return ids


@pytest.mark.backend_independent
def test_generate_recipe_streams_the_greedy_continuation(preset, monkeypatch, capsys):
    directory, model, tokenizer = preset
    run_recipe(
        "generate",
        ["--preset", directory, "--prompt", "abc", "--temperature", "0", "--max-new-tokens", "6"],
        monkeypatch,
    )
    expected = greedy_by_recomputation(model, tokenizer.encode("abc"), 6)
    assert capsys.readouterr().out == tokenizer.decode(expected) + "\n"


# The streamed text is the package's own detokenizing, the same on every backend; what
# each backend generates is test_generation.py's (every pass).
@pytest.mark.backend_independent
def test_generate_streams_whole_utf8_characters(tmp_path, monkeypatch, capsys):
    """A byte-level model's tokens can hold part of a character: the streamed text
    must be the decoded row, never a U+FFFD per partial byte."""
    tokenizer = ByteTokenizer()
    model = keras_gpt.GPT(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=32,
        seed=11,
    )
    # Teach it "éé…": bytes C3 A9 repeated, so greedy decoding writes two-byte characters.
    row = np.array(tokenizer.encode("é" * 12), "int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    for _ in range(60):
        model.train_on_batch(row[None, :-1].repeat(4, 0), row[None, 1:].repeat(4, 0))
    model.save_to_preset(str(tmp_path), tokenizer=tokenizer)
    prompt = "é"
    ids = model.generate([tokenizer.encode(prompt)], 12)[0]
    generated = [int(i) for i in ids[len(tokenizer.encode(prompt)) :]]
    # The case this test is about: decoding token by token differs from the whole.
    assert "".join(tokenizer.decode([i]) for i in generated) != tokenizer.decode(generated)
    run_recipe(
        "generate",
        [
            "--preset",
            str(tmp_path),
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-new-tokens",
            "12",
        ],
        monkeypatch,
    )
    assert capsys.readouterr().out == tokenizer.decode(list(ids)) + "\n"


@pytest.mark.backend_independent
def test_generate_recipe_interactive_loop_answers_each_prompt(preset, monkeypatch, capsys):
    directory, model, tokenizer = preset
    prompts = iter(["ab", "hg f"])

    def fake_input(message):
        try:
            return next(prompts)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)
    run_recipe(
        "generate",
        ["--preset", directory, "--interactive", "--temperature", "0", "--max-new-tokens", "4"],
        monkeypatch,
    )
    out = capsys.readouterr().out
    for prompt in ("ab", "hg f"):
        expected = tokenizer.decode(greedy_by_recomputation(model, tokenizer.encode(prompt), 4))
        assert expected + "\n" in out


# The flags reaching the sampler; seeded sampling on each backend is
# test_generation.py's test_sampling_reproducible_per_seed (every pass).
@pytest.mark.backend_independent
def test_generate_recipe_samples_reproducibly_with_a_seed(preset, monkeypatch, capsys):
    directory, _, _ = preset
    args = [
        "--preset",
        directory,
        "--prompt",
        "a",
        "--top-k",
        "5",
        "--seed",
        "7",
        "--max-new-tokens",
        "8",
        "--num-samples",
        "2",
    ]
    run_recipe("generate", args, monkeypatch)
    first = capsys.readouterr().out
    run_recipe("generate", args, monkeypatch)
    assert capsys.readouterr().out == first
    samples = [s for s in first.split("-" * 40 + "\n") if s]
    assert len(samples) == 2 and all(len(s) == len("a") + 8 + 1 for s in samples)


@pytest.mark.backend_independent
def test_generate_recipe_rejects_a_prompt_longer_than_the_context(preset, monkeypatch):
    directory, _, _ = preset
    with pytest.raises(SystemExit, match=f"context is {CONTEXT}"):
        run_recipe("generate", ["--preset", directory, "--prompt", "a" * CONTEXT], monkeypatch)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="exports from every backend are tested in test_export.py; the "
    "recipe is the same command, run once",
)
def test_export_recipe_writes_a_servable_saved_model(preset, monkeypatch, tmp_path):
    import tensorflow as tf

    directory, model, _ = preset
    out = str(tmp_path / "served" / "1")
    run_recipe("export", [directory, out, "--max-new-tokens", "4"], monkeypatch)
    served = tf.saved_model.load(out)
    assert {"logits", "generate"} <= set(served.signatures)
    ids = np.array([[1, 2, 3, 4]], "int32")
    logits = served.signatures["logits"](
        token_ids=tf.constant(ids), padding_mask=tf.ones_like(ids)
    )["logits"]
    np.testing.assert_allclose(
        logits.numpy(), keras.ops.convert_to_numpy(model(ids)), rtol=0, atol=1e-4
    )
