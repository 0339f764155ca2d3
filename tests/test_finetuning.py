"""Instruction data with prompt masking and packing, and the fine-tuning recipe on
instructions and plain text."""

import json
import math

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keras_gpt import GPT
from keras_gpt.cli import _overrides, main
from keras_gpt.data import (
    InstructionBatches,
    SequentialWindows,
    TokenStream,
    encode_example,
    format_prompt,
    read_instructions,
)
from keras_gpt.data.instructions import is_instruction_file
from keras_gpt.presets import load_tokenizer
from keras_gpt.tokenizers import CharTokenizer
from keras_gpt.training import read_metrics
from keras_gpt.training.finetune import FinetuneConfig, finetune

LETTERS = "abcde"
ALPHABET = LETTERS + "reverse: #InstructionRspn\n<|>aistnu"


def char_tokenizer():
    return CharTokenizer(sorted(set(ALPHABET)), special_tokens=["<|endoftext|>"])


def test_prompt_tokens_get_zero_weight():
    tok = char_tokenizer()
    ids, weights = encode_example(tok, {"prompt": "reverse: abc", "response": "cba"})
    prompt_len = len(tok.encode(format_prompt("reverse: abc")))
    assert weights[:prompt_len].sum() == 0
    assert weights[prompt_len:].tolist() == [1.0] * 4  # "cba" + end of text
    assert tok.decode(ids[prompt_len:]) == "cba<|endoftext|>"


def test_messages_train_only_assistant_turns():
    tok = char_tokenizer()
    record = {
        "messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "cba"}]
    }
    ids, weights = encode_example(tok, record)
    trained = "".join(tok.decode([i]) for i, w in zip(ids, weights) if w)
    assert trained == "cba\n<|endoftext|>"


def test_bad_records_are_rejected(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_instructions(path)


def test_masked_batch_loss_matches_hand_computation():
    tok = char_tokenizer()
    records = [
        {"prompt": "reverse: ab", "response": "ba"},
        {"prompt": "reverse: abcde", "response": "edcba"},
    ]
    x, y, w = InstructionBatches(records, tok, 64, 2, seed=None)[0]
    model = GPT(
        vocabulary_size=tok.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=64,
        seed=0,
    )
    logits = to_numpy(model(x)).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    expected = (nll * w).sum() / w.sum()  # response tokens only
    assert w.sum() == 3 + 6
    model.compile(optimizer="adamw")
    assert model.evaluate(x, y, sample_weight=w, verbose=0) == pytest.approx(expected, rel=1e-5)


def reverse_records(n, seed):
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list(LETTERS), 3)) for _ in range(n)]
    return [{"prompt": f"reverse: {w}", "response": w[::-1]} for w in words]


def accuracy(model, tokenizer, records):
    prompts = [tokenizer.encode(format_prompt(r["prompt"])) for r in records]
    out = model.generate(np.array(prompts), max_new_tokens=4, sampler="greedy")
    answers = [tokenizer.decode(row[len(p) : len(p) + 3]) for row, p in zip(out, prompts)]
    return np.mean([a == r["response"] for a, r in zip(answers, records)])


# Full fine-tuning learns the task in the PyTorch pass, LoRA in the JAX pass: each
# case is ~15-40 s of training a backend, the model trains identically across
# backends (test_cross_backend), and every pass fine-tunes elsewhere
# (test_continued_pretraining_on_plain_text_and_exact_resume, tests/test_lora.py).
REVERSE_CASE_BACKEND = {0: "torch", 8: "jax"}


