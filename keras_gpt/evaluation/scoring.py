"""Scoring token rows: one forward pass per row, batched, compiled once per shape.

A row is a token sequence and the index of its first scored token: the model
reads `ids[:-1]` and each token `ids[i]`, `i >= first`, is scored with the
log-probability the model gave it after `ids[:i]` (teacher forcing). Every
task is rows: a perplexity window, a multiple-choice context + ending, a
passage + its final word.

Rows are right-padded to a bucketed length and a fixed batch size: the model
is causal, so padding after a row changes nothing before it, and nearby
lengths share one compiled program (`keras_gpt.backend.compile_function`).
The program returns per-token log-probabilities and whether each token was
the argmax, `(batch, length)` each, never the `(batch, length, vocabulary)`
logits; sums are taken in float64 on the host.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_gpt.backend import compile_function, weight_values

#: Shortest padded length: tiny rows share one compiled program.
MIN_BUCKET = 16

# Compiled scoring programs, per model and (batch, length).
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Row(NamedTuple):
    """Token ids and the index of the first scored token (at least 1)."""

    ids: Sequence[int]
    first: int


class RowScore(NamedTuple):
    """A row's summed log-probability, scored token count, and whether every
    scored token was the model's argmax (greedy decoding would produce it)."""

    loglikelihood: float
    tokens: int
    is_greedy: bool


def bucket_length(length: int, limit: int) -> int:
    """`length` rounded up to a power of two (at least `MIN_BUCKET`), capped at `limit`.

    Args:
        length: the longest input in a batch.
        limit: the model's `max_sequence_length`.
    """
    bucket = MIN_BUCKET
    while bucket < length:
        bucket *= 2
    return min(bucket, limit)


def _program(model: keras.Model, batch: int, length: int):
    programs = _PROGRAMS.setdefault(model, {})
    if (batch, length) not in programs:

        def score(inputs, targets):
            logits = ops.cast(model(inputs, training=False), "float32")
            # log p(target) = logit[target] - logsumexp(logits): no second
            # (batch, length, vocabulary) tensor for a full log-softmax.
            picked = ops.take_along_axis(logits, ops.expand_dims(targets, -1), axis=-1)[..., 0]
            logprobs = picked - ops.logsumexp(logits, axis=-1)
            greedy = ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), targets)
            return logprobs, greedy

        programs[(batch, length)] = compile_function(score, model.variables)
    return programs[(batch, length)]


def score_rows(
    model: keras.Model,
    rows: Sequence[Row],
    batch_size: int = 8,
    groups: Sequence[int] | None = None,
    progress: keras.utils.Progbar | None = None,
) -> list[RowScore]:
    """Scores each row with one forward pass; rows are batched longest first.

    Args:
        model: a causal LM whose `model(token_ids)` returns logits.
        rows: the rows; `len(ids) - 1` must not exceed `model.max_sequence_length`
            and `1 <= first < len(ids)`.
        batch_size: rows per forward pass. A group larger than this gets a
            batch of its own size.
        groups: optional group number per row: a group's rows (the endings of
            one multiple-choice item) always share a batch.
        progress: a `keras.utils.Progbar` counting rows, or `None`.

    Returns:
        One `RowScore` per row, in the order of `rows`.

    Example:
    >>> score_rows(model, [Row([5, 6, 7, 8], first=2)])   # log P(7, 8 | 5, 6)
    [RowScore(loglikelihood=-11..., tokens=2, is_greedy=False)]
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    limit = int(model.max_sequence_length)
    for i, row in enumerate(rows):
        if not 1 <= row.first < len(row.ids):
            raise ValueError(f"Row {i}: `first` must be in [1, {len(row.ids)}), got {row.first}.")
        if len(row.ids) - 1 > limit:
            raise ValueError(
                f"Row {i} has {len(row.ids)} tokens; the model reads at most {limit} + 1."
            )
    groups = list(range(len(rows))) if groups is None else list(groups)
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    # Longest first (as lm-evaluation-harness does): batches hold similar
    # lengths, so little padding, and the first batch shows the peak memory.
    ordered = sorted(members.values(), key=lambda m: -max(len(rows[i].ids) for i in m))
    batches, current = [], []
    for member in ordered:
        if current and len(current) + len(member) > batch_size:
            batches.append(current)
            current = []
        current = current + member
    if current:
        batches.append(current)

    results: list[RowScore | None] = [None] * len(rows)
    values = weight_values(model.variables)
    for batch in batches:
        size = max(batch_size, len(batch))
        length = bucket_length(max(len(rows[i].ids) - 1 for i in batch), limit)
        inputs = np.zeros((size, length), "int32")
        targets = np.zeros((size, length), "int32")
        for slot, index in enumerate(batch):
            ids = np.asarray(rows[index].ids, "int32")
            inputs[slot, : len(ids) - 1] = ids[:-1]
            targets[slot, : len(ids) - 1] = ids[1:]
        program = _program(model, size, length)
        logprobs, greedy = program(
            values, ops.convert_to_tensor(inputs), ops.convert_to_tensor(targets)
        )
        logprobs = np.asarray(ops.convert_to_numpy(logprobs), "float64")
        greedy = np.asarray(ops.convert_to_numpy(greedy), bool)
        for slot, index in enumerate(batch):
            row = rows[index]
            # Target j is token j + 1: the scored tokens are targets first - 1 ….
            scored = slice(row.first - 1, len(row.ids) - 1)
            results[index] = RowScore(
                float(logprobs[slot, scored].sum()),
                len(row.ids) - row.first,
                bool(greedy[slot, scored].all()),
            )
        if progress is not None:
            progress.add(len(batch))
    return results  # type: ignore[return-value]
