"""The default corpus: Python's own standard library source, present wherever Python is."""

from __future__ import annotations

import pathlib
import sysconfig


def stdlib_corpus(max_bytes: int = 8_000_000) -> str:
    """Concatenated `.py` files of the running Python's standard library.

    Files are taken in sorted path order (tests and site-packages excluded)
    until `max_bytes` of UTF-8 text, so the corpus is the same on every run of
    a given Python version and needs no download.

    Args:
        max_bytes: stop adding files past this many bytes.
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).parts
        if any(p in ("site-packages", "test", "tests", "idlelib") for p in relative):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    if not parts:
        raise FileNotFoundError(f"No Python source files found under {root}.")
    return "\n".join(parts)
