"""Evaluation: perplexity and bits per byte, multiple choice and last word.

Scores are computed as the field's tools compute them: perplexity with
Hugging Face's sliding window and stride, multiple-choice and last-word
log-likelihoods as lm-evaluation-harness requests them. Every task is a list
of token rows scored with one forward pass each, in batches
(`keras_gpt.evaluation.scoring`). `keras_gpt.evaluation.harness` adapts a
model to lm-evaluation-harness (the `lm_eval` extra).

Example:
>>> from keras_gpt.evaluation import perplexity
>>> model = GPT.from_preset("hf://openai-community/gpt2")
>>> perplexity(model, load_tokenizer("hf://openai-community/gpt2"), "valid.txt")
"""

from keras_gpt.evaluation.scoring import Row, RowScore, score_rows
from keras_gpt.evaluation.tasks import (
    TASKS,
    encode_request,
    evaluate,
    evaluate_preset,
    last_word,
    loglikelihoods,
    multiple_choice,
    perplexity,
    request_row,
    sliding_windows,
    token_byte_lengths,
)

__all__ = [
    "TASKS",
    "Row",
    "RowScore",
    "encode_request",
    "evaluate",
    "evaluate_preset",
    "last_word",
    "loglikelihoods",
    "multiple_choice",
    "perplexity",
    "request_row",
    "score_rows",
    "sliding_windows",
    "token_byte_lengths",
]
