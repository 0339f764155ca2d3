"""One long sequence of token ids, held in memory or memory-mapped from shards."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

#: The metadata file `prepare` writes last, after every shard is complete.
METADATA_FILENAME = "metadata.json"


class TokenStream:
    """A read-only 1-D token sequence made of consecutive arrays (shards).

    Windows may span two shards, so how a corpus was cut into shards never
    changes which tokens a window holds. Built from a `prepare` directory
    the shards are memory-mapped (nothing is read until used) and pickling
    sends only their paths, so `PyDataset` worker processes reopen them.

    Args:
        arrays: 1-D integer arrays, in order (a single array is fine).

    Example:
    >>> stream = TokenStream([np.arange(5), np.arange(5, 10)])
    >>> stream.read(3, 4)
    array([3, 4, 5, 6])
    >>> train = TokenStream.from_directory("data/tiny", "train")
    """

    def __init__(self, arrays: np.ndarray | Sequence[np.ndarray]):
        if isinstance(arrays, np.ndarray):
            arrays = [arrays]
        arrays = [np.asarray(a) for a in arrays]
        for a in arrays:
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
                raise ValueError(
                    f"Token arrays must be 1-D integer arrays, got {a.dtype} of shape {a.shape}."
                )
        self._set(arrays)
        self._files: list[tuple[str, str, int]] | None = None

    def _set(self, arrays: list[np.ndarray]) -> None:
        self.arrays = [a for a in arrays if len(a)]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, split: str = "train") -> TokenStream:
        """Memory-map the shards of one split of a `prepare` output directory.

        Args:
            directory: the `output_dir` given to `prepare`.
            split: `"train"` or `"val"`.
        """
        directory = pathlib.Path(directory)
        metadata = read_metadata(directory)
        if split not in metadata["splits"]:
            raise ValueError(f"split must be one of {sorted(metadata['splits'])}, got {split!r}.")
        files = [
            (str(directory / s["file"]), metadata["dtype"], int(s["tokens"]))
            for s in metadata["splits"][split]["shards"]
        ]
        stream = cls.__new__(cls)
        stream._files = files
        stream._set(_open(files))
        return stream

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def dtype(self) -> np.dtype:
        return self.arrays[0].dtype if self.arrays else np.dtype("int64")

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens `start … start + length - 1` as a new array.

        Args:
            start: first position.
            length: number of tokens.
        """
        if start < 0 or length < 0 or start + length > len(self):
            raise ValueError(
                f"Cannot read {length} tokens from position {start} of a {len(self)}-token stream."
            )
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        offset = start - int(self.offsets[shard]) if length else 0
        if length and offset + length <= len(self.arrays[shard]):
            return np.array(self.arrays[shard][offset : offset + length])
        parts, remaining = [], length
        while remaining > 0:
            part = self.arrays[shard][offset : offset + remaining]
            parts.append(part)
            remaining -= len(part)
            shard, offset = shard + 1, 0
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def __getstate__(self):
        if self._files is not None:
            return {"files": self._files}
        return {"arrays": self.arrays}

    def __setstate__(self, state):
        self._files = state.get("files")
        self._set(_open(self._files) if self._files is not None else state["arrays"])


def read_metadata(directory: str | os.PathLike) -> dict:
    """The metadata of a `prepare` output directory, after checking its shards.

    Args:
        directory: the `output_dir` given to `prepare`.
    """
    directory = pathlib.Path(directory)
    path = directory / METADATA_FILENAME
    if not path.is_file():
        raise ValueError(
            f"{str(directory)!r} has no {METADATA_FILENAME}: it was not prepared, or "
            "`prepare` was interrupted (run it again)."
        )
    metadata = json.loads(path.read_text(encoding="utf-8"))
    itemsize = np.dtype(metadata["dtype"]).itemsize
    for split in metadata["splits"].values():
        for shard in split["shards"]:
            file = directory / shard["file"]
            expected = int(shard["tokens"]) * itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise ValueError(
                    f"Shard {str(file)!r} is missing or not {expected} bytes long; "
                    "run `prepare` again."
                )
    return metadata


def _open(files: list[tuple[str, str, int]]) -> list[np.ndarray]:
    return [
        np.memmap(path, dtype=dtype, mode="r", shape=(tokens,)) if tokens else np.zeros(0, dtype)
        for path, dtype, tokens in files
    ]
