"""Batches of token windows: random ones to train (as nanoGPT's `get_batch`),
consecutive ones to evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_gpt.backend import tf_dataset
from keras_gpt.data.token_stream import TokenStream

Tokens = np.ndarray | Sequence[np.ndarray] | TokenStream


class _Windows(keras.utils.PyDataset):
    """What both window datasets share: a token stream, `len`, and `tf.data`."""

    def __init__(self, tokens: Tokens, sequence_length: int, batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.tokens = tokens if isinstance(tokens, TokenStream) else TokenStream(tokens)
        if int(sequence_length) < 1 or int(batch_size) < 1:
            raise ValueError(
                f"sequence_length and batch_size must be positive, got "
                f"{sequence_length} and {batch_size}."
            )
        if len(self.tokens) <= sequence_length:
            raise ValueError(
                f"Need more than sequence_length={sequence_length} tokens, got {len(self.tokens)}."
            )
        self.sequence_length = int(sequence_length)
        self.batch_size = int(batch_size)

    def _rows(self, starts: np.ndarray):
        rows = np.stack([self.tokens.read(int(s), self.sequence_length + 1) for s in starts])
        rows = rows.astype("int32")
        return rows[:, :-1], rows[:, 1:]

    def as_tf_dataset(self, parallel_calls: int | None = None):
        """The same batches as a `tf.data.Dataset` of `(x, y)` int32 pairs, prefetched.

        Needs TensorFlow (imported here only). Batch `i` of the dataset is
        `self[i]`, in order. tf.data's autotuning is off (see
        `keras_gpt.backend.tf_dataset`: with it, each `fit` ended seconds late).

        Args:
            parallel_calls: batches built at once (default 2).
        """
        return tf_dataset(self, parallel_calls)


class RandomWindows(_Windows):
    """(inputs, next-token labels) from random windows of a token sequence.

    Batch `i` is drawn from a NumPy generator seeded by `(seed, i)`, so a run
    is reproducible, identical on every backend, and any batch can be
    recomputed without replaying earlier ones (which makes resuming exact).
    Window starts are uniform over the whole sequence; a window may span two
    shards.

    Args:
        tokens: a 1-D integer array, a list of them (shards, read as one
            sequence), or a `TokenStream` (e.g. `TokenStream.from_directory`).
        sequence_length: window length (labels are shifted by one).
        batch_size: windows per batch.
        steps: batches per epoch.
        seed: seed for the window offsets.
        **kwargs: `keras.utils.PyDataset` options (`workers`, `use_multiprocessing`, ...).

    Example:
    >>> ds = RandomWindows(np.arange(1000), sequence_length=64, batch_size=8, steps=100)
    >>> x, y = ds[0]                         # (8, 64) each, y = x shifted by one
    >>> train = RandomWindows(TokenStream.from_directory("data/tiny"), 256, 8, steps=1000)
    """

    def __init__(
        self,
        tokens: Tokens,
        sequence_length: int,
        batch_size: int,
        steps: int,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(tokens, sequence_length, batch_size, **kwargs)
        self.steps = int(steps)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        if not 0 <= int(index) < self.steps:
            raise IndexError(f"Batch {index} is outside [0, {self.steps}).")
        rng = np.random.default_rng([self.seed, int(index)])
        starts = rng.integers(0, len(self.tokens) - self.sequence_length, self.batch_size)
        return self._rows(starts)


class SequentialWindows(_Windows):
    """Consecutive windows covering a token sequence once, in order: for evaluation.

    Window `k` holds tokens `k·L … k·L + L` (L = `sequence_length`), so
    every token after the first is a label exactly once and the result does
    not depend on a seed. The last batch may be smaller than `batch_size`.
    With `spread`, only that many of these windows are read, evenly spaced
    over the whole sequence: a quick estimate that, unlike the first few
    batches, does not score one stretch of the text only.

    Args:
        tokens: a 1-D integer array, a list of them, or a `TokenStream`.
        sequence_length: window length (labels are shifted by one).
        batch_size: windows per batch.
        max_batches: stop after this many batches (`None`: the whole sequence).
        spread: read this many windows, evenly spaced (`None`: all of them).
        **kwargs: `keras.utils.PyDataset` options.

    Example:
    >>> val = SequentialWindows(TokenStream.from_directory("data/tiny", "val"), 256, 8)
    >>> model.compile(optimizer="adamw")
    >>> loss = model.evaluate(val, verbose=0)
    >>> quick = SequentialWindows(val.tokens, 256, 8, spread=4)  # 4 of the windows
    """

    def __init__(
        self,
        tokens: Tokens,
        sequence_length: int,
        batch_size: int,
        max_batches: int | None = None,
        spread: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(tokens, sequence_length, batch_size, **kwargs)
        every = (len(self.tokens) - 1) // self.sequence_length
        if spread is not None and int(spread) < every:
            # Window k of `spread` is window ⌊k·every/spread⌋ of the whole sequence.
            self.starts = np.arange(int(spread)) * every // int(spread)
        else:
            self.starts = np.arange(every)
        self.windows = len(self.starts)
        batches = -(-self.windows // self.batch_size)
        self.batches = batches if max_batches is None else min(batches, int(max_batches))

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int):
        if not 0 <= int(index) < self.batches:
            raise IndexError(f"Batch {index} is outside [0, {self.batches}).")
        first = int(index) * self.batch_size
        windows = self.starts[first : min(first + self.batch_size, self.windows)]
        return self._rows(windows * self.sequence_length)