@pytest.mark.parametrize("lora_rank", [0, 8])
def test_finetuning_learns_to_reverse(tmp_path, lora_rank):
    if keras.backend.backend() != REVERSE_CASE_BACKEND[lora_rank]:
        pytest.skip(f"this case runs in the {REVERSE_CASE_BACKEND[lora_rank]} pass")
    tok = char_tokenizer()
    base = GPT(
        vocabulary_size=tok.vocabulary_size,
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        max_sequence_length=64,
        seed=0,
    )
    base.save_to_preset(str(tmp_path / "base"), tokenizer=tok)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in reverse_records(400, 0)))
    test = reverse_records(40, 1)
    assert accuracy(base, tok, test) < 0.1

    summary = finetune(
        FinetuneConfig(
            preset=str(tmp_path / "base"),
            data=str(data),
            out=str(tmp_path / "run"),
            lora_rank=lora_rank,
            batch_size=16,
            max_steps=300,
            eval_interval=100,
            learning_rate=3e-3 if lora_rank == 0 else 1e-2,
            warmup_steps=20,
            verbose=0,
        )
    )
    tuned = GPT.from_preset(str(tmp_path / "run" / "best"))
    assert accuracy(tuned, load_tokenizer(str(tmp_path / "run" / "best")), test) >= 0.8
    assert math.isfinite(summary["best_val_loss"])
    # The template it learned is recorded, for `keras-gpt serve`'s chat completions.
    metadata = json.loads((tmp_path / "run" / "best" / "metadata.json").read_text())
    assert metadata["chat_template"] == "instruction"
    if lora_rank:
        assert summary["trainable_parameters"] < 0.25 * base.count_params()
        assert (tmp_path / "run" / "best" / "adapters.npz").exists()


def test_packed_rows_match_hand_computation():
    tok = char_tokenizer()
    records = [
        {"prompt": "reverse: ab", "response": "ba"},
        {"prompt": "reverse: abc", "response": "cba"},
        {"prompt": "reverse: abcde", "response": "edcba"},
    ]
    first, second, third = (encode_example(tok, r) for r in records)
    length = len(first[0]) + len(second[0]) + 3  # the first two fit in a row, the third does not
    batches = InstructionBatches(records, tok, length, 4, seed=None, pack=True)
    assert len(batches.encoded) == 2
    x, y, w = batches[0]
    # Row 0 is the two examples back to back, then padding.
    ids = np.concatenate([first[0], second[0]])
    n = len(ids) - 1
    np.testing.assert_array_equal(x["token_ids"][0, :n], ids[:-1])
    np.testing.assert_array_equal(y[0, :n], ids[1:])
    assert x["padding_mask"][0].tolist() == [1] * n + [0] * (length - n)
    # Weights: the responses (with their end of text) only, and never the label
    # that crosses from one example into the next.
    expected = np.zeros(length, "float32")
    expected[: len(first[0]) - 1] = first[1][1:]
    expected[len(first[0]) : n] = second[1][1:]
    np.testing.assert_array_equal(w[0], expected)
    trained = "".join(tok.decode([int(label)]) for label, weight in zip(y[0], w[0]) if weight)
    assert trained == "ba<|endoftext|>cba<|endoftext|>"
    assert w[0, len(first[0]) - 1] == 0  # the label is the second example's first token
    # Row 1 is the third example alone, exactly as without packing.
    unpacked = InstructionBatches(records[2:], tok, length, 1, seed=None)[0]
    np.testing.assert_array_equal(x["token_ids"][1], unpacked[0]["token_ids"][0])
    np.testing.assert_array_equal(w[1], unpacked[2][0])
    # The loss over the packed batch is the mean NLL of exactly those tokens.
    model = GPT(
        vocabulary_size=tok.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=length,
        seed=0,
    )
    logits = to_numpy(model(x)).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    model.compile(optimizer="adamw")
    assert model.evaluate(x, y, sample_weight=w, verbose=0) == pytest.approx(
        (nll * w).sum() / w.sum(), rel=1e-5
    )


