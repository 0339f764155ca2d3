"""Instruction data: prompt/response pairs (or chat messages) → masked training batches.

The template is deliberately simple and documented; the loss covers only what
the model should learn to write (the response, or the assistant's turns), by
giving prompt positions a sample weight of 0:

    ### Instruction:
    {prompt}

    ### Response:
    {response}<|endoftext|>

Chat records (`{"messages": [{"role": ..., "content": ...}, ...]}`) render each
turn as `<|{role}|>\\n{content}\\n`, and only `assistant` turns are trained.
Examples are padded one per row, or packed several per row (`pack=True`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import keras
import numpy as np

# Defined once, in keras_gpt.tokenizers; importable from here too, where the templates are.
from keras_gpt.tokenizers.tokenizer import END_OF_TEXT  # noqa: F401

PROMPT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


def read_instructions(path: str | os.PathLike) -> list[dict]:
    """Reads a JSONL file of `{"prompt", "response"}` or `{"messages": [...]}` records."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{os.fspath(path)}:{number}: not JSON ({error.msg}).") from None
            segments(record, where=f"{os.fspath(path)}:{number}")  # validates
            records.append(record)
    if not records:
        raise ValueError(f"{os.fspath(path)} holds no instruction records.")
    return records


def is_instruction_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a JSONL file of instruction records (not text or `{"text"}` documents).

    Looks at the first non-empty line only: a JSON object with `prompt`,
    `response` or `messages` makes it one; `read_instructions` checks the rest.

    Args:
        path: a file, folder or glob pattern (only `.jsonl`/`.ndjson` files can be).

    Example:
    >>> is_instruction_file("train.jsonl"), is_instruction_file("corpus.txt")
    (True, False)
    """
    path = os.fspath(path)
    if not path.lower().endswith((".jsonl", ".ndjson")) or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(record, dict) and bool(
                    {"prompt", "response", "messages"} & set(record)
                )
    return False


def segments(record: dict, where: str = "record") -> list[tuple[str, bool]]:
    """The record as (text, trained) pieces in order."""
    if "messages" in record:
        pieces = []
        for message in record["messages"]:
            if not isinstance(message, dict) or {"role", "content"} - set(message):
                raise ValueError(f"{where}: each message needs 'role' and 'content'.")
            role = message["role"]
            pieces.append((f"<|{role}|>\n", False))
            pieces.append((f"{message['content']}\n", role == "assistant"))
        return pieces
    if isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        return [
            (PROMPT_TEMPLATE.format(prompt=record["prompt"]), False),
            (record["response"], True),
        ]
    raise ValueError(
        f"{where}: expected 'prompt' and 'response' strings or a 'messages' list, "
        f"got keys {sorted(record)}."
    )


def format_prompt(prompt: str) -> str:
    """The text a fine-tuned model is prompted with for `prompt` (generation side)."""
    return PROMPT_TEMPLATE.format(prompt=prompt)


def encode_example(tokenizer, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and per-token loss weights (1 on trained tokens) for one record.

    The tokenizer's `<|endoftext|>`, if it has one, ends the example and is
    trained, so the model learns to stop.
    """
    ids: list[int] = []
    trained: list[float] = []
    for text, learn in segments(record):
        piece = tokenizer.encode(text)
        ids += piece
        trained += [float(learn)] * len(piece)
    end = getattr(tokenizer, "end_of_text_id", None)
    if end is not None:
        ids.append(end)
        trained.append(1.0)
    return np.asarray(ids, "int32"), np.asarray(trained, "float32")


