"""GPT-2's byte-level BPE: load its files, train your own, encode fast.

Encoding runs in Rust: OpenAI's `tiktoken` when it is installed and gives
exactly the same ids for the vocabulary (see `BytePairTokenizer`), else
Hugging Face `tokenizers`, which also trains BPEs. Both are imported only when
a `BytePairTokenizer` is built, so `import keras_gpt` needs neither them nor
TensorFlow. Install them with `pip install "keras-gpt[text]"`.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from keras_gpt.files import write_text_atomic
from keras_gpt.tokenizers.tokenizer import (
    END_OF_TEXT,
    Tokenizer,
    _as_id_list,
    _check_texts,
    _special_pattern,
    split_text,
)

#: GPT-2's default special token.

#: The `engine` values `BytePairTokenizer` accepts.
ENGINES = ("auto", "tiktoken", "tokenizers")

# GPT-2's pre-tokenisation regex, as Hugging Face's ByteLevel and tiktoken's
# "gpt2" encoding both spell it.
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Texts longer than this are cut at safe points (see `split_text`) and the
# pieces encoded in parallel by the Rust library; the ids are the same.
_PARALLEL_CHARS = 1 << 16
# tiktoken encodes pieces on Python threads (it releases the GIL); more
# threads than cores only add overhead.
_THREADS = min(8, os.cpu_count() or 1)
# Room for every distinct word of a mid-sized corpus: the default (10,000)
# makes tinyshakespeare encode ~1.5x slower.
_CACHE_CAPACITY = 1 << 18


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "BytePairTokenizer needs Hugging Face `tokenizers`: "
            'pip install "keras-gpt[text]" (or `pip install tokenizers`).'
        ) from error
    return tokenizers


def _import_tiktoken(required: bool):
    try:
        import tiktoken
    except ImportError as error:  # pragma: no cover - depends on the environment
        if required:
            raise ImportError(
                'engine="tiktoken" needs `tiktoken`: pip install "keras-gpt[text]" '
                '(or `pip install tiktoken`), or use engine="auto".'
            ) from error
        return None
    return tiktoken


class _NotExact(ValueError):
    """tiktoken would not give Hugging Face's ids for this vocabulary."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters.

    Vocabulary files spell every token with these characters (a space is
    `Ġ`, a newline `Ċ`), so no token string contains whitespace.

    Example:
    >>> bytes_to_unicode()[ord(" ")]
    'Ġ'
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class BytePairTokenizer(Tokenizer):
    """GPT-2's byte-level byte-pair encoding.

    Text is split with GPT-2's pre-tokenisation regex, each piece's UTF-8
    bytes are merged by the ranked `merges`, and the resulting tokens are
    looked up in `vocabulary`. Every byte has a token, so
    `decode(encode(s)) == s` for any string (a lone surrogate, which is not
    text, raises). Special tokens are matched inside text first and never
    split or merged. The tests check that the same files give the same ids
    as Hugging Face's byte-level BPE and KerasHub's `BytePairTokenizer`
    (whose TensorFlow path drops text after a NUL character).

    Build one with `from_files` (GPT-2 files), `train` (your corpus) or
    `load_tokenizer` (a saved directory).

    Two Rust libraries can do the encoding; `engine` picks one and the
    `engine` property says which one runs:

    - `"tiktoken"`: OpenAI's `tiktoken`, several times faster. It merges the
      adjacent pair whose *concatenation* has the lowest rank, and returns a
      pre-token that is a token whole, while GPT-2 merges only *listed*
      pairs (`"a"` + `"bc"` need not merge into a token `"abc"` merged as
      `"ab"` + `"c"`). With each token ranked by its merge's line in
      `merges`, the two give the same ids when (1) every merged token is
      made by one merge rule and (2) GPT-2's BPE of each merged token's
      own bytes gives that token. Both are checked when the tokenizer is
      built (BPE of every token: ~0.1 s per 10,000 merges), with the 256
      byte tokens present and merges spelled in `bytes_to_unicode`
      characters. The tests check that BPEs made by `train` pass.
    - `"tokenizers"`: Hugging Face `tokenizers`, exact for any vocabulary.
    - `"auto"` (default): `"tiktoken"` when it is installed and the checks
      pass, else `"tokenizers"`.

    Both give the same ids; long texts and batches are encoded on several
    threads by either.

    Args:
        vocabulary: token string → id, ids `0 … n-1`, tokens spelled with
            `bytes_to_unicode` characters.
        merges: merge rules by priority, as `"a b"` strings or `(a, b)`
            pairs; a `#version` header line is skipped.
        special_tokens: tokens matched inside text before splitting; those
            missing from `vocabulary` get new ids after it. `None` means
            `<|endoftext|>` if the vocabulary has it, else none.
        engine: `"auto"`, `"tiktoken"` (raises if it is not installed or
            cannot be exact for this vocabulary) or `"tokenizers"`. Saved
            with the tokenizer.

    Example:
    >>> tokenizer = BytePairTokenizer.from_files("gpt2/vocab.json", "gpt2/merges.txt")
    >>> tokenizer.encode("Hello world<|endoftext|>")
    [15496, 995, 50256]
    >>> tokenizer.decode([15496, 995])
    'Hello world'
    """

    #: (vocabulary, merges) file names: Hugging Face, OpenAI, KerasHub.
    FILE_LAYOUTS = (
        ("vocab.json", "merges.txt"),
        ("encoder.json", "vocab.bpe"),
        ("vocabulary.json", "merges.txt"),
    )

    def __init__(
        self,
        vocabulary: dict[str, int],
        merges: Sequence[str] | Sequence[tuple[str, str]],
        special_tokens: Sequence[str] | None = None,
        engine: str = "auto",
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
        tokenizers = _import_tokenizers()
        vocabulary = dict(vocabulary)
        ids = sorted(vocabulary.values())
        if ids != list(range(len(ids))):
            raise ValueError(
                f"Vocabulary ids must be 0 … {len(ids) - 1} without gaps or repeats "
                f"(got {len(ids)} tokens with ids from {ids[0] if ids else None} to "
                f"{ids[-1] if ids else None})."
            )
        pairs = _parse_merges(merges)
        for a, b in pairs:
            if a not in vocabulary or b not in vocabulary or a + b not in vocabulary:
                raise ValueError(
                    f"Merge rule {a + ' ' + b!r} uses or makes a token not in the vocabulary."
                )
        if special_tokens is None:
            special_tokens = [END_OF_TEXT] if END_OF_TEXT in vocabulary else []
        if isinstance(special_tokens, str):
            raise ValueError(f"special_tokens must be a list of strings, got {special_tokens!r}.")
        if len(set(special_tokens)) != len(special_tokens) or "" in special_tokens:
            raise ValueError(
                f"special_tokens must be distinct non-empty strings, got {special_tokens!r}."
            )
        for token in special_tokens:
            vocabulary.setdefault(token, len(vocabulary))
        self.vocabulary = vocabulary
        self.merges = [f"{a} {b}" for a, b in pairs]
        self.special_tokens = list(special_tokens)

        model = tokenizers.models.BPE(
            vocab=vocabulary, merges=pairs, cache_capacity=_CACHE_CAPACITY
        )
        self._tokenizer = tokenizers.Tokenizer(model)
        self._tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
            add_prefix_space=False, use_regex=True
        )
        if self.special_tokens:
            self._tokenizer.add_special_tokens(
                [
                    tokenizers.AddedToken(t, special=True, normalized=False)
                    for t in self.special_tokens
                ]
            )
        # Decoding is a byte-string lookup per id; special tokens decode to their text.
        to_byte = {c: b for b, c in bytes_to_unicode().items()}
        self._bytes = [b""] * len(vocabulary)
        for token, i in vocabulary.items():
            if token in self.special_tokens:
                self._bytes[i] = token.encode("utf-8")
            else:
                try:
                    self._bytes[i] = bytes(to_byte[c] for c in token)
                except KeyError:  # not a byte-level token; decode it as its text
                    self._bytes[i] = token.encode("utf-8")

        self._engine_argument = engine
        self._encoding = None  # a tiktoken Encoding when that engine runs
        self._rank_to_id: list[int] | None = None
        self._special_split = _special_pattern(self.special_tokens)
        tiktoken = None if engine == "tokenizers" else _import_tiktoken(engine == "tiktoken")
        if tiktoken is not None:
            try:
                ranks, self._rank_to_id = _tiktoken_ranks(vocabulary, pairs, model)
            except _NotExact as error:
                if engine == "tiktoken":
                    raise ValueError(
                        f'engine="tiktoken" cannot give exact ids for this vocabulary: {error} '
                        'Use engine="tokenizers" (or "auto", which falls back to it).'
                    ) from None
            else:
                # Special tokens are cut out in Python (see `_encode_with_tiktoken`).
                self._encoding = tiktoken.Encoding(
                    "keras_gpt", pat_str=_GPT2_SPLIT, mergeable_ranks=ranks, special_tokens={}
                )

    @classmethod
    def from_files(
        cls,
        vocabulary_path: str | os.PathLike,
        merges_path: str | os.PathLike,
        special_tokens: Sequence[str] | None = None,
        engine: str = "auto",
    ) -> BytePairTokenizer:
        """Load GPT-2 files: `vocab.json` + `merges.txt` (Hugging Face) or `encoder.json` +
        `vocab.bpe` (OpenAI).

        Args:
            vocabulary_path: the JSON token → id file.
            merges_path: the merges file, one `a b` rule per line.
            special_tokens: as in the constructor (`None`: `<|endoftext|>` if present).
            engine: `"auto"`, `"tiktoken"` or `"tokenizers"`, as in the constructor.

        Example:
        >>> gpt2 = BytePairTokenizer.from_files("gpt2/encoder.json", "gpt2/vocab.bpe")
        >>> gpt2.encode("Hello world")
        [15496, 995]
        >>> tokenizer = BytePairTokenizer.from_files("gpt2/vocab.json", "gpt2/merges.txt",
        ...                                          engine="tokenizers")
        >>> tokenizer.engine
        'tokenizers'
        """
        for path in (vocabulary_path, merges_path):
            if not pathlib.Path(path).is_file():
                raise ValueError(f"No such file: {str(path)!r}.")
        with open(vocabulary_path, encoding="utf-8") as f:
            vocabulary = json.load(f)
        if not isinstance(vocabulary, dict):
            raise ValueError(f"{str(vocabulary_path)!r} must hold a JSON object (token → id).")
        with open(merges_path, encoding="utf-8") as f:
            merges = [line.rstrip("\r\n") for line in f]
        return cls(vocabulary, merges, special_tokens, engine)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocabulary_size: int,
        special_tokens: Sequence[str] = (END_OF_TEXT,),
        min_frequency: int = 2,
        show_progress: bool = False,
        engine: str = "auto",
    ) -> BytePairTokenizer:
        """Learn a byte-level BPE on `texts`, as GPT-2's was learned.

        Ids are laid out as GPT-2's: the 256 byte tokens, then merged tokens
        in merge order, then the special tokens (so `<|endoftext|>` is the
        last id). `save` writes it in the GPT-2 file layout.

        Args:
            texts: an iterable of strings (documents or pieces of them), e.g.
                `keras_gpt.data.read_documents("corpus/*.txt")`.
            vocabulary_size: the most ids, special tokens included (at least
                256 + their number); a small corpus may give fewer.
            special_tokens: tokens given their own ids.
            min_frequency: pairs seen fewer times are not merged.
            show_progress: print the Rust trainer's progress bars.
            engine: the encoding engine of the result, as in the constructor
                (training always runs in Hugging Face `tokenizers`).

        Example:
        >>> from keras_gpt.data import read_documents
        >>> tokenizer = BytePairTokenizer.train(read_documents("corpus.txt"), 8192)
        >>> tokenizer.save("my_bpe")          # vocab.json, merges.txt, ...
        """
        tokenizers = _import_tokenizers()
        _check_texts(texts)
        special_tokens = list(special_tokens)
        if int(vocabulary_size) < 256 + len(special_tokens):
            raise ValueError(
                f"vocabulary_size={vocabulary_size} is below 256 byte tokens + "
                f"{len(special_tokens)} special tokens."
            )
        # Train with the specials at ids 0…k-1 (the trainer's layout) and
        # then renumber, which merges do not depend on.
        model = tokenizers.Tokenizer(tokenizers.models.BPE())
        model.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
            add_prefix_space=False, use_regex=True
        )
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=int(vocabulary_size),
            min_frequency=int(min_frequency),
            special_tokens=special_tokens,
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        model.train_from_iterator(_strings(texts, special_tokens), trainer=trainer)
        state = json.loads(model.to_str())["model"]
        trained = sorted(state["vocab"].items(), key=lambda item: item[1])
        byte_tokens = [t for t, _ in trained if t not in special_tokens][:256]
        merged = [t for t, _ in trained if t not in special_tokens][256:]
        byte_order = {c: b for b, c in bytes_to_unicode().items()}
        if sorted(byte_tokens) != sorted(byte_order):  # the trainer's alphabet is the 256 bytes
            raise RuntimeError("Unexpected alphabet from the BPE trainer.")
        byte_tokens.sort(key=lambda t: byte_order[t])
        ordered = byte_tokens + merged + special_tokens
        vocabulary = {t: i for i, t in enumerate(ordered)}
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
        return cls(vocabulary, merges, special_tokens, engine)

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    @property
    def engine(self) -> str:
        """The library that encodes: `"tiktoken"` or `"tokenizers"` (see the class docs)."""
        return "tokenizers" if self._encoding is None else "tiktoken"

    def token_to_id(self, token: str) -> int:
        """The id of a vocabulary token (byte-level spelling) or special token.

        Args:
            token: e.g. `"<|endoftext|>"` or `"Ġthe"`.
        """
        if token not in self.vocabulary:
            raise ValueError(f"{token!r} is not in this tokenizer's vocabulary.")
        return self.vocabulary[token]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(
                f"Expected a string to encode, got {type(text).__name__}: {text!r:.60}."
            )
        if self._encoding is not None:
            return self._encode_with_tiktoken([text])[0]
        try:
            if len(text) <= _PARALLEL_CHARS:
                return self._tokenizer.encode(text).ids
            pieces = split_text(text, _PARALLEL_CHARS, self.special_tokens)
            encodings = self._tokenizer.encode_batch_fast(pieces)
        except TypeError:
            _raise_if_not_utf8(text)
            raise
        ids: list[int] = []
        for encoding in encodings:
            ids.extend(encoding.ids)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        _check_texts(texts)
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise ValueError("encode_batch expects a sequence of strings.")
        if self._encoding is not None:
            return self._encode_with_tiktoken(texts)
        if any(len(t) > _PARALLEL_CHARS for t in texts):
            return [self.encode(t) for t in texts]
        try:
            return [e.ids for e in self._tokenizer.encode_batch_fast(texts)]
        except TypeError:
            for text in texts:
                _raise_if_not_utf8(text)
            raise

    def _encode_with_tiktoken(self, texts: list[str]) -> list[list[int]]:
        # Special tokens are cut out here, longest first as Hugging Face
        # matches them (tiktoken's own matching picks any of two that start
        # at the same place), and long runs of ordinary text are cut at safe
        # points, so that all pieces can be encoded on several threads.
        plan: list[list[str | int]] = []
        pieces: list[str] = []
        for text in texts:
            if not text.isascii():
                _raise_if_not_utf8(text)  # tiktoken would silently replace a lone surrogate
            parts = [text] if self._special_split is None else self._special_split.split(text)
            row: list[str | int] = []
            for k, part in enumerate(parts):
                if k % 2:
                    row.append(self.vocabulary[part])
                elif part:
                    cut = (
                        [part]
                        if len(part) <= _PARALLEL_CHARS
                        else split_text(part, _PARALLEL_CHARS)
                    )
                    row.extend(cut)
                    pieces.extend(cut)
            plan.append(row)
        if len(pieces) > 1:
            encoded = self._encoding.encode_ordinary_batch(pieces, num_threads=_THREADS)
        else:
            encoded = [self._encoding.encode_ordinary(piece) for piece in pieces]
        table = self._rank_to_id
        if table is not None:
            encoded = [[table[r] for r in ranks] for ranks in encoded]
        results, pending = [], iter(encoded)
        for row in plan:
            ids: list[int] = []
            for item in row:
                if isinstance(item, int):
                    ids.append(item)
                else:
                    ids.extend(next(pending))
            results.append(ids)
        return results

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        table, size = self._bytes, len(self._bytes)
        ids = _as_id_list(ids)
        for i in ids:
            if not 0 <= i < size:
                raise ValueError(f"Token id {i} is outside [0, {size}).")
        return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")

    def get_config(self) -> dict[str, Any]:
        return {"special_tokens": list(self.special_tokens), "engine": self._engine_argument}

    def save_assets(self, directory: str | os.PathLike) -> None:
        """Write `vocab.json` and `merges.txt` (GPT-2's layout, as Hugging Face names them).

        Args:
            directory: an existing directory.
        """
        directory = pathlib.Path(directory)
        write_text_atomic(directory / "vocab.json", json.dumps(self.vocabulary, ensure_ascii=False))
        write_text_atomic(
            directory / "merges.txt", "#version: 0.2\n" + "".join(m + "\n" for m in self.merges)
        )

    @classmethod
    def from_directory(
        cls, directory: str | os.PathLike, config: dict[str, Any]
    ) -> BytePairTokenizer:
        directory = pathlib.Path(directory)
        for vocabulary_name, merges_name in cls.FILE_LAYOUTS:
            if (directory / vocabulary_name).is_file() and (directory / merges_name).is_file():
                return cls.from_files(
                    directory / vocabulary_name,
                    directory / merges_name,
                    config.get("special_tokens"),
                    config.get("engine", "auto"),
                )
        raise ValueError(f"No vocabulary + merges files in {str(directory)!r}.")


