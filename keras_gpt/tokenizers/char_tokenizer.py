"""A character-level tokenizer whose vocabulary is the characters of a corpus."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from keras_gpt.tokenizers.tokenizer import (
    Tokenizer,
    _as_id_list,
    _special_pattern,
    _split_special,
)


class CharTokenizer(Tokenizer):
    """One id per character, as nanoGPT's `shakespeare_char` does.

    Ids `0 … len(characters) - 1` are the characters in the given order;
    special tokens follow. A character outside the vocabulary is an error
    (there is no unknown token), so build the vocabulary from the whole
    corpus with `from_text`.

    Args:
        characters: the vocabulary, one entry per character (a string or a
            list of one-character strings), without repeats.
        special_tokens: strings given their own ids after the characters;
            they are recognised inside text by `encode`.

    Example:
    >>> tok = CharTokenizer.from_text("hello world")
    >>> tok.vocabulary_size, tok.encode("hello")
    (8, [3, 2, 4, 4, 5])
    >>> tok.decode([3, 2, 4, 4, 5])
    'hello'
    """

    def __init__(self, characters: str | Sequence[str], special_tokens: Sequence[str] = ()):
        characters = list(characters)
        if not characters:
            raise ValueError("characters must not be empty.")
        bad = [c for c in characters if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"characters must be single characters, got {bad[:5]!r}.")
        if len(set(characters)) != len(characters):
            raise ValueError("characters must not repeat.")
        if isinstance(special_tokens, str):
            raise ValueError(f"special_tokens must be a list of strings, got {special_tokens!r}.")
        if len(set(special_tokens)) != len(special_tokens) or "" in special_tokens:
            raise ValueError(
                f"special_tokens must be distinct non-empty strings, got {special_tokens!r}."
            )
        self.characters = characters
        self.special_tokens = list(special_tokens)
        self._pattern = _special_pattern(self.special_tokens)
        self._special_ids = {t: len(characters) + i for i, t in enumerate(self.special_tokens)}
        # Code points sorted for a vectorised lookup with searchsorted.
        points = np.array([ord(c) for c in characters], dtype=np.uint32)
        self._order = np.argsort(points)
        self._sorted_points = points[self._order]
        self._strings = characters + self.special_tokens

    @classmethod
    def from_text(
        cls, text: str | Iterable[str], special_tokens: Sequence[str] = ()
    ) -> CharTokenizer:
        """The tokenizer whose vocabulary is the sorted set of characters in `text`.

        Args:
            text: the corpus, as one string or an iterable of strings
                (e.g. `keras_gpt.data.read_documents(...)`).
            special_tokens: strings given their own ids after the characters.
        """
        seen: set[str] = set()
        for part in [text] if isinstance(text, str) else text:
            seen.update(part)
        return cls(sorted(seen), special_tokens)

    @property
    def vocabulary_size(self) -> int:
        return len(self.characters) + len(self.special_tokens)

    def token_to_id(self, token: str) -> int:
        """The id of a character or special token.

        Args:
            token: a vocabulary character or one of `special_tokens`.
        """
        if token in self._special_ids:
            return self._special_ids[token]
        if len(token) == 1:
            ids = self._encode_plain(token)
            return ids[0]
        raise ValueError(f"{token!r} is not in this tokenizer's vocabulary.")

    def get_config(self) -> dict:
        return {"characters": "".join(self.characters), "special_tokens": list(self.special_tokens)}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(_split_special(text, self._pattern)):
            if i % 2:
                ids.append(self._special_ids[part])
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        where = np.searchsorted(self._sorted_points, points)
        where = np.minimum(where, len(self._sorted_points) - 1)
        unknown = self._sorted_points[where] != points
        if unknown.any():
            position = int(np.argmax(unknown))
            raise ValueError(
                f"Character {text[position]!r} (U+{ord(text[position]):04X}) at position "
                f"{position} is not in this tokenizer's vocabulary."
            )
        return self._order[where].tolist()

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        strings = self._strings
        return "".join(strings[self._check_id(i)] for i in _as_id_list(ids))
