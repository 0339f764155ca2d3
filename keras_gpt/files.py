"""Writing files so that a reader never sees half of one: write a temporary sibling, then
rename it over the target (`os.replace` is atomic on POSIX and Windows).

Every file keras_gpt writes for another process or a later run to read (token
metadata, tokenizer files, cached corpora, exports, adapters, run records) goes
through `atomic_path`, `write_text_atomic` or `write_json_atomic`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
    """A temporary sibling of `path` to write; renamed to `path` when the block succeeds.

    If the block raises, the temporary file (or folder) is removed and `path` is
    left as it was.

    Args:
        path: the file (or folder) to create or replace.
        suffix: ends the temporary name, for writers that insist on an extension
            (`np.savez` appends `.npz` to a name without it).

    Example:
    >>> with atomic_path("weights.npz", suffix=".npz") as temporary:
    ...     np.savez(temporary, w=np.zeros(3))
    >>> sorted(np.load("weights.npz"))
    ['w']
    """
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically.

    Example:
    >>> write_text_atomic("notes.txt", "hello")
    >>> open("notes.txt").read()
    'hello'
    """
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: object, **dumps) -> None:
    """Writes `obj` as JSON (indented by 2 unless `dumps` says otherwise) atomically.

    Example:
    >>> write_json_atomic("row.json", {"step": 2})
    >>> json.load(open("row.json"))
    {'step': 2}
    """
    write_text_atomic(path, json.dumps(obj, **{"indent": 2, **dumps}))