def test_data_format_detection(tmp_path):
    (tmp_path / "chat.jsonl").write_text('\n{"messages": []}\n')
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (tmp_path / "docs.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "plain.txt").write_text('{"prompt": "a", "response": "b"}\n')
    assert is_instruction_file(tmp_path / "chat.jsonl")
    assert is_instruction_file(tmp_path / "pairs.jsonl")
    assert not is_instruction_file(tmp_path / "docs.jsonl")
    assert not is_instruction_file(tmp_path / "plain.txt")
    assert not is_instruction_file(tmp_path)
    with pytest.raises(ValueError, match="format must be one of .* got 'prose'"):
        finetune(FinetuneConfig(preset="x", data="y", format="prose"))
    # `keras-gpt finetune --format text --pack` sets both.
    config = FinetuneConfig.load(None, _overrides(["--format", "text", "--pack"]))
    assert (config.format, config.pack) == ("text", True)


TEXT = "".join(
    f"{'abcde'[i % 5]} is letter {i % 5}; the fox jumps over the dog.\n" for i in range(200)
)


def text_run(tmp_path, out, **overrides):
    """A tiny continued-pretraining run from a randomly initialised preset on TEXT."""
    if not (tmp_path / "base").exists():
        tok = CharTokenizer.from_text(TEXT, special_tokens=["<|endoftext|>"])
        base = GPT(
            vocabulary_size=tok.vocabulary_size,
            num_layers=1,
            num_heads=2,
            hidden_dim=32,
            max_sequence_length=32,
            dropout=0.1,
            seed=0,
        )
        base.save_to_preset(str(tmp_path / "base"), tokenizer=tok)
        (tmp_path / "corpus.txt").write_text(TEXT)
    config = FinetuneConfig(
        preset=str(tmp_path / "base"),
        data=str(tmp_path / "corpus.txt"),
        out=str(tmp_path / out),
        batch_size=8,
        max_steps=30,
        eval_interval=10,
        eval_batches=4,
        learning_rate=1e-2,
        warmup_steps=4,
        verbose=0,
    )
    return config.update(overrides)


# The text format and resume's bookkeeping: exact resume per backend is test_pretraining's.
@pytest.mark.backend_independent
def test_continued_pretraining_on_plain_text_and_exact_resume(tmp_path):
    config = text_run(tmp_path, "run")
    summary = finetune(config)
    assert summary["format"] == "text" and summary["steps"] == 30
    out = tmp_path / "run"
    # Validation windows of the text, tokenised with the preset's own tokenizer.
    validation = SequentialWindows(
        TokenStream.from_directory(out / "data" / "tokens", "val"), 32, 8, max_batches=4
    )
    base, tuned = GPT.from_preset(config.preset), GPT.from_preset(str(out / "best"))
    # Plain text teaches no chat template.
    assert "chat_template" not in json.loads((out / "best" / "metadata.json").read_text())
    for model in (base, tuned):
        model.compile(optimizer="adamw")
    before, after = (m.evaluate(validation, verbose=0) for m in (base, tuned))
    # A random char model starts near ln(vocabulary) ≈ 3.4; 30 steps on this
    # repetitive text take it well below.
    assert after < before - 0.5, (before, after)
    assert after == pytest.approx(summary["best_val_loss"], rel=1e-4)
    assert load_tokenizer(str(out / "best")).encode("fox") == load_tokenizer(config.preset).encode(
        "fox"
    )
    expected = read_metrics(out)
    assert [r["step"] for r in expected] == [10, 20, 30]

    # A run stopped after its first evaluation (and checkpoint), as a killed
    # one would be, then resumed: the same curve as the uninterrupted run.
    finetune(text_run(tmp_path, "killed", max_seconds=1e-9))
    assert len(read_metrics(tmp_path / "killed")) == 1
    resumed = finetune(text_run(tmp_path, "killed"), resume=True)
    rows = read_metrics(tmp_path / "killed")
    assert [r["step"] for r in rows] == [10, 20, 30]
    # Same batches, dropout counters and optimizer state: equal to float32 rounding.
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in expected], rtol=1e-5)
    assert resumed["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)


# The command's settings and outputs: LoRA training per backend is test_lora's.
@pytest.mark.backend_independent
def test_keras_gpt_finetune_command(tmp_path, capsys):
    """`keras-gpt finetune` as typed: settings from a TOML file and the command line
    (which wins), instruction data, LoRA; its outputs; a user mistake in one line."""
    tok = char_tokenizer()
    base = tmp_path / "base"
    GPT(
        vocabulary_size=tok.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        max_sequence_length=32,
        seed=0,
    ).save_to_preset(str(base), tokenizer=tok)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in reverse_records(40, 0)))
    settings = tmp_path / "finetune.toml"
    settings.write_text(f'preset = "{base}"\ndata = "{data}"\nmax_steps = 100\nverbose = 0\n')
    out = tmp_path / "run"
    main(
        ["finetune", "--config", str(settings), "--out", str(out), "--lora-rank", "2"]
        + "--max-steps 4 --eval-interval 2 --batch-size 4 --warmup-steps 1".split()
    )
    assert [row["step"] for row in read_metrics(out)] == [2, 4]
    config = FinetuneConfig.load(out / "config.toml")
    assert (config.preset, config.lora_rank, config.max_steps) == (str(base), 2, 4)
    assert (out / "best" / "adapters.npz").is_file()
    metadata = json.loads((out / "best" / "metadata.json").read_text())
    assert metadata["chat_template"] == "instruction"

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(
            ["finetune", "--preset", str(tmp_path / "missing"), "--data", str(data)]
            + ["--out", str(tmp_path / "failed")]
        )
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("keras-gpt: error: "), error
    assert "missing" in error[0]


