"""The evaluation tasks: perplexity, multiple choice and last word, over files.

Each task reads its data, turns it into scored rows (`scoring.Row`), scores
them in batches and returns a dict of JSON-ready figures. The definitions are
those of the tools the field reports with:

- perplexity: Hugging Face's sliding window with a stride (the transformers
  guide "Perplexity of fixed-length models");
- multiple choice and last word: lm-evaluation-harness' `loglikelihood`
  requests (its `acc`, `acc_norm`, and `lambada_openai`'s `perplexity`/`acc`).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np

from keras_gpt.data import input_files, read_documents
from keras_gpt.data.documents import JSONL_SUFFIXES
from keras_gpt.evaluation.scoring import Row, RowScore, score_rows
from keras_gpt.model import GPT
from keras_gpt.presets import load_tokenizer
from keras_gpt.tokenizers import BytePairTokenizer, ByteTokenizer, Tokenizer, bytes_to_unicode

TASKS = ("perplexity", "multiple_choice", "last_word")

Inputs = str | os.PathLike | Sequence[str | os.PathLike]


def _progress(total: int, progress: bool) -> keras.utils.Progbar | None:
    if not (progress and total):
        return None
    # Keras' live bar is ANSI codes and redraws: into a file or pipe, one final line.
    return keras.utils.Progbar(total, unit_name="row", verbose=1 if sys.stdout.isatty() else 2)


# -- log-likelihood requests (lm-evaluation-harness' definition) -------------


def encode_request(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list, list]:
    """Token ids of `(context, continuation)` as lm-evaluation-harness splits them.

    Spaces at the end of the context move to the continuation. The context is
    encoded alone, and the continuation's ids are those of the encoded pair
    after as many tokens as the context has: where a token merges across the
    boundary (`"ab" + "cd"` encoded `a|bc|d`), the model reads the context's
    own tokens and the boundary token's continuation part is not scored, as
    in the harness' `_encode_pair`. An empty context becomes the
    `<|endoftext|>` token when the tokenizer has one (the harness' prefix
    token), unless the continuation starts with that token, which is then
    the context.

    Args:
        tokenizer: the model's tokenizer.
        context: the conditioning text.
        continuation: the text whose log-likelihood is wanted.

    Returns:
        `(context_ids, continuation_ids)`.

    Example:
    >>> encode_request(ByteTokenizer(), "The cat ", "sat")
    ([84, 104, 101, 32, 99, 97, 116], [32, 115, 97, 116])
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    if not context:
        start = tokenizer.end_of_text_id
        if start is None:
            raise ValueError(
                "An empty context needs a start token, and the tokenizer has no <|endoftext|>."
            )
        ids = tokenizer.encode(continuation)
        return (ids[:1], ids[1:]) if ids[:1] == [start] else ([start], ids)
    context_ids = tokenizer.encode(context)
    return context_ids, tokenizer.encode(context + continuation)[len(context_ids) :]


def request_row(tokenizer: Tokenizer, context: str, continuation: str) -> Row:
    """The scored row of one `(context, continuation)` request (see `encode_request`).

    Args:
        tokenizer: the model's tokenizer.
        context: the conditioning text.
        continuation: the text whose log-likelihood is wanted; must have tokens.
    """
    context_ids, continuation_ids = encode_request(tokenizer, context, continuation)
    if not continuation_ids:
        raise ValueError(f"The continuation {continuation!r} has no tokens.")
    return Row(context_ids + continuation_ids, len(context_ids))


def loglikelihoods(
    model: keras.Model,
    tokenizer: Tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 8,
    groups: Sequence[int] | None = None,
    progress: bool = False,
) -> list[RowScore]:
    """log P(continuation | context) for each `(context, continuation)` pair.

    Args:
        model: a `keras_gpt.GPT` (or any model with the same call and
            `max_sequence_length`).
        tokenizer: its tokenizer.
        requests: `(context, continuation)` string pairs.
        batch_size: rows per forward pass.
        groups: optional group number per request; a group shares a batch.
        progress: show a progress bar.

    Returns:
        One `RowScore(loglikelihood, tokens, is_greedy)` per request, in order.

    Example:
    >>> loglikelihoods(model, tokenizer, [("The cat", " sat")])[0].tokens
    4
    """
    rows = [request_row(tokenizer, context, continuation) for context, continuation in requests]
    return score_rows(model, rows, batch_size, groups, _progress(len(rows), progress))


# -- reading task files --------------------------------------------------------


def _records(path: pathlib.Path) -> Iterator[tuple[int, Any]]:
    """`(line number, record)` for each non-blank line: a JSON object for
    JSONL files, the line's text otherwise."""
    is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{str(path)!r} line {number} is not UTF-8 ({error.reason})."
                ) from None
            if not line.strip():
                continue
            if not is_jsonl:
                yield number, line.rstrip("\r\n")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{str(path)!r} line {number} is not JSON: {error.msg}.") from None
            if not isinstance(record, dict):
                raise ValueError(f"{str(path)!r} line {number} is not a JSON object.")
            yield number, record


