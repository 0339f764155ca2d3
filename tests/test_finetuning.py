"""Instruction data with prompt masking, and the fine-tuning recipe."""

import json
import math

import numpy as np
import pytest
from conftest import to_numpy

from keras_gpt import GPT
from keras_gpt.data import InstructionBatches, encode_example, format_prompt, read_instructions
from keras_gpt.finetuning import FinetuneConfig, finetune
from keras_gpt.presets import load_tokenizer
from keras_gpt.tokenizers import CharTokenizer

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
    record = {"messages": [{"role": "user", "content": "abc"},
                           {"role": "assistant", "content": "cba"}]}
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
    records = [{"prompt": "reverse: ab", "response": "ba"},
               {"prompt": "reverse: abcde", "response": "edcba"}]
    x, y, w = InstructionBatches(records, tok, 64, 2, seed=None)[0]
    model = GPT(vocabulary_size=tok.vocabulary_size, num_layers=1, num_heads=2, hidden_dim=16,
                max_sequence_length=64, seed=0)
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
    answers = [tokenizer.decode(row[len(p):len(p) + 3]) for row, p in zip(out, prompts)]
    return np.mean([a == r["response"] for a, r in zip(answers, records)])


@pytest.mark.parametrize("lora_rank", [0, 8])
def test_finetuning_learns_to_reverse(tmp_path, lora_rank):
    tok = char_tokenizer()
    base = GPT(vocabulary_size=tok.vocabulary_size, num_layers=2, num_heads=2, hidden_dim=64,
               max_sequence_length=64, seed=0)
    base.save_to_preset(str(tmp_path / "base"), tokenizer=tok)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in reverse_records(400, 0)))
    test = reverse_records(40, 1)
    assert accuracy(base, tok, test) < 0.1

    summary = finetune(FinetuneConfig(
        preset=str(tmp_path / "base"), data=str(data), out=str(tmp_path / "run"),
        lora_rank=lora_rank, batch_size=16, max_steps=300, eval_interval=100,
        learning_rate=3e-3 if lora_rank == 0 else 1e-2, warmup_steps=20, verbose=0))
    tuned = GPT.from_preset(str(tmp_path / "run" / "best"))
    assert accuracy(tuned, load_tokenizer(str(tmp_path / "run" / "best")), test) >= 0.8
    assert math.isfinite(summary["best_val_loss"])
    if lora_rank:
        assert summary["trainable_parameters"] < 0.25 * base.count_params()
        assert (tmp_path / "run" / "best" / "adapters.npz").exists()