def chat_records(n, seed):
    """`reverse_records` as chat turns (the `messages` format)."""
    return [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["response"]},
            ]
        }
        for r in reverse_records(n, seed)
    ]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.backend_independent
def test_finetune_settings_through_the_command_line(tmp_path, capsys):
    """`keras-gpt finetune` with chat data and its validation, early-stopping, evaluation
    and resume settings: each one changes what the run does. A learning rate of 0 keeps
    the model the base one, so the validation loss never improves."""
    tok = char_tokenizer()
    base = tmp_path / "base"
    model = GPT(
        vocabulary_size=tok.vocabulary_size, num_layers=1, num_heads=2, hidden_dim=16,
        max_sequence_length=48, seed=0,
    )  # fmt: skip
    model.save_to_preset(str(base), tokenizer=tok)
    data = write_jsonl(tmp_path / "chat.jsonl", chat_records(20, 0))
    held_out = chat_records(3, 1)
    validation = write_jsonl(tmp_path / "val.jsonl", held_out)
    choices = write_jsonl(
        tmp_path / "mc.jsonl", [{"context": "reverse: ab", "endings": ["ba", "ab"], "label": 0}]
    )
    common = ["--preset", str(base), "--data", str(data), "--batch-size", "4"]
    common += ["--eval-interval", "2", "--warmup-steps", "1", "--verbose", "0"]
    out = tmp_path / "run"
    main(
        ["finetune", *common, "--out", str(out), "--max-steps", "8", "--learning-rate", "0"]
        + ["--patience", "1", "--validation-data", str(validation)]
        + ["--evaluate-data", str(choices), "--evaluate-task", "multiple_choice"]
    )
    # patience 1: the second evaluation is no better than the first, and the run stops.
    assert [row["step"] for row in read_metrics(out) if "train_loss" in row] == [2, 4]
    # The validation loss is the held-out file's (all of it, padded rows as in training).
    model.compile(optimizer="adamw")
    expected = model.evaluate(InstructionBatches(held_out, tok, 48, 4, seed=None), verbose=0)
    assert expected > 0  # the rows hold whole examples: their response tokens are scored
    assert read_metrics(out)[0]["val_loss"] == pytest.approx(expected, rel=1e-5)
    # The chat template it trained on is recorded, for `keras-gpt serve --chat`.
    metadata = json.loads((out / "best" / "metadata.json").read_text())
    assert metadata["chat_template"] == "messages"
    # The final evaluation ran the task asked for, on the best model.
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["task"] == "multiple_choice" and evaluation["items"] == 1
    assert read_metrics(out, evaluations=True)[-1] == evaluation

    # --resume continues the run from its step-4 checkpoint instead of starting again
    # (patience 0 now: the run goes on to max_steps).
    first = read_metrics(out)
    main(["finetune", "--config", str(out / "config.toml"), "--max-steps", "6", "--resume"]
         + ["--patience", "0"])  # fmt: skip
    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [2, 4, 6] and rows[:2] == first

    # validation_fraction: without validation data, that share of the records is held out.
    capsys.readouterr()
    main(["finetune", *common, "--out", str(tmp_path / "split"), "--max-steps", "2"]
         + ["--validation-fraction", "0.25"])  # fmt: skip
    assert "15 train / 5 validation examples" in capsys.readouterr().out