def _items(inputs: Inputs) -> Iterator[tuple[str, int, Any]]:
    """`(where, line, record)` over every file; an empty file is an error."""
    for path in input_files(inputs):
        found = False
        for number, record in _records(path):
            found = True
            yield str(path), number, record
        if not found:
            raise ValueError(f"{str(path)!r} is empty: it has no items.")


def _field(record: dict, name: str, kind: type, where: str, line: int) -> Any:
    if name not in record:
        raise ValueError(f"{where!r} line {line} has no field {name!r}.")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(
            f"{where!r} line {line}: {name!r} must be a {kind.__name__}, "
            f"got {type(value).__name__}."
        )
    return value


def _line_row(
    model: keras.Model, tokenizer: Tokenizer, context: str, continuation: str, where, line, what
) -> Row:
    """`request_row`, with errors naming the file and line; never truncated."""
    try:
        row = request_row(tokenizer, context, continuation)
    except ValueError as error:
        raise ValueError(f"{where!r} line {line}: {error}") from None
    # The last token is never fed to the model: it reads len(ids) - 1 tokens.
    if len(row.ids) - 1 > model.max_sequence_length:
        raise ValueError(
            f"{where!r} line {line}: {what} is {len(row.ids)} tokens; the model reads at most "
            f"{model.max_sequence_length} + 1 (its max_sequence_length)."
        )
    return row


# -- perplexity ----------------------------------------------------------------


def sliding_windows(num_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """`(begin, end, first_scored)` of each window over a sequence, as Hugging Face defines them.

    Windows start every `stride` tokens and hold up to `context` tokens; each
    scores the tokens after the previous window's end, so every token but the
    first is scored exactly once, with up to `context - stride` tokens of left
    context from its own window (more for tokens further in). Token 0 has no
    context and, as in the transformers guide, is never scored; neither is
    the first token of a window when `stride == context`.

    Args:
        num_tokens: length of the tokenized document.
        context: window length (at most the model's `max_sequence_length` + 1).
        stride: step between window starts, `1 <= stride <= context`.

    Returns:
        Window bounds `[begin, end)` and the first scored position in each.

    Example:
    >>> sliding_windows(10, context=6, stride=3)
    [(0, 6, 1), (3, 9, 6), (6, 10, 9)]
    """
    windows, previous_end = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + context, num_tokens)
        first = max(previous_end, begin + 1)
        if first < end:
            windows.append((begin, end, first))
        previous_end = end
        if end == num_tokens:
            break
    return windows


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """The number of UTF-8 bytes of text each token id stands for.

    A byte-level token counts its bytes, even when they are part of a
    character split across tokens (a byte-level BPE may cut `"é"` into two
    tokens of one byte each); a special token counts the bytes of its text,
    as the documents' text holds it. Other tokenizers' tokens are whole
    characters: the bytes of `decode([id])`. The lengths of a text's tokens
    sum to the text's UTF-8 bytes.

    Args:
        tokenizer: a `ByteTokenizer`, `BytePairTokenizer` or a tokenizer whose
            tokens decode to whole characters (`CharTokenizer`).

    Returns:
        An int64 array of `tokenizer.vocabulary_size` lengths.

    Example:
    >>> token_byte_lengths(ByteTokenizer())[[104, 195, 256]]
    array([ 1,  1, 13])
    """
    specials = {t: len(t.encode("utf-8")) for t in tokenizer.special_tokens}
    if isinstance(tokenizer, ByteTokenizer):
        extra = [specials[t] for t in tokenizer.special_tokens]
        return np.asarray([1] * 256 + extra, np.int64)
    if isinstance(tokenizer, BytePairTokenizer):
        byte_characters = set(bytes_to_unicode().values())
        lengths = np.zeros(tokenizer.vocabulary_size, np.int64)
        for token, i in tokenizer.vocabulary.items():
            if token in specials or not set(token) <= byte_characters:
                lengths[i] = len(token.encode("utf-8"))  # decoded as its text
            else:
                lengths[i] = len(token)  # one character per byte
        return lengths
    return np.asarray(
        [len(tokenizer.decode([i]).encode("utf-8")) for i in range(tokenizer.vocabulary_size)],
        np.int64,
    )


