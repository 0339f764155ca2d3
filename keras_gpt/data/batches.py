"""Batches of random token windows, as nanoGPT's `get_batch` draws them."""

from __future__ import annotations

import keras
import numpy as np


class RandomWindows(keras.utils.PyDataset):
    """(inputs, next-token labels) from random windows of a 1-D token array.

    Batch `i` is drawn from a generator seeded by `(seed, i)`, so a run is
    reproducible and any batch can be recomputed without replaying earlier
    ones (which makes resuming exact).

    Args:
        tokens: 1-D integer array of token ids.
        sequence_length: window length (labels are shifted by one).
        batch_size: windows per batch.
        steps: batches per epoch.
        seed: seed for the window offsets.

    Example:
    >>> ds = RandomWindows(np.arange(1000), sequence_length=64, batch_size=8, steps=100)
    >>> x, y = ds[0]                         # (8, 64) each, y = x shifted by one
    """

    def __init__(self, tokens: np.ndarray, sequence_length: int, batch_size: int,
                 steps: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or len(tokens) <= sequence_length:
            raise ValueError(
                f"Need a 1-D token array longer than sequence_length={sequence_length}, "
                f"got shape {tokens.shape}."
            )
        self.tokens = tokens
        self.sequence_length = int(sequence_length)
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, int(index)])
        starts = rng.integers(0, len(self.tokens) - self.sequence_length, self.batch_size)
        rows = np.stack([self.tokens[s : s + self.sequence_length + 1] for s in starts])
        rows = rows.astype("int32")
        return rows[:, :-1], rows[:, 1:]