def pack_examples(
    encoded: Sequence[tuple[np.ndarray, np.ndarray]], row_tokens: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Joins consecutive encoded examples into rows of at most `row_tokens` tokens.

    Greedy and in order: an example starts a new row when it does not fit in
    the current one; an example longer than a row gets a row of its own (and
    is cut later, like a padded one). The first token of every example after
    the first in a row gets weight 0: it is predicted from the previous
    example's last token, which is no training signal.

    Args:
        encoded: `(ids, weights)` pairs from `encode_example`.
        row_tokens: tokens per row (the context length plus one, for the
            shifted labels).

    Example:
    >>> from keras_gpt.tokenizers import ByteTokenizer
    >>> tok = ByteTokenizer(special_tokens=["<|endoftext|>"])
    >>> records = [{"prompt": "say hi", "response": "hi"}] * 4   # 42 tokens each
    >>> rows = pack_examples([encode_example(tok, r) for r in records], 96)
    >>> [len(ids) for ids, weights in rows]                      # two a row
    [84, 84]
    """
    rows, ids, weights = [], [], []
    for example_ids, example_weights in encoded:
        if ids and sum(map(len, ids)) + len(example_ids) > row_tokens:
            rows.append((np.concatenate(ids), np.concatenate(weights)))
            ids, weights = [], []
        if ids:
            example_weights = example_weights.copy()
            example_weights[0] = 0.0
        ids.append(example_ids)
        weights.append(example_weights)
    if ids:
        rows.append((np.concatenate(ids), np.concatenate(weights)))
    return rows


class InstructionBatches(keras.utils.PyDataset):
    """Padded (or packed) batches of instruction examples with prompt tokens masked out of the loss.

    Each item is `({"token_ids", "padding_mask"}, labels, weights)`, all
    `(batch, sequence_length)`: labels are the next tokens, weights are 1 on
    response tokens and 0 on prompt and padding (passed to Keras as sample
    weights). Rows are right-padded to `sequence_length` (one compiled
    shape) and cut there if longer. Batch `i` of epoch `e` holds a permutation
    seeded by `(seed, e)`, so runs repeat and resume exactly.

    With `pack=True`, consecutive examples (in file order) share a row
    (`pack_examples`), once, before shuffling rows: fewer padded positions,
    so fewer steps per epoch. The loss weights stay exact (only response
    tokens count, never the jump from one example to the next), but
    attention does not: the model's public inputs have a padding mask and no
    segment mask, so a packed example also attends to the examples before it
    in its row, and its positions continue from theirs (as in most libraries'
    packing without a block-diagonal mask). Use `pack=False` (padding) when
    examples must be trained exactly as they are prompted.

    Args:
        examples: records (see `segments`).
        tokenizer: any keras_gpt tokenizer.
        sequence_length: model context length.
        batch_size: rows per batch.
        seed: shuffling seed; `None` keeps the file order.
        pack: several examples per row instead of one.
        **kwargs: `keras.utils.PyDataset` options.

    Example:
    >>> batches = InstructionBatches(read_instructions("train.jsonl"), tokenizer, 128, 8)
    >>> model.compile(optimizer="adamw")
    >>> history = model.fit(batches, epochs=3, verbose=0)
    """

    def __init__(
        self,
        examples: Sequence[dict],
        tokenizer,
        sequence_length: int,
        batch_size: int,
        seed: int | None = 0,
        pack: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.encoded = [encode_example(tokenizer, r) for r in examples]
        if pack:
            self.encoded = pack_examples(self.encoded, self.sequence_length + 1)
        self.batch_size = int(batch_size)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.encoded) // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The row order of `epoch`."""
        if self.seed is None:
            return np.arange(len(self.encoded))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.encoded))

    def batch(self, epoch: int, index: int):
        """Batch `index` of epoch `epoch` (a pure function: resuming can jump to it)."""
        chosen = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        length = self.sequence_length
        x = np.zeros((len(chosen), length), "int32")
        y = np.zeros((len(chosen), length), "int32")
        mask = np.zeros((len(chosen), length), "int32")
        weights = np.zeros((len(chosen), length), "float32")
        for row, k in enumerate(chosen):
            ids, trained = self.encoded[k]
            ids, trained = ids[: length + 1], trained[: length + 1]
            n = len(ids) - 1
            x[row, :n], y[row, :n], mask[row, :n] = ids[:-1], ids[1:], 1
            weights[row, :n] = trained[1:]
        return {"token_ids": x, "padding_mask": mask}, y, weights

    def __getitem__(self, index: int):
        return self.batch(self.epoch, index)

    def on_epoch_end(self):
        self.epoch += 1