def perplexity(
    model: keras.Model,
    tokenizer: Tokenizer,
    data: Inputs,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    text_field: str = "text",
    progress: bool = False,
) -> dict[str, Any]:
    """Perplexity, mean loss and bits per byte of text files, folders or JSONL.

    Each document (a text file, or one JSONL record's `text_field`) is
    tokenized whole and scored with `sliding_windows`; windows of all
    documents are batched together, one forward pass each. Bits per byte are
    the total negative log-likelihood in bits over the documents' UTF-8
    bytes, so that models with different tokenizers compare.

    Args:
        model: a `keras_gpt.GPT`.
        tokenizer: its tokenizer.
        data: text files, folders, glob patterns or JSONL files.
        context: window length in tokens; default the model's
            `max_sequence_length` (as the transformers guide uses).
        stride: step between windows; default `context` (disjoint windows).
            A smaller stride gives each token more left context (a lower,
            fairer perplexity) for `context / stride` times the compute.
        batch_size: windows per forward pass.
        text_field: the JSONL field holding the text.
        progress: show a progress bar over windows.

    Returns:
        `perplexity`, `mean_loss` (nats per token), `bits_per_byte`,
        `tokens` (scored), `bytes` (of the scored tokens), `documents`,
        `windows`, `context`, `stride`.

    Example:
    >>> round(perplexity(model, tokenizer, "valid.txt", stride=512)["perplexity"])
    257
    """
    context = int(model.max_sequence_length) if context is None else int(context)
    stride = context if stride is None else int(stride)
    if not 2 <= context <= model.max_sequence_length + 1:
        raise ValueError(
            f"`context` must be in [2, {model.max_sequence_length + 1}] (the model's "
            f"max_sequence_length + 1), got {context}."
        )
    if not 1 <= stride <= context:
        raise ValueError(f"`stride` must be in [1, context={context}], got {stride}.")
    rows, num_bytes, documents = [], 0, 0
    lengths = token_byte_lengths(tokenizer)
    for path in input_files(data):
        found = False
        for text in read_documents(path, text_field=text_field):
            found = found or bool(text)
            if not text:
                continue
            documents += 1
            ids = tokenizer.encode(text)
            ends = np.concatenate([[0], np.cumsum(lengths[ids])])  # bytes before each token
            for begin, end, first in sliding_windows(len(ids), context, stride):
                rows.append(Row(ids[begin:end], first - begin))
                num_bytes += int(ends[end] - ends[first])
        if not found:
            raise ValueError(f"{str(path)!r} is empty: it has no text to score.")
    if not rows:
        raise ValueError("No document has two tokens or more: nothing to score.")
    scores = score_rows(model, rows, batch_size, progress=_progress(len(rows), progress))
    nll = -sum(s.loglikelihood for s in scores)
    tokens = sum(s.tokens for s in scores)
    return {
        "task": "perplexity",
        "perplexity": math.exp(nll / tokens),
        "mean_loss": nll / tokens,
        "bits_per_byte": nll / math.log(2) / num_bytes,
        "tokens": tokens,
        "bytes": num_bytes,
        "documents": documents,
        "windows": len(rows),
        "context": context,
        "stride": stride,
    }


# -- multiple choice -----------------------------------------------------------


