"""Command-line overrides of a sweep file, the way Hydra and lm-evaluation-harness users write
them: ``specbench sweep CONFIG training.steps=20 optimizers.0.settings.lr=0.01``.

A dotted path walks mappings by key and lists by index; the value is read with the same YAML
rules as the file (:mod:`bench.yaml_config`: ``1e-3`` is a float, ``"20"`` a string, ``[1, 2]`` a
list). A key the schema does not know is reported by the schema like a misspelt key in the file;
a path that cannot be followed (an index past the end of a list, a key below a plain value) is
reported here. Every problem is collected, none stops the others.
"""

from __future__ import annotations

from typing import Any

from bench.problems import clip, shown
from bench.yaml_config import YamlProblems, loads


def apply_overrides(doc: dict[str, Any], assignments: list[str]) -> list[str]:
    """Apply ``path=value`` assignments to ``doc`` in place; returns the problems (empty when all
    applied). ``doc`` must not share sub-objects (copy a YAML document with aliases first)."""
    problems = []
    for text in assignments:
        path, sep, value_text = text.partition("=")
        where = f"override {clip(text)}"
        if not sep or not path or any(not part for part in path.split(".")):
            problems.append(f"{where}: expected KEY.PATH=VALUE, e.g. training.steps=20")
            continue
        try:
            value = loads(value_text)
        except YamlProblems as exc:
            problems.extend(f"{where}: {p}" for p in exc.problems)
            continue
        problem = _assign(doc, path.split("."), value)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def _assign(doc: dict[str, Any], parts: list[str], value: Any) -> str | None:
    """Set ``doc[parts[0]][parts[1]]... = value``, creating missing mappings on the way."""
    node: Any = doc
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return f"{here} is a list of {len(node)}; {shown(part)} is not an index in it (0..{len(node) - 1})"
            index = int(part)
            if last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            elif part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        else:
            return f"{here} is {shown(node)}, not a mapping or list"
    return None
