"""The package's floor plan, checked from the source: no import circles, no upward imports.

Every `import` statement in `keras_gpt/` is read with `ast` (those inside
functions too: a lazy import is still an import). Each top-level part of the
package sits on a floor; a module may import its own part or a part on a lower
floor, never a higher one, and the module graph has no cycles. The floors are
the ones the architecture page (docs/concepts/architecture.md) draws.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_gpt"

#: Part of the package -> floor. A part imports only from lower floors (and itself).
FLOORS = {
    "backend": 0,
    "files": 0,
    "random": 1,
    "tokenizers": 1,
    "data": 2,
    "presets": 2,
    "generation": 2,
    "model": 3,
    "distribution": 4,
    "evaluation": 4,
    "training": 5,
    "export": 5,
    "serving": 6,
    "cli": 7,
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """The keras_gpt modules `path` imports (a `from pkg import name` that names a
    submodule counts as importing that submodule; `importlib.import_module("keras_gpt.x")`
    with a literal name counts too: an import by name is still an import)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).split(".")[0] == "keras_gpt"
        ):
            found.add(node.args[0].value)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "keras_gpt"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "keras_gpt":
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def part(module: str) -> str | None:
    """`keras_gpt.model.layers.block` -> `model`; the package face -> None."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else None


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imported_modules(path, known) - {name} for name, path in modules().items()}


def test_every_part_has_a_floor():
    parts = {part(name) for name in modules()} - {None}
    assert parts <= set(FLOORS), f"parts without a floor: {sorted(parts - set(FLOORS))}"


def test_no_module_imports_a_higher_floor_or_the_package_face():
    problems = []
    for module, imports in graph().items():
        here = part(module)
        if here is None:
            continue  # keras_gpt/__init__.py: the package face re-exports every floor
        for target in imports:
            there = part(target)
            if there is None:
                problems.append(f"{module} imports the package face {target}")
            elif there != here and FLOORS[there] >= FLOORS[here]:
                problems.append(
                    f"{module} (floor {FLOORS[here]}) imports {target} (floor {FLOORS[there]})"
                )
    assert not problems, "\n".join(sorted(problems))


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("forbidden", ["model", "generation", "training", "export"])
def test_tokenizers_and_data_import_no_model_code(forbidden):
    for module, imports in graph().items():
        if part(module) in ("tokenizers", "data"):
            assert not [t for t in imports if part(t) == forbidden], module


def test_the_checker_sees_a_planted_upward_import_and_circle(tmp_path, monkeypatch):
    """The checks above would fail on a bad tree: plant one and look."""
    tree = tmp_path / "keras_gpt"
    (tree / "model").mkdir(parents=True)
    (tree / "backend").mkdir()
    (tree / "__init__.py").write_text("")
    (tree / "model" / "__init__.py").write_text("")
    (tree / "backend" / "__init__.py").write_text("")
    (tree / "model" / "gpt.py").write_text("from keras_gpt.model import lora\n")
    (tree / "model" / "lora.py").write_text("def f():\n    from keras_gpt.model.gpt import x\n")
    (tree / "backend" / "ops.py").write_text("from keras_gpt.model.gpt import GPT\n")
    (tree / "backend" / "lazy.py").write_text(
        "import importlib\nimportlib.import_module('keras_gpt.model')\n"
    )
    monkeypatch.setitem(globals(), "PACKAGE", tree)
    with pytest.raises(AssertionError, match="floor 0") as raised:
        test_no_module_imports_a_higher_floor_or_the_package_face()
    assert "keras_gpt.backend.lazy (floor 0) imports keras_gpt.model" in str(raised.value)
    with pytest.raises(AssertionError, match="keras_gpt.model.gpt -> keras_gpt.model.lora"):
        test_no_import_circles()
