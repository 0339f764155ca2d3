"""Text → token shards on disk, with a train/validation split and metadata.

`prepare` runs in phases, each a function below:

- `_check_arguments`: bad arguments are refused before anything is written.
- `_previous_metadata`: a run whose inputs, tokenizer and arguments hash to the
  fingerprint in an existing `metadata.json` is skipped.
- `_remove_outputs`: an earlier run's files go, `metadata.json` (which readers
  require) first, so an interrupted run leaves nothing that reads as valid.
- `_tokenize`: files are read in pieces of `chunk_chars` characters, cut where
  tokenization is unchanged (`keras_gpt.tokenizers.split_text`), and tokens go
  straight to disk under temporary names (`_ShardWriter`), so memory does not
  grow with the corpus.
- `_split`: the parts are renamed into train and val shards; the validation
  split is the last `validation_fraction` of the token stream (`_train_tokens`,
  as nanoGPT splits Shakespeare). `metadata.json` is written last.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

from keras_gpt.data.documents import Inputs, input_files, stream_pieces
from keras_gpt.data.token_stream import METADATA_FILENAME, read_metadata
from keras_gpt.files import write_json_atomic
from keras_gpt.tokenizers.tokenizer import END_OF_TEXT, Tokenizer

#: Bump when the layout of the output directory changes.
FORMAT = "keras_gpt.token_shards/1"
TOKENIZER_DIR = "tokenizer"


def prepare(
    inputs: Inputs,
    output_dir: str | os.PathLike,
    tokenizer: Tokenizer,
    validation_fraction: float = 0.1,
    end_of_text: str | None = END_OF_TEXT,
    text_field: str = "text",
    shard_tokens: int = 1 << 27,
    chunk_chars: int = 1 << 18,
    progress: bool = True,
) -> dict:
    """Tokenize a corpus into shards of token ids on disk (nanoGPT's `prepare.py`, streamed).

    Writes into `output_dir`: `train_00000.bin …` and `val_00000.bin …` (raw `uint16` ids
    when the vocabulary fits, else `uint32`; `TokenStream.from_directory` reads them), the
    tokenizer in `tokenizer/` and, last, `metadata.json` (tokenizer, dtype, counts, shards,
    a fingerprint of the inputs). How it streams, splits and skips: see the module.

    Args:
        inputs: files, folders, globs or a list of them (`.jsonl`: a document a line).
        output_dir: where the shards go (created if needed).
        tokenizer: a keras_gpt tokenizer (`BytePairTokenizer`, `CharTokenizer`, ...).
        validation_fraction: share of tokens for validation (the last ones), in `[0, 1)`.
        end_of_text: special token appended after each document, or `None`.
        text_field: the JSONL field holding the text.
        shard_tokens: tokens per shard file.
        chunk_chars: characters tokenized per piece (memory is a few times this).
        progress: MB/s and tokens/s on stderr (redrawn on a terminal, else the last line).

    Returns:
        The metadata dictionary (also in `output_dir/metadata.json`).

    Example:
    >>> from keras_gpt.tokenizers import CharTokenizer
    >>> text = open("input.txt").read()
    >>> meta = prepare("input.txt", "data/shakespeare_char",
    ...                CharTokenizer.from_text(text), end_of_text=None)
    >>> meta["splits"]["train"]["tokens"], meta["dtype"]
    (1003854, 'uint16')
    """
    eot = _check_arguments(tokenizer, validation_fraction, end_of_text, shard_tokens, chunk_chars)
    files = input_files(inputs)
    output_dir = pathlib.Path(output_dir)
    arguments = {
        "validation_fraction": validation_fraction,
        "end_of_text": end_of_text,
        "text_field": text_field,
        "shard_tokens": shard_tokens,
    }
    fingerprint = _fingerprint(files, tokenizer, arguments)
    if (previous := _up_to_date(output_dir, fingerprint, progress)) is not None:
        return previous

    _start_outputs(output_dir)
    tokenizer.save(output_dir / TOKENIZER_DIR)
    dtype = np.dtype("uint16") if tokenizer.vocabulary_size <= 1 << 16 else np.dtype("uint32")
    total_bytes = sum(f.stat().st_size for f in files)
    writer = _ShardWriter(output_dir, dtype, shard_tokens)
    bar = _Progress(total_bytes) if progress else None
    documents = _tokenize(files, tokenizer, writer, eot, chunk_chars, text_field, bar)
    if bar is not None:
        bar.update(total_bytes, writer.tokens, final=True)
    splits = _split(output_dir, writer.close(), validation_fraction, dtype)
    metadata = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": {
            "class_name": type(tokenizer).__name__,
            "directory": TOKENIZER_DIR,
            "vocabulary_size": tokenizer.vocabulary_size,
        },
        "dtype": dtype.name,
        "end_of_text_id": eot,
        **dict(files=len(files), documents=documents, bytes=total_bytes, tokens=writer.tokens),
        **arguments,
        "splits": splits,
    }
    write_json_atomic(output_dir / METADATA_FILENAME, metadata)  # last: readers need it
    return metadata


def _check_arguments(
    tokenizer, validation_fraction: float, end_of_text, shard_tokens: int, chunk_chars: int
) -> int | None:
    """Refuses bad arguments before anything is written; returns the end-of-text id."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    if shard_tokens < 1 or chunk_chars < 2:
        raise ValueError(
            f"shard_tokens and chunk_chars must be positive, got {shard_tokens}, {chunk_chars}."
        )
    for method in ("encode_batch", "save", "vocabulary_size"):
        if not hasattr(tokenizer, method):
            raise ValueError(
                f"tokenizer must be a keras_gpt tokenizer, got {type(tokenizer).__name__}."
            )
    if end_of_text is None:
        return None
    if end_of_text not in getattr(tokenizer, "special_tokens", []):
        raise ValueError(
            f"end_of_text={end_of_text!r} is not a special token of this tokenizer "
            f"(it has {getattr(tokenizer, 'special_tokens', [])}); pass end_of_text=None "
            "to join documents without one."
        )
    return tokenizer.token_to_id(end_of_text)


def _up_to_date(output_dir: pathlib.Path, fingerprint: str, progress: bool) -> dict | None:
    """The metadata of an earlier complete run in `output_dir` with this fingerprint, or None."""
    try:
        previous = read_metadata(output_dir)
    except (ValueError, KeyError, json.JSONDecodeError):
        return None
    if previous.get("fingerprint") != fingerprint:
        return None
    if progress:
        print(f"{output_dir}: up to date ({previous['tokens']:,} tokens), skipped.")
    return previous


def _start_outputs(output_dir: pathlib.Path) -> None:
    """Creates `output_dir`, or deletes an earlier run's outputs there, metadata.json first
    (readers need it), so that a crash from here on leaves nothing that reads as valid."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / METADATA_FILENAME).unlink(missing_ok=True)
    for stale in [
        *output_dir.glob("train_*.bin"),
        *output_dir.glob("val_*.bin"),
        *output_dir.glob("*.tmp"),
    ]:
        stale.unlink()


def _tokenize(
    files: list[pathlib.Path],
    tokenizer,
    writer: _ShardWriter,
    end_of_text_id: int | None,
    chunk_chars: int,
    text_field: str,
    bar: _Progress | None,
) -> int:
    """Streams `files` through the tokenizer into `writer`'s parts, in batches of about
    `chunk_chars` characters; returns the number of documents. On any error the parts
    written so far are deleted."""
    special_tokens = list(getattr(tokenizer, "special_tokens", []))
    done_bytes, pending_bytes, documents = 0, 0, 0
    batch: list[tuple[str, bool]] = []
    batch_chars = 0

    def flush():
        nonlocal batch, batch_chars, done_bytes, pending_bytes
        texts = [text for text, _ in batch]
        for (_, ends), ids in zip(batch, tokenizer.encode_batch(texts)):
            if ids:
                writer.write(np.asarray(ids, dtype=np.int64))
            if ends and end_of_text_id is not None:
                writer.write(np.array([end_of_text_id]))
        batch, batch_chars = [], 0
        done_bytes, pending_bytes = done_bytes + pending_bytes, 0
        if bar is not None:
            bar.update(done_bytes, writer.tokens)

    try:
        for path in files:
            for text, ends, read_bytes in stream_pieces(
                path, chunk_chars, special_tokens, text_field
            ):
                pending_bytes += read_bytes
                documents += ends
                if text or ends:
                    batch.append((text, ends))
                    batch_chars += len(text)
                if batch_chars >= chunk_chars:
                    flush()
        flush()
    except BaseException:
        # Partial parts are never read (no metadata); delete them if we still can.
        for path, _ in writer.close():
            path.unlink(missing_ok=True)
        raise
    return documents


def _train_tokens(total: int, validation_fraction: float) -> int:
    """How many of `total` tokens train: nanoGPT's rounding, keeping one token on each
    side when there is a validation split."""
    train = int(total * (1 - validation_fraction))
    if validation_fraction > 0 and total >= 2:
        train = min(max(train, 1), total - 1)
    return train


class _Progress:
    """Bytes done, MB/s and tokens/s on stderr: on a terminal one line that redraws
    itself (at most 4 times a second); into a file or pipe only the final line, so a
    log holds no carriage-return redraws."""

    def __init__(self, total_bytes: int):
        self.total, self.start, self.shown = max(total_bytes, 1), time.perf_counter(), 0.0
        self.live = sys.stderr.isatty()

    def update(self, done: int, tokens: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and (not self.live or now - self.shown < 0.25):
            return
        self.shown = now
        seconds = max(now - self.start, 1e-9)
        done = min(done, self.total)
        line = ("\r" if self.live else "") + (
            f"prepare: {done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB "
            f"({100 * done / self.total:3.0f}%)  {done / seconds / 1e6:,.2f} MB/s  "
            f"{tokens / seconds:,.0f} tokens/s  {tokens:,} tokens"
        )
        print(line, end="\n" if final else "", file=sys.stderr, flush=True)


class _ShardWriter:
    """Appends tokens to `part_XXXXX.bin.tmp` files of at most `shard_tokens` tokens."""

    def __init__(self, directory: pathlib.Path, dtype: np.dtype, shard_tokens: int):
        self.directory, self.dtype, self.shard_tokens = directory, dtype, shard_tokens
        self.files: list[tuple[pathlib.Path, int]] = []
        self.file = None
        self.in_file = 0
        self.tokens = 0

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype)
        while len(ids):
            if self.file is None or self.in_file == self.shard_tokens:
                self._next()
            take = min(len(ids), self.shard_tokens - self.in_file)
            self.file.write(ids[:take].tobytes())
            self.in_file += take
            self.tokens += take
            ids = ids[take:]

    def _next(self) -> None:
        self._finish()
        path = self.directory / f"part_{len(self.files):05d}.bin.tmp"
        self.file, self.in_file = open(path, "wb"), 0
        self.files.append((path, 0))

    def _finish(self) -> None:
        if self.file is not None:
            self.file.close()
            self.files[-1] = (self.files[-1][0], self.in_file)
            self.file = None

    def close(self) -> list[tuple[pathlib.Path, int]]:
        self._finish()
        return self.files


def _split(
    directory: pathlib.Path,
    parts: list[tuple[pathlib.Path, int]],
    validation_fraction: float,
    dtype: np.dtype,
) -> dict:
    """Rename the temporary parts into train and val shards, cutting the one that straddles."""
    train_tokens = _train_tokens(sum(tokens for _, tokens in parts), validation_fraction)
    splits = {"train": {"tokens": 0, "shards": []}, "val": {"tokens": 0, "shards": []}}

    def add(split: str, source: pathlib.Path, tokens: int) -> None:
        entry = splits[split]
        name = f"{split}_{len(entry['shards']):05d}.bin"
        os.replace(source, directory / name)
        entry["shards"].append({"file": name, "tokens": tokens})
        entry["tokens"] += tokens

    position = 0
    for path, tokens in parts:
        if position + tokens <= train_tokens:
            add("train", path, tokens)
        elif position >= train_tokens:
            add("val", path, tokens)
        else:
            head = train_tokens - position
            tail = path.with_name(path.name.replace(".bin.tmp", ".tail.bin.tmp"))
            with open(path, "rb") as source, open(tail, "wb") as target:
                source.seek(head * dtype.itemsize)
                while block := source.read(1 << 24):
                    target.write(block)
            os.truncate(path, head * dtype.itemsize)
            add("train", path, head)
            add("val", tail, tokens - head)
        position += tokens
    return splits


def _fingerprint(files: list[pathlib.Path], tokenizer, arguments: dict) -> str:
    """A hash of the input contents (in order), the tokenizer's files and the arguments."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT, **arguments}, sort_keys=True).encode())
    with tempfile.TemporaryDirectory() as saved:
        tokenizer.save(saved)
        for name in sorted(os.listdir(saved)):
            digest.update(name.encode() + b"\0" + pathlib.Path(saved, name).read_bytes())
    for path in files:
        digest.update(b"\0file\0" + str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()
