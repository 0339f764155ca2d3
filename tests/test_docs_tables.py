"""The tables the README and the docs keep about the package hold by construction: the
`keras-gpt` commands, the extras in `pyproject.toml` and the package's folders and files
are read from the code and compared with what the pages list."""

from __future__ import annotations

import re
import sys

import pytest
from helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGE = ROOT / "keras_gpt"
README = ROOT / "README.md"
INSTALLATION = ROOT / "docs" / "installation.md"
ARCHITECTURE = ROOT / "docs" / "concepts" / "architecture.md"


def table(path, header: str) -> list[list[str]]:
    """The body rows (lists of cells) of the first Markdown table in `path` whose
    header row starts with the cell `header`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == header:
            rows = []
            for row in lines[i + 2 :]:  # after the header and its --- line
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            assert rows, f"{path.name}: the table under '{header}' is empty"
            return rows
    raise AssertionError(f"{path.name} has no table whose header starts with '{header}'")


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def cli_commands(capsys) -> list[str]:
    """The commands `keras-gpt --help` lists, in its order."""
    from keras_gpt.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    usage = capsys.readouterr().out
    section = usage.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    commands = [line.split()[0] for line in section.splitlines() if line.strip()]
    assert len(commands) >= 4, usage
    return commands


def package_parts() -> set[str]:
    """keras_gpt's subpackages (`name/`) and top-level modules (`name.py`)."""
    folders = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    return folders | modules


def python_files(folder) -> set[str]:
    return {p.name for p in (PACKAGE / folder).glob("*.py") if p.name != "__init__.py"}


def test_commands_match_the_readme_and_the_docs(capsys):
    commands = cli_commands(capsys)
    import keras_gpt.cli

    if hasattr(keras_gpt.cli, "COMMANDS"):  # what main dispatches on
        assert list(keras_gpt.cli.COMMANDS) == commands
    (readme,) = [row for row in table(README, "path") if row[0] == "`keras_gpt/cli.py`"]
    assert [c for c in code_spans(readme[1]) if c != "keras-gpt"] == commands
    installed = [row[0] for row in table(INSTALLATION, "command")]
    assert installed == [f"`keras-gpt {c}`" for c in commands]
    (floor,) = [row for row in table(ARCHITECTURE, "floor") if row[1] == "`cli.py`"]
    assert [c for c in code_spans(floor[2]) if c != "keras-gpt"] == commands


def test_extras_match_the_installation_page_and_the_test_environment():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    page = INSTALLATION.read_text(encoding="utf-8")
    backends = re.findall(r'pip install -c constraints.txt -e "\.\[(\w+)\]"', page)
    listed = [row[0].strip("`") for row in table(INSTALLATION, "extra")]
    assert len(set(listed)) == len(listed)
    assert sorted(backends + listed) == sorted(extras)
    # make test installs every extra, so every optional integration is tested. The
    # Makefile spells names as the package metadata normalises them (lm-eval).
    makefile = (ROOT / "Makefile").read_text()
    (installed,) = re.findall(r"^EXTRAS = ([\w,-]+)$", makefile, re.MULTILINE)
    assert '-e ".[$(EXTRAS)]"' in makefile
    normalise = {re.sub(r"[-_.]+", "-", e).lower() for e in extras}
    assert set(installed.split(",")) == normalise


def test_package_folders_match_the_readme_and_the_architecture_page():
    parts = package_parts()
    readme = {
        row[0].strip("`").removeprefix("keras_gpt/")
        for row in table(README, "path")
        if row[0].startswith("`keras_gpt/")
    }
    assert readme == parts
    rows = table(ARCHITECTURE, "floor")
    floors = {part for row in rows for part in code_spans(row[1])}
    assert floors == parts
    # A row about one folder names its files: each exists, and each file is named.
    for row in rows:
        (part,) = code_spans(row[1]) if len(code_spans(row[1])) == 1 else [None]
        if part is None or not part.endswith("/"):
            continue
        named = {span for span in code_spans(row[2]) if span.endswith(".py")}
        if part == "model/":
            # `layers/` (the layer files) → `gpt.py` ...: the two halves of the row.
            layers, model = row[2].split("→")
            assert {s for s in code_spans(layers) if s.endswith(".py")} == python_files(
                "model/layers"
            )
            named = {s for s in code_spans(model) if s.endswith(".py")}
        assert named == python_files(part), part


def test_home_page_links_every_guide():
    rows = table(ROOT / "docs" / "index.md", "I want to…")
    linked = {link for row in rows for link in re.findall(r"\]\(guides/([\w-]+\.md)\)", row[1])}
    guides = {p.name for p in (ROOT / "docs" / "guides").glob("*.md")}
    assert linked == guides, (
        f"docs/index.md's 'I want to…' table: add a row for {sorted(guides - linked)}, "
        f"drop links to missing guides {sorted(linked - guides)}"
    )
