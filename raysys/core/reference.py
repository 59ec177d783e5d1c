"""The configuration reference, generated from the field docstrings of raysys.core.config.

    python -m raysys.core.reference > docs/configuration.md

A test checks that docs/configuration.md is what this prints, so the page lists every field
with its type, default and meaning as the code declares them.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from raysys.core.config import RUNTIME, RaysysConfig


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it, for a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _default(f) -> Any:
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def _type(f) -> str:
    return str(f.type).replace("typing.", "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
    docs = field_docs(cls)
    rows = []
    for f in fields(cls):
        default = _default(f)
        if is_dataclass(default):
            continue
        if isinstance(default, list) and default and is_dataclass(default[0]):
            shown = f"[{type(default[0]).__name__}()] (see below)"
        else:
            shown = repr(default)
        meaning = docs.get(f.name, "") + (" *Runtime: reruns nothing.*" if f.metadata.get(RUNTIME) else "")
        rows.append((f"{prefix}{f.name}", _type(f), shown, meaning))
    return rows


def sections(cls: type = RaysysConfig, prefix: str = "") -> list[tuple[str, type]]:
    """(key prefix, dataclass) of every section, nested ones and list items included."""
    out = []
    for f in fields(cls):
        default = _default(f)
        if is_dataclass(default):
            out.append((f"{prefix}{f.name}", type(default)))
            out += sections(type(default), f"{prefix}{f.name}.")
        elif isinstance(default, list) and default and is_dataclass(default[0]):
            out.append((f"{prefix}{f.name}[]", type(default[0])))
            out += sections(type(default[0]), f"{prefix}{f.name}[].")
    return out


def all_field_paths() -> list[str]:
    return [row[0] for key, cls in sections() for row in _rows(cls, key + ".")]


def reference() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the field docstrings in `raysys/core/config/` by "
             "`python -m raysys.core.reference > docs/configuration.md`; do not edit by hand.", "",
             "Every key can be set in the YAML file or on the command line as `section.key=value` "
             "(lists and mappings in YAML flow syntax, e.g. `compare.seeds=[0, 1, 2]`; a list item by its index, "
             "e.g. `synthesis.plans.0.ratio=0.2`). A key marked *Runtime* changes how a stage runs, never what it "
             "writes, so changing it reruns nothing; every other key reruns each stage that reads its section "
             "and what depends on it ([design.md](design.md)).", ""]
    for key, cls in sections():
        doc = " ".join((cls.__doc__ or "").split())
        lines += [f"## `{key}`", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k}` | `{_cell(t)}` | `{_cell(d)}` | {_cell(m)} |" for k, t, d, m in _rows(cls, key + ".")]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
