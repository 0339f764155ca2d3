"""A byte-level tokenizer: 256 byte ids plus special tokens."""

from __future__ import annotations

from collections.abc import Sequence


class ByteTokenizer:
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

    def __init__(self, special_tokens: Sequence[str] = ("<|endoftext|>",)):
        self.special_tokens = list(special_tokens)
        self._special_ids = {t: 256 + i for i, t in enumerate(self.special_tokens)}

    @property
    def vocabulary_size(self) -> int:
        return 256 + len(self.special_tokens)

    def token_to_id(self, token: str) -> int:
        """The id of a special token."""
        if token not in self._special_ids:
            raise KeyError(f"{token!r} is not a special token of this tokenizer.")
        return self._special_ids[token]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        rest = text
        while rest:
            hits = [(rest.find(t), t) for t in self.special_tokens if t in rest]
            if not hits:
                ids.extend(rest.encode("utf-8"))
                break
            index, token = min(hits)
            ids.extend(rest[:index].encode("utf-8"))
            ids.append(self._special_ids[token])
            rest = rest[index + len(token):]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        pieces, buffer = [], bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                buffer.append(i)
                continue
            if i >= self.vocabulary_size:
                raise ValueError(f"Token id {i} is outside [0, {self.vocabulary_size}).")
            pieces.append(buffer.decode("utf-8", errors="replace"))
            buffer = bytearray()
            pieces.append(self.special_tokens[i - 256])
        pieces.append(buffer.decode("utf-8", errors="replace"))
        return "".join(pieces)
