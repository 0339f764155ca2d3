"""Runs the Python code blocks of the documentation, so the docs cannot rot.

Convention: every fenced block opened with ```python in docs/**/*.md and
README.md runs, on the current backend, in a fresh temporary directory. The
blocks of one page run in order in one shared namespace, like a notebook. A
block preceded on the line just above its fence by `<!-- docs: skip -->` is
not run (use it for shell-dependent or long snippets; say why in the text).
Docs use tiny configs so that the whole file runs in seconds per backend.

Each page runs in one backend's pass, the pages dealt out in turn over
TensorFlow, JAX and PyTorch (`make test` runs all three, so every page runs
once): the library code the pages call is tested on every backend by the
other test files, and running every page three times cost ~3 of the suite's
minutes. `KERAS_GPT_DOCS_EVERY_BACKEND=1` runs every page on the current backend.

Tracebacks point at the Markdown file and line of the failing code.
"""

from __future__ import annotations

import os
import pathlib
import re
from dataclasses import dataclass

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP_MARKER = "<!-- docs: skip -->"
FENCE_OPEN = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w#.+-]*)(?P<rest>.*)$"
)


@dataclass
class Block:
    path: pathlib.Path
    line: int  # 1-based line of the first code line
    code: str
    skipped: bool


def code_blocks(path: pathlib.Path) -> list[Block]:
    """Fenced ```python blocks of a Markdown file, dedented to their fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE_OPEN.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        closing = re.compile(rf"^{re.escape(indent)}{fence[0]}{{{len(fence)},}}[ \t]*$")
        start = i + 1
        end = start
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if match["lang"] == "python":
            above = lines[i - 1].strip() if i > 0 else ""
            body = [
                line[len(indent) :] if line.startswith(indent) else line.lstrip()
                for line in lines[start:end]
            ]
            blocks.append(Block(path, start + 1, "\n".join(body), above == SKIP_MARKER))
        i = end + 1
    return blocks


def pages() -> list[pathlib.Path]:
    return sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]


def runnable_pages() -> list[pathlib.Path]:
    return [p for p in pages() if any(not b.skipped for b in code_blocks(p))]


BACKENDS = ("tensorflow", "jax", "torch")
RUNNABLE_PAGES = runnable_pages()


def page_backend(page: pathlib.Path) -> str:
    """The backend whose pass runs `page`: pages are dealt out in turn."""
    return BACKENDS[RUNNABLE_PAGES.index(page) % len(BACKENDS)]


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page, tmp_path, monkeypatch):
    backend = page_backend(page)
    if keras.backend.backend() != backend and not os.environ.get("KERAS_GPT_DOCS_EVERY_BACKEND"):
        pytest.skip(f"this page runs in the {backend} pass")
    monkeypatch.chdir(tmp_path)
    keras.backend.clear_session()
    namespace = {"__name__": "__docs__"}
    for block in code_blocks(page):
        if block.skipped:
            continue
        # Pad with newlines so tracebacks show the Markdown file's own line numbers.
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(block.path), "exec"), namespace)
    check = PAGE_CHECKS.get(str(page.relative_to(ROOT)))
    if check is not None:
        check(namespace)


# -- what each page claims, checked on the names its code leaves -----------------------
# A page whose code asserts nothing itself gets a check here: what its comments and text
# say the code shows.


def _check_distributed(ns):
    # Kernels are split over "model", everything else replicated; only the mesh's axes.
    axes = {key: tuple(ns["layout_map"][key].axes) for key in ns["layout_map"]}
    assert all(set(a) <= {None, "model"} for a in axes.values()), axes
    assert any("model" in a for a in axes.values()), axes


def _check_evaluation(ns):
    import math

    result, data = ns["result"], pathlib.Path("valid.txt").read_bytes()
    # Every token after the first is scored once; bits per byte over their bytes.
    assert result["tokens"] == len(data) - 1
    assert result["perplexity"] == pytest.approx(math.exp(result["mean_loss"]))
    expected_bpb = result["mean_loss"] * result["tokens"] / (result["bytes"] * math.log(2))
    assert result["bits_per_byte"] == pytest.approx(expected_bpb)


def _check_export(ns):
    assert tuple(ns["out"]["token_ids"].shape) == (2, 23)  # prompt + up to 20 new
    assert ns["out"]["lengths"].numpy().max() <= 23
    assert tuple(ns["logits"].shape) == (1, 2, 100)


def _check_finetuning(ns):
    # Only the adapters trained and were saved: 2 blocks × 4 targets × (A, B).
    import numpy as np

    with np.load("adapters.npz") as adapters:
        assert len([name for name in adapters.files if "lora_kernel" in name]) == 16
    assert ns["summary"]["format"] == "text" and ns["summary"]["steps"] == 4
    assert ns["more"].vocabulary_size == ns["tokenizer"].vocabulary_size


def _check_pretraining(ns):
    import math

    assert math.isfinite(ns["summary"]["val_loss"]) and ns["summary"]["steps"] == 4
    assert pathlib.Path("runs/tiny/best/config.json").is_file()


def _check_quantization(ns):
    assert ns["again"].quantization == "int8"  # loads back quantized
    assert pathlib.Path("served/tiny_int8/1/saved_model.pb").is_file()
    assert ns["model"].dtype_policy.name == "bfloat16"
    assert tuple(ns["ids"].shape) == (1, 20)


def _check_index(ns):
    history = ns["model"].history.history["loss"]
    assert history[-1] < history[0]  # it learned the line
    assert tuple(ns["prompt"].shape) == (1, 10)


def _check_installation(ns):
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert ns["keras_gpt"].__version__ == pyproject["project"]["version"]
    assert ns["keras"].backend.backend() in BACKENDS


def _check_readme(ns):
    out = ns["model"].generate(ns["tokens"][:1, :8], max_new_tokens=16)
    assert tuple(out.shape) == (1, 24)


def _check_serving(ns):
    paths = {route.path for route in ns["app"].routes}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= paths


PAGE_CHECKS = {
    "docs/guides/distributed.md": _check_distributed,
    "docs/guides/evaluation.md": _check_evaluation,
    "docs/guides/export.md": _check_export,
    "docs/guides/finetuning.md": _check_finetuning,
    "docs/guides/pretraining.md": _check_pretraining,
    "docs/guides/quantization.md": _check_quantization,
    "docs/index.md": _check_index,
    "docs/installation.md": _check_installation,
    "README.md": _check_readme,
    "docs/guides/serving.md": _check_serving,
}


@pytest.mark.backend_independent
def test_every_runnable_page_checks_what_it_claims():
    """A page's code asserts something, or PAGE_CHECKS checks it after it runs."""
    unchecked = [
        str(page.relative_to(ROOT))
        for page in RUNNABLE_PAGES
        if str(page.relative_to(ROOT)) not in PAGE_CHECKS
        and not any(re.search(r"\bassert\w*\b", b.code) for b in code_blocks(page) if not b.skipped)
    ]
    assert not unchecked, f"these pages run but check nothing: {unchecked}"
    assert set(PAGE_CHECKS) <= {str(p.relative_to(ROOT)) for p in RUNNABLE_PAGES}


def test_parser_finds_quick_start_and_honours_skip(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Intro.\n\n```python\nx = 1\n```\n\n<!-- docs: skip -->\n```python\nraise SystemExit\n```\n"
        "\n!!! note\n    ```python\n    y = x + 1\n    ```\n\n```bash\nls\n```\n"
    )
    blocks = code_blocks(page)
    assert [(b.line, b.code, b.skipped) for b in blocks] == [
        (4, "x = 1", False),
        (9, "raise SystemExit", True),
        (14, "y = x + 1", False),
    ]
    assert DOCS / "index.md" in runnable_pages()


def nav_files(entries) -> list[str]:
    files = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            files += nav_files(value)
        elif not str(value).startswith(("http://", "https://")):
            files.append(str(value))
    return files


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = set(nav_files(config["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert not on_disk - in_nav, (
        f"add these pages to `nav` in mkdocs.yml: {sorted(on_disk - in_nav)}"
    )
    assert not in_nav - on_disk, (
        f"`nav` in mkdocs.yml names missing pages: {sorted(in_nav - on_disk)}"
    )