def multiple_choice(
    model: keras.Model,
    tokenizer: Tokenizer,
    data: Inputs,
    batch_size: int = 8,
    delimiter: str = " ",
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy and length-normalised accuracy on HellaSwag-style JSONL.

    Each line holds `context` (a string), `endings` (a list of strings) and
    `label` (the index of the right ending). Every ending is scored as the
    continuation `delimiter + ending` of the context (lm-evaluation-harness'
    `target_delimiter`); an item's endings share a batch. `acc` counts items
    whose right ending has the highest log-likelihood; `acc_norm` divides
    each log-likelihood by the ending's length in characters first, as
    lm-evaluation-harness does (`len(choice)`; bytes for ASCII text).

    Args:
        model: a `keras_gpt.GPT`.
        tokenizer: its tokenizer.
        data: JSONL files (or folders of them).
        batch_size: rows (endings) per forward pass.
        delimiter: text between the context and each ending.
        progress: show a progress bar over endings.

    Returns:
        `acc`, `acc_norm` and `items`.

    Example:
    >>> multiple_choice(model, tokenizer, "hellaswag_val.jsonl")["items"]
    1
    """
    items, rows, groups, labels = [], [], [], []
    for where, line, record in _items(data):
        if not isinstance(record, dict):
            raise ValueError(f"{where!r} line {line}: multiple choice needs JSONL records.")
        context = _field(record, "context", str, where, line)
        endings = _field(record, "endings", list, where, line)
        label = _field(record, "label", int, where, line)
        if not endings or not all(isinstance(e, str) and e for e in endings):
            raise ValueError(f"{where!r} line {line}: 'endings' must be non-empty strings.")
        if not 0 <= label < len(endings):
            raise ValueError(
                f"{where!r} line {line}: label {label} is out of range for {len(endings)} endings."
            )
        for ending in endings:
            what = "context + ending"
            rows.append(_line_row(model, tokenizer, context, delimiter + ending, where, line, what))
            groups.append(len(items))
        items.append(endings)
        labels.append(label)
    scores = score_rows(model, rows, batch_size, groups, _progress(len(rows), progress))
    correct = correct_norm = 0
    start = 0
    for endings, label in zip(items, labels):
        lls = [s.loglikelihood for s in scores[start : start + len(endings)]]
        start += len(endings)
        normed = [ll / len(ending) for ll, ending in zip(lls, endings)]
        correct += int(max(range(len(lls)), key=lls.__getitem__) == label)
        correct_norm += int(max(range(len(normed)), key=normed.__getitem__) == label)
    return {
        "task": "multiple_choice",
        "acc": correct / len(items),
        "acc_norm": correct_norm / len(items),
        "items": len(items),
    }


# -- last word -----------------------------------------------------------------


def last_word(
    model: keras.Model,
    tokenizer: Tokenizer,
    data: Inputs,
    batch_size: int = 8,
    text_field: str = "text",
    progress: bool = False,
) -> dict[str, Any]:
    """LAMBADA-style last-word accuracy and perplexity.

    Each passage (a JSONL record's `text_field`, or one line of a text file)
    is split at its last space: the final word, with its leading space, is
    the continuation of the rest (lm-evaluation-harness' `lambada_openai`).
    `acc` counts passages whose whole final word greedy decoding reproduces
    (every one of its tokens is the argmax given the true ones before it);
    `perplexity` is `exp(-mean log P(word | passage))` over passages.

    Args:
        model: a `keras_gpt.GPT`.
        tokenizer: its tokenizer.
        data: text or JSONL files (or folders of them).
        batch_size: passages per forward pass.
        text_field: the JSONL field holding the passage.
        progress: show a progress bar over passages.

    Returns:
        `acc`, `perplexity` and `items`.

    Example:
    >>> last_word(model, tokenizer, "lambada_test.jsonl")["items"]
    1
    """
    rows = []
    for where, line, record in _items(data):
        text = _field(record, text_field, str, where, line) if isinstance(record, dict) else record
        context, space, word = text.rstrip().rpartition(" ")
        if not space or not context or not word:
            raise ValueError(f"{where!r} line {line} has no final word after a space.")
        rows.append(_line_row(model, tokenizer, context, " " + word, where, line, "the passage"))
    scores = score_rows(model, rows, batch_size, progress=_progress(len(rows), progress))
    return {
        "task": "last_word",
        "acc": sum(s.is_greedy for s in scores) / len(scores),
        "perplexity": math.exp(-sum(s.loglikelihood for s in scores) / len(scores)),
        "items": len(scores),
    }


def evaluate(
    model: keras.Model,
    tokenizer: Tokenizer,
    data: Inputs,
    task: str = "perplexity",
    batch_size: int = 8,
    context: int | None = None,
    stride: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Runs one task by name (what `keras-gpt evaluate` calls).

    Args:
        model: a `keras_gpt.GPT`.
        tokenizer: its tokenizer.
        data: the task's files.
        task: `"perplexity"`, `"multiple_choice"` or `"last_word"`.
        batch_size: rows per forward pass.
        context: perplexity only: window length.
        stride: perplexity only: step between windows.
        progress: show a progress bar.

    Returns:
        The task's figures (see each task).

    Example:
    >>> sorted(evaluate(model, tokenizer, "valid.txt", task="perplexity", stride=512))
    ['bits_per_byte', 'bytes', 'context', 'documents', 'mean_loss', 'perplexity', 'stride',
     'task', 'tokens', 'windows']
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {', '.join(TASKS)}.")
    if task != "perplexity" and (context is not None or stride is not None):
        raise ValueError(f"`context` and `stride` apply to perplexity only, not {task!r}.")
    if task == "perplexity":
        return perplexity(model, tokenizer, data, context, stride, batch_size, progress=progress)
    if task == "multiple_choice":
        return multiple_choice(model, tokenizer, data, batch_size, progress=progress)
    return last_word(model, tokenizer, data, batch_size, progress=progress)


def evaluate_preset(handle: str, data: Inputs, **options: Any) -> dict[str, Any]:
    """Loads the model and tokenizer of preset `handle` and runs `evaluate` on `data`.

    What `keras-gpt evaluate` and a run's end-of-run evaluation
    (`keras_gpt.training.evaluate_run`) both do.

    Args:
        handle: a preset handle or directory (a run's `best/`).
        data: the task's files.
        **options: `evaluate`'s `task`, `batch_size`, `context`, `stride`, `progress`.

    Returns:
        The task's figures (see each task).

    Example:
    >>> evaluate_preset("my_preset", "corpus.txt", context=16)["task"]
    'perplexity'
    """
    return evaluate(GPT.from_preset(handle), load_tokenizer(handle), data, **options)
