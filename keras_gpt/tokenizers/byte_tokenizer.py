"""A byte-level tokenizer: 256 byte ids plus special tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_gpt.tokenizers.tokenizer import (
    END_OF_TEXT,
    Tokenizer,
    _as_id_list,
    _special_pattern,
    _split_special,
)


class ByteTokenizer(Tokenizer):
    """Maps text to its UTF-8 bytes (ids 0-255); special tokens follow at 256+.

    Needs no training and no files, and round-trips any Unicode string.

    Args:
        special_tokens: strings given their own ids after the 256 bytes; they
            are recognised inside text by `encode`.

    Example:
    >>> tok = ByteTokenizer()
    >>> tok.encode("hé")
    [104, 195, 169]
    >>> tok.decode(tok.encode("hé<|endoftext|>"))
    'hé<|endoftext|>'
    """

    def __init__(self, special_tokens: Sequence[str] = (END_OF_TEXT,)):
        if isinstance(special_tokens, str):
            raise ValueError(f"special_tokens must be a list of strings, got {special_tokens!r}.")
        if len(set(special_tokens)) != len(special_tokens) or "" in special_tokens:
            raise ValueError(
                f"special_tokens must be distinct non-empty strings, got {special_tokens!r}."
            )
        self.special_tokens = list(special_tokens)
        self._special_ids = {t: 256 + i for i, t in enumerate(self.special_tokens)}
        self._pattern = _special_pattern(self.special_tokens)

    @property
    def vocabulary_size(self) -> int:
        return 256 + len(self.special_tokens)

    def token_to_id(self, token: str) -> int:
        """The id of a special token.

        Args:
            token: one of `special_tokens`.
        """
        if token not in self._special_ids:
            raise KeyError(f"{token!r} is not a special token of this tokenizer.")
        return self._special_ids[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(_split_special(text, self._pattern)):
            if i % 2:
                ids.append(self._special_ids[part])
            else:
                ids.extend(part.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        pieces, buffer = [], bytearray()
        for i in _as_id_list(ids):
            if 0 <= i < 256:
                buffer.append(i)
                continue
            self._check_id(i)
            pieces.append(buffer.decode("utf-8", errors="replace"))
            buffer = bytearray()
            pieces.append(self.special_tokens[i - 256])
        pieces.append(buffer.decode("utf-8", errors="replace"))
        return "".join(pieces)
