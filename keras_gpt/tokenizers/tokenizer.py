"""What every keras_gpt tokenizer offers, saving and loading, and safe text splitting."""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from keras_gpt.files import write_json_atomic

#: GPT-2's end-of-text token: it separates documents in pretraining, ends each fine-tuning
#: example, and stops generation. Its id is a tokenizer's `end_of_text_id`.
END_OF_TEXT = "<|endoftext|>"

#: The file `Tokenizer.save` writes and `Tokenizer.load` reads first.
# Not "tokenizer_config.json": Hugging Face checkpoints use that name for their own file.
CONFIG_FILENAME = "keras_gpt_tokenizer.json"

_REGISTRY: dict[str, type[Tokenizer]] = {}

# A cut before a single space or newline that sits between two non-space
# characters starts a new pre-token under GPT-2's split regex (and trivially
# under byte and character tokenizers), so the pieces on either side encode
# the same as the whole. Python's `\S` is narrower than Unicode's (it also
# treats U+001C-U+001F as space), which only makes it more careful.
_SAFE_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")


class Tokenizer:
    """The interface shared by all keras_gpt tokenizers.

    Subclasses implement `encode`, `decode`, `vocabulary_size`, `get_config`
    and, when they have vocabulary files, `save_assets`/`from_directory`.

    Example:
    >>> from keras_gpt.tokenizers import ByteTokenizer
    >>> tokenizer = ByteTokenizer()
    >>> tokenizer.save("my_tokenizer")
    >>> Tokenizer.load("my_tokenizer").encode("hi")
    [104, 105]
    """

    special_tokens: list[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    @property
    def vocabulary_size(self) -> int:
        """Number of token ids (ids are `0 … vocabulary_size - 1`)."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens inside `text` get their own ids.

        Args:
            text: any Unicode string.
        """
        raise NotImplementedError

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of `ids` (invalid UTF-8 byte sequences become U+FFFD).

        Args:
            ids: token ids, as a list, NumPy array or 1-D tensor.
        """
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` applied to each text.

        Args:
            texts: a sequence of strings.
        """
        _check_texts(texts)
        return [self.encode(t) for t in texts]

    def decode_batch(self, batch: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """`decode` applied to each row.

        Args:
            batch: a sequence of id sequences, or a 2-D array.
        """
        return [self.decode(ids) for ids in batch]

    @property
    def end_of_text_id(self) -> int | None:
        """The id of `<|endoftext|>` (`END_OF_TEXT`), or None if it is not a special token.

        Example:
        >>> from keras_gpt.tokenizers import ByteTokenizer
        >>> ByteTokenizer().end_of_text_id, ByteTokenizer(special_tokens=[]).end_of_text_id
        (256, None)
        """
        if END_OF_TEXT not in self.special_tokens:
            return None
        return int(self.token_to_id(END_OF_TEXT))

    def token_to_id(self, token: str) -> int:
        """The id of `token` (a special token, or a vocabulary entry).

        Args:
            token: the token string.
        """
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable arguments that rebuild this tokenizer (with its assets)."""
        return {"special_tokens": list(self.special_tokens)}

    def save_assets(self, directory: str | os.PathLike) -> None:
        """Write vocabulary files into `directory` (none by default).

        Args:
            directory: an existing directory.
        """

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, config: dict[str, Any]) -> Tokenizer:
        """Rebuild from `config` and the assets in `directory`.

        Args:
            directory: where `save` wrote the tokenizer.
            config: the `config` entry of its `keras_gpt_tokenizer.json`.
        """
        return cls(**config)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Loads whichever tokenizer `save` wrote into `directory` (of any class).

        A directory holding only GPT-2 files (`vocab.json` + `merges.txt` as in
        Hugging Face checkpoints, OpenAI's `encoder.json` + `vocab.bpe`, or
        KerasHub's `vocabulary.json` + `merges.txt`) loads as a `BytePairTokenizer`.
        `keras_gpt.presets.load_tokenizer` reads this and a preset's tokenizer.

        Args:
            directory: a directory written by `save`, or one with GPT-2 BPE files.

        Example:
        >>> tokenizer = Tokenizer.load("my_preset/tokenizer")
        >>> tokenizer.decode(tokenizer.encode("hello"))
        'hello'
        """
        directory = pathlib.Path(directory)
        config_path = directory / CONFIG_FILENAME
        if config_path.is_file():
            saved = json.loads(config_path.read_text(encoding="utf-8"))
            name = saved.get("class_name")
            if name not in _REGISTRY:
                raise ValueError(
                    f"Unknown tokenizer class {name!r} in {config_path}; "
                    f"known: {sorted(_REGISTRY)}."
                )
            return _REGISTRY[name].from_directory(directory, saved.get("config", {}))
        bpe = _REGISTRY["BytePairTokenizer"]
        layouts = bpe.FILE_LAYOUTS  # type: ignore[attr-defined]
        if any((directory / v).is_file() and (directory / m).is_file() for v, m in layouts):
            return bpe.from_directory(directory, {"special_tokens": None})
        raise ValueError(
            f"No tokenizer in {str(directory)!r}: expected {CONFIG_FILENAME}, vocab.json + "
            "merges.txt, encoder.json + vocab.bpe or vocabulary.json + merges.txt."
        )

    def save(self, directory: str | os.PathLike) -> None:
        """Save to `directory` (created if needed) so `Tokenizer.load` reads it back.

        Writes the vocabulary files, then `keras_gpt_tokenizer.json` naming the
        tokenizer class, so a model preset directory can hold the tokenizer.

        Args:
            directory: target directory.
        """
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_assets(directory)
        config = {"class_name": type(self).__name__, "config": self.get_config()}
        write_json_atomic(directory / CONFIG_FILENAME, config, ensure_ascii=False)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocabulary_size={self.vocabulary_size}, "
            f"special_tokens={self.special_tokens!r})"
        )

    def _check_id(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.vocabulary_size:
            raise ValueError(f"Token id {i} is outside [0, {self.vocabulary_size}).")
        return i


def split_text(text: str, max_chars: int, special_tokens: Sequence[str] = ()) -> list[str]:
    """Split `text` into pieces that encode, one by one, to the same ids as the whole.

    Cuts fall only before a single space or newline between two non-space
    characters (never inside a special token), where GPT-2's pre-tokenisation
    regex starts a new piece anyway; so for every keras_gpt tokenizer
    `sum(map(encode, split_text(t, n)), []) == encode(t)`. Pieces are at most
    `max_chars` long unless the text offers no such cut for longer.

    Args:
        text: the text to split.
        max_chars: target piece length in characters.
        special_tokens: strings that must not be cut.

    Example:
    >>> split_text("to be or not", 6)
    ['to be', ' or', ' not']
    """
    if max_chars < 2:
        raise ValueError(f"max_chars must be at least 2, got {max_chars}.")
    guarded = [t for t in special_tokens if any(c in t for c in " \n")]
    pieces, start = [], 0
    while len(text) - start > max_chars:
        cut = _last_safe_cut(text, start, start + max_chars, guarded)
        if cut is None:
            cut = _first_safe_cut(text, start + max_chars, len(text), guarded)
            if cut is None:
                break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _inside_special(text: str, cut: int, guarded: Sequence[str]) -> bool:
    for token in guarded:
        i = text.find(token, max(0, cut - len(token) + 1), cut + len(token))
        while i != -1 and i < cut:
            if i + len(token) > cut:
                return True
            i = text.find(token, i + 1, cut + len(token))
    return False


def _last_safe_cut(text: str, start: int, end: int, guarded) -> int | None:
    # Most text has a cut near the end of the window: look there first.
    for low in (max(start + 1, end - 256), start + 1):
        cuts = [m.start() for m in _SAFE_CUT.finditer(text, low, min(end + 2, len(text)))]
        for cut in reversed(cuts):
            if start < cut <= end and not _inside_special(text, cut, guarded):
                return cut
        if low == start + 1:
            break
    return None


def _first_safe_cut(text: str, start: int, end: int, guarded) -> int | None:
    for m in _SAFE_CUT.finditer(text, start, end):
        if not _inside_special(text, m.start(), guarded):
            return m.start()
    return None


def _check_texts(texts: Iterable[str]) -> None:
    if isinstance(texts, str):
        raise ValueError(
            f"Expected a sequence of strings, got a single string {texts[:40]!r}; "
            "use `encode` for one text."
        )


def _split_special(text: str, pattern: re.Pattern | None) -> list[str]:
    """`text` split around special tokens (odd positions hold the tokens)."""
    if not isinstance(text, str):
        raise ValueError(f"Expected a string to encode, got {type(text).__name__}: {text!r:.60}.")
    if pattern is None:
        return [text]
    return pattern.split(text)


def _special_pattern(special_tokens: Sequence[str]) -> re.Pattern | None:
    if not special_tokens:
        return None
    # Longest first, so a token that extends another wins.
    ordered = sorted(special_tokens, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(t) for t in ordered) + ")")


def _as_id_list(ids: Any) -> list[int]:
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"Expected a 1-D sequence of token ids, got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Expected integer token ids, got dtype {array.dtype}.")
    return array.astype(np.int64).tolist()
