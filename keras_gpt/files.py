"""Writing files so that a reader never sees half of one: write a temporary sibling, then
rename it over the target (`os.replace` is atomic on POSIX and Windows).

Every file keras_gpt writes for another process or a later run to read (token
metadata, tokenizer files, cached corpora, exports, adapters, run records) goes
through `atomic_path`, `write_text_atomic` or `write_json_atomic`; a folder of
several files that must appear together (a checkpoint, a SavedModel) through
`atomic_directory`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
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


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, *, overwrite: bool = False, durable: bool = False
) -> Iterator[pathlib.Path]:
    """A new empty folder beside `path` to fill; renamed to `path` when the block succeeds.

    If the block raises, the folder is removed and `path` is left as it was. The
    folder gets the usual permissions (`0o777` less the umask), so that another
    account (a server) can read what it becomes.

    Args:
        path: the folder to create (its parents are created too).
        overwrite: replace an existing `path` (removed just before the rename)
            instead of raising `FileExistsError`.
        durable: fsync every file and the folder before the rename and the parent
            after it, so that what a reader finds survives a power cut as well.

    Example:
    >>> with atomic_directory("export") as temporary:
    ...     _ = (temporary / "a.txt").write_text("a")
    >>> sorted(p.name for p in pathlib.Path("export").iterdir())
    ['a.txt']
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = pathlib.Path(
        tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    )
    try:
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp's folder is private (0o700)
        yield temporary
        if durable:
            for folder, _, names in os.walk(temporary):
                for name in names:
                    _fsync(os.path.join(folder, name))
                _fsync(folder)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it.")
            shutil.rmtree(path)
        # `path` is gone by now, so `rename` (what tests/test_runs.py interrupts)
        # is the atomic step, on Windows as well.
        os.rename(temporary, path)
        if durable:
            _fsync(path.parent)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


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


def _fsync(path: str | os.PathLike) -> None:
    """Flushes a file's or folder's contents (a folder: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's file-creation mask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