def _parse_merges(merges: Sequence[str] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = []
    for number, merge in enumerate(merges):
        if isinstance(merge, str):
            if merge.startswith("#version") or not merge.strip():
                continue
            parts = merge.split(" ")
        else:
            parts = list(merge)
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"Merge rule {number} must be two tokens 'a b', got {merge!r}.")
        pairs.append((parts[0], parts[1]))
    return pairs


def _tiktoken_ranks(
    vocabulary: dict[str, int],
    pairs: list[tuple[str, str]],
    bpe_model: Any,
) -> tuple[dict[bytes, int], list[int] | None]:
    """tiktoken's `mergeable_ranks` for these merges, and the rank → id table.

    A merged token's rank orders it as its merge line does; the byte tokens
    come first. When the vocabulary's own ids already do that (GPT-2's and
    `train`'s layouts) they are the ranks and the table is `None`. Raises
    `_NotExact` naming the first token on which tiktoken could disagree
    with GPT-2's BPE (`bpe_model`, Hugging Face's, is the judge).
    """
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    for character, byte in to_byte.items():
        if character not in vocabulary:
            raise _NotExact(f"the vocabulary has no token {character!r} for byte {byte}.")
    made: dict[str, int] = {}  # merged token -> its merge line
    for k, (a, b) in enumerate(pairs):
        token = a + b
        if token in made:
            raise _NotExact(
                f"token {token!r} is made by two merge rules "
                f"({' '.join(pairs[made[token]])!r} and {a + ' ' + b!r})."
            )
        if any(c not in to_byte for c in token):
            raise _NotExact(
                f"merge rule {a + ' ' + b!r} is not spelled in GPT-2's byte characters."
            )
        made[token] = k
    # If BPE (Hugging Face's) of every merged token gives the token, then two
    # adjacent tokens in any BPE state concatenate to a token only through
    # its merge rule (else BPE of that token alone would stop at the two),
    # so tiktoken picks the same merges, and its whole-token shortcut agrees.
    for token in made:
        pieces = bpe_model.tokenize(token)
        if len(pieces) != 1:
            raise _NotExact(
                f"BPE of token {token!r} on its own gives "
                f"{[p.value for p in pieces]}, not the token."
            )
    ids = [vocabulary[a + b] for a, b in pairs]
    if all(x < y for x, y in zip(ids, ids[1:])):
        # Only merged tokens' ranks are ever compared; byte tokens' need only be distinct.
        return {
            bytes(to_byte[c] for c in token): vocabulary[token]
            for token in to_byte.keys() | made.keys()
        }, None
    ranks = {bytes([b]): b for b in range(256)}
    for token, k in made.items():
        ranks[bytes(to_byte[c] for c in token)] = 256 + k
    table = [vocabulary[character] for character in bytes_to_unicode().values()] + ids
    return ranks, table


def _raise_if_not_utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"Text {text[max(0, error.start - 10) : error.end + 10]!r} has a lone surrogate "
            f"(U+{ord(text[error.start]):04X}) at position {error.start}, "
            "which is not Unicode text."
        ) from None


def _strings(texts: Iterable[str], special_tokens: Sequence[str]) -> Iterable[str]:
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"Training texts must be strings, got {type(text).__name__}.")
        # Long documents are cut where pre-tokenisation would cut anyway, to
        # bound the trainer's per-item memory without changing word counts.
        yield from split_text(text, _PARALLEL_CHARS, special_tokens)
