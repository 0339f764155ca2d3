"""Corpora: Python's own standard-library source (the default), tinyshakespeare, the user's
files; choosing a tokenizer for them and tokenising them into shards."""

from __future__ import annotations

import ast
import os
import pathlib
import sysconfig
import urllib.request

from keras_gpt.data.prepare import prepare
from keras_gpt.data.token_stream import TokenStream
from keras_gpt.files import atomic_path, write_text_atomic
from keras_gpt.tokenizers import (
    END_OF_TEXT,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
)


def stdlib_corpus(max_bytes: int = 8_000_000, code_only: bool = False) -> str:
    """Concatenated `.py` files of the running Python's standard library.

    Files are taken in sorted path order (tests and site-packages excluded)
    until `max_bytes` of UTF-8 text, so the corpus is the same on every run of
    a given Python version and needs no download.

    Args:
        max_bytes: stop adding files past this many bytes.
        code_only: keep only the code: each module goes through `ast`, losing its
            docstrings and comments (and its own layout, for `ast.unparse`'s). A
            third of the standard library is English prose; a small model trained
            for minutes on the whole of it answers `def ` with a docstring, on
            the code alone with a function body (`make demo`'s corpus).

    Example:
    >>> text = stdlib_corpus(max_bytes=100_000, code_only=True)
    >>> _ = ast.parse(text)                   # still valid Python, module after module
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).parts
        if any(p in ("site-packages", "test", "tests", "idlelib") for p in relative):
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if code_only:
                text = ast.unparse(_without_docstrings(ast.parse(text)))
        except (UnicodeDecodeError, OSError, SyntaxError, ValueError):
            continue
        parts.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    if not parts:
        raise FileNotFoundError(f"No Python source files found under {root}.")
    return "\n".join(parts)


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """`tree` without the docstrings of its module, classes and functions.

    Only statements can hold a docstring, so only statement lists are walked, not
    every expression node as `ast.walk` would (most of a module's nodes).
    """
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                pending.extend(children)
    return tree


SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)


SHAKESPEARE_CANDIDATES = ("../shared/data/tinyshakespeare.txt", "data/tinyshakespeare.txt")


def resolve_data(data: str | None, cache_dir: pathlib.Path) -> list[str]:
    """Input paths for `prepare`: a stdlib corpus, Shakespeare, or the user's."""
    if data in (None, "", "stdlib", "stdlib-code"):
        name = data or "stdlib"
        path = cache_dir / f"{name}.txt"
        if not path.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, stdlib_corpus(code_only=name == "stdlib-code"))
        return [str(path)]
    if data == "shakespeare":
        for candidate in (os.environ.get("KERAS_GPT_SHAKESPEARE"), *SHAKESPEARE_CANDIDATES):
            if candidate and os.path.exists(candidate):
                return [candidate]
        path = cache_dir / "tinyshakespeare.txt"
        if not path.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            try:
                with atomic_path(path) as temporary:
                    urllib.request.urlretrieve(SHAKESPEARE_URL, temporary)
            except OSError as error:
                raise FileNotFoundError(
                    "tinyshakespeare not found locally (set KERAS_GPT_SHAKESPEARE or pass "
                    f"--data PATH) and downloading {SHAKESPEARE_URL} failed: {error}"
                ) from None
        return [str(path)]
    return [data]


def make_tokenizer(name: str, inputs: list[str]) -> Tokenizer:
    """The tokenizer a run config names: `"byte"`, `"char"` (built from `inputs`) or a directory.

    Args:
        name: `"byte"`, `"char"` or a saved tokenizer's directory.
        inputs: the corpus files (the character set of `"char"` comes from them).
    """
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        from keras_gpt.data.documents import read_documents

        return CharTokenizer.from_text(read_documents(inputs))
    if os.path.isdir(name):
        return Tokenizer.load(name)
    raise ValueError(f"tokenizer must be 'byte', 'char' or a tokenizer directory, got {name!r}.")


def tokenize_corpus(
    inputs: list[str],
    directory: str | os.PathLike,
    tokenizer: Tokenizer,
    validation_fraction: float = 0.1,
) -> tuple[TokenStream, TokenStream]:
    """Tokenises `inputs` into `directory` with `prepare`; returns the train and validation streams.

    `prepare` skips the work when the inputs, tokenizer and arguments are
    unchanged (a resumed run re-uses the shards). Documents are separated by
    the tokenizer's `<|endoftext|>` when it has one.

    Args:
        inputs: files, folders or glob patterns (e.g. from `resolve_data`).
        directory: where the token shards go.
        tokenizer: a keras_gpt tokenizer.
        validation_fraction: the share of tokens, at the end, held out for validation.

    Example:
    >>> train, val = tokenize_corpus(["corpus.txt"], "runs/x/data/tokens", ByteTokenizer())
    """
    end_of_text = END_OF_TEXT if getattr(tokenizer, "end_of_text_id", None) is not None else None
    prepare(
        inputs,
        directory,
        tokenizer,
        validation_fraction=validation_fraction,
        end_of_text=end_of_text,
    )
    return (
        TokenStream.from_directory(directory, "train"),
        TokenStream.from_directory(directory, "val"),
    )
