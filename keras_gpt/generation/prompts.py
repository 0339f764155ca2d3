"""Prompt handling for `generate`: ragged rows, validation, stop ids, row lengths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops


def new_tokens(
    token_ids: np.ndarray, prompt_lengths: Sequence[int], lengths: Sequence[int]
) -> list[np.ndarray]:
    """Only the generated part of each row of `generate`'s output.

    Args:
        token_ids: `(batch, width)` output of `generate`.
        prompt_lengths: each row's prompt length.
        lengths: each row's total length (`generate(..., return_lengths=True)`).

    Returns:
        One 1-D int32 array per row (rows may differ in length).

    Example:
    >>> ids, lengths = model.generate([[1, 2, 3], [4]], 5, return_lengths=True)
    >>> [len(new) for new in new_tokens(ids, [3, 1], lengths)]   # no stop token: all 5
    [5, 5]
    """
    return [np.asarray(row[p:n]) for row, p, n in zip(token_ids, prompt_lengths, lengths)]


def prompt_rows(prompt_ids, padding_mask=None) -> list[np.ndarray]:
    """The prompts as a list of 1-D int arrays (one per row, ragged allowed).

    Args:
        prompt_ids: an int array `(batch, length)` or `(length,)`, or a list of rows.
        padding_mask: with an array: 1/True marks each row's real tokens.
    """
    if (
        isinstance(prompt_ids, (list, tuple))
        and prompt_ids
        and all(isinstance(row, (list, tuple, np.ndarray)) for row in prompt_ids)
    ):
        if padding_mask is not None:
            raise ValueError(
                "`padding_mask` is only for a padded array of prompts, "
                "not a list of rows (a list may be ragged already)."
            )
        rows = [np.asarray(row) for row in prompt_ids]
    else:
        array = np.asarray(
            ops.convert_to_numpy(prompt_ids)
            if not isinstance(prompt_ids, (list, tuple, np.ndarray))
            else prompt_ids
        )
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2:
            raise ValueError(
                f"`prompt_ids` must be (batch, length), (length,) or a list of rows; "
                f"got shape {array.shape}."
            )
        if padding_mask is None:
            rows = list(array)
        else:
            mask = np.asarray(ops.convert_to_numpy(padding_mask)).astype(bool)
            if mask.ndim == 1:
                mask = mask[None]
            if mask.shape != array.shape:
                raise ValueError(
                    f"`padding_mask` shape {mask.shape} does not match "
                    f"`prompt_ids` shape {array.shape}."
                )
            rows = [row[m] for row, m in zip(array, mask)]
    if not rows:
        raise ValueError("`prompt_ids` is empty: give at least one prompt.")
    for i, row in enumerate(rows):
        if row.ndim != 1:
            raise ValueError(f"Prompt {i} must be a flat list of ids, got shape {row.shape}.")
        if row.size == 0:
            raise ValueError(f"Prompt {i} is empty: every prompt needs at least one token.")
        if row.dtype.kind not in "iu":
            raise ValueError(f"Prompt {i} must hold integer ids, got dtype {row.dtype}.")
    return rows


def validate(model, prompts, max_new_tokens, pad_token_id) -> None:
    """Raises a ValueError naming the problem if the request does not fit `model`."""
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ValueError(
            f"`max_new_tokens` must be a non-negative integer, got {max_new_tokens!r}."
        )
    vocabulary = model.vocabulary_size
    for i, row in enumerate(prompts):
        bad = row[(row < 0) | (row >= vocabulary)]
        if bad.size:
            raise ValueError(
                f"Prompt {i} holds token id {int(bad[0])}, outside "
                f"[0, {vocabulary}) (the model's `vocabulary_size`)."
            )
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.max_sequence_length:
        room = model.max_sequence_length - max_new_tokens
        # Shortening the prompt helps only while max_new_tokens leaves room for one token.
        fix = (
            f"Shorten the prompt (e.g. keep its last {room} tokens) or ask for fewer tokens."
            if room > 0
            else f"Ask for at most {model.max_sequence_length - longest} new tokens."
        )
        raise ValueError(
            f"The longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) "
            f"= {longest + max_new_tokens} exceeds the model's max_sequence_length "
            f"({model.max_sequence_length}). {fix}"
        )
    if not 0 <= pad_token_id < 2**31:
        raise ValueError(f"`pad_token_id` must be a non-negative int32, got {pad_token_id!r}.")


def check_stop_ids(model, stop_token_ids) -> list[int]:
    """`stop_token_ids` as a list of ints, each checked to be in the vocabulary."""
    if stop_token_ids is None:
        return []
    if isinstance(stop_token_ids, (int, np.integer)):
        raise ValueError(
            f"`stop_token_ids` must be a list of ids, got the int "
            f"{stop_token_ids}; write [{stop_token_ids}]."
        )
    ids = [int(i) for i in stop_token_ids]
    for i in ids:
        if not 0 <= i < model.vocabulary_size:
            raise ValueError(f"Stop token id {i} is outside [0, {model.vocabulary_size}).")
    return ids


def padded_stop_ids(model, stop_token_ids) -> np.ndarray:
    """Stop ids padded with -1 (never sampled) to a power-of-two count."""
    ids = check_stop_ids(model, stop_token_ids)
    size = 1 << max(0, len(ids) - 1).bit_length()
    return np.array(ids + [-1] * (size - len(ids)), "int32")


def row_lengths(out, prompt_lengths, max_new_tokens, stops) -> np.ndarray:
    """Each row's length: through its first generated stop token, or prompt + max_new_tokens."""
    lengths = prompt_lengths + max_new_tokens
    stop_set = stops[stops >= 0]
    for r, start in enumerate(prompt_lengths):
        hits = np.flatnonzero(np.isin(out[r, start : start + max_new_tokens], stop_set))
        if hits.size:
            lengths[r] = start + hits[0] + 1
    return lengths.astype("int32")
