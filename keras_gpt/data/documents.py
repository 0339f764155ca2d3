"""Reading corpora: text files, folders, glob patterns and JSONL, one document at a time."""

from __future__ import annotations

import codecs
import glob
import json
import os
import pathlib
from collections.abc import Iterator, Sequence

from keras_gpt.tokenizers.tokenizer import split_text

#: Files read as JSON lines (one document per line, in `text_field`).
JSONL_SUFFIXES = (".jsonl", ".ndjson")

Inputs = str | os.PathLike | Sequence[str | os.PathLike]


def input_files(inputs: Inputs) -> list[pathlib.Path]:
    """The files that `inputs` names, in a fixed order.

    Each entry is a file, a folder (all its files, recursively, sorted,
    hidden ones skipped) or a glob pattern (`*`, `?`, `[...]`, `**`).

    Args:
        inputs: one entry or a list of them.

    Example:
    >>> input_files(["books/", "extra/*.jsonl"])
    [PosixPath('books/a.txt'), PosixPath('books/b.txt'), PosixPath('extra/web.jsonl')]
    """
    entries = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not entries:
        raise ValueError("inputs is empty: give a file, folder, glob pattern or a list of them.")
    files: list[pathlib.Path] = []
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)):
            raise ValueError(f"Each input must be a path or glob pattern, got {entry!r:.60}.")
        text = os.fspath(entry)
        if any(c in text for c in "*?[") and not os.path.exists(text):
            matches = [pathlib.Path(p) for p in sorted(glob.glob(text, recursive=True))]
        else:
            matches = [pathlib.Path(text)] if os.path.exists(text) else []
        found = []
        for match in matches:
            if match.is_dir():
                found.extend(
                    p
                    for p in sorted(match.rglob("*"))
                    if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(match).parts)
                )
            elif match.is_file():
                found.append(match)
        if not found:
            raise ValueError(f"No files found for input {text!r}.")
        files.extend(found)
    return files


def read_documents(inputs: Inputs, text_field: str = "text") -> Iterator[str]:
    """Yield each document of `inputs`: a whole text file, or one JSONL record's text.

    Files ending in `.jsonl`/`.ndjson` hold one JSON object per line with the
    text in `text_field`; any other file is one UTF-8 document. Useful to
    train tokenizers (`BytePairTokenizer.train(read_documents(...), ...)`);
    `prepare` reads the same inputs but streams large files in pieces.

    Args:
        inputs: files, folders or glob patterns (see `input_files`).
        text_field: the JSONL field holding the text.

    Example:
    >>> for text in read_documents("corpus/*.txt"):   # a.txt, then b.txt
    ...     print(len(text))
    120
    57
    """
    for path in input_files(inputs):
        if path.suffix.lower() in JSONL_SUFFIXES:
            with open(path, "rb") as f:
                for number, line in enumerate(f, 1):
                    text = _record_text(line, path, number, text_field)
                    if text is not None:
                        yield text
        else:
            with open(path, "rb") as f:
                yield _decode(f.read(), path)


def stream_pieces(
    path: pathlib.Path, max_chars: int, special_tokens: Sequence[str] = (), text_field: str = "text"
) -> Iterator[tuple[str, bool, int]]:
    """`(piece, ends_document, bytes_read)` for one file, in bounded memory.

    A text file comes in pieces of about `max_chars` characters, cut where
    `split_text` allows, so the pieces tokenize like the whole file.

    Args:
        path: a text or JSONL file.
        max_chars: target piece length.
        special_tokens: strings never to cut.
        text_field: the JSONL field holding the text.
    """
    if path.suffix.lower() in JSONL_SUFFIXES:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                text = _record_text(line, path, number, text_field)
                if text is None:
                    yield "", False, len(line)
                else:
                    yield text, True, len(line)
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    with open(path, "rb") as f:
        while True:
            raw = f.read(max_chars)
            try:
                buffer += decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as error:
                raise ValueError(f"{str(path)!r} is not UTF-8 text ({error.reason}).") from None
            if not raw:
                break
            pieces = split_text(buffer, max_chars, special_tokens)
            # The last piece may continue in the next read.
            for i, piece in enumerate(pieces[:-1]):
                yield piece, False, len(raw) if i == 0 else 0
            if len(pieces) == 1:
                yield "", False, len(raw)
            buffer = pieces[-1]
    yield buffer, True, 0


def _decode(raw: bytes, path: pathlib.Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start})."
        ) from None


def _record_text(line: bytes, path: pathlib.Path, number: int, text_field: str) -> str | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} line {number} is not JSON: {error.msg}.") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise ValueError(f"{str(path)!r} line {number} has no string field {text_field!r}.")
    return record[text_field]
