"""Griffe extension for the API pages: read `Example:` sections as `Examples:`.

The project's Google-style docstrings write their doctest section as an
`Example:` line followed by unindented `>>>` lines. Griffe parses only an
indented `Examples:` section as code (rendered as a highlighted Python console
session); anything else stays text, whose `>>>` lines Markdown renders as
nested block quotes. Rewriting the section before griffe parses the docstring
fixes the rendering without touching the code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(?P<indent>[ \t]*)Examples?:[ \t]*$")


def rewrite(docstring: str) -> str:
    """Renames `Example:` to `Examples:` and indents its lines (up to a blank line)."""
    lines = docstring.split("\n")
    out, in_example, indent = [], False, ""
    for line in lines:
        heading = _EXAMPLE_HEADING.match(line)
        if heading:
            in_example, indent = True, heading["indent"]
            out.append(f"{indent}Examples:")
        elif in_example and line.strip():
            out.append(line if line.startswith(indent + "    ") else "    " + line)
        else:
            in_example = False
            out.append(line)
    return "\n".join(out)


class ExampleSections(griffe.Extension):
    """Applies `rewrite` to every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
