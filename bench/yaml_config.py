"""Reading a config file: YAML that means what it says, with bounded size.

PyYAML implements YAML 1.1, whose implicit types surprise people who write configs the way
Ray, Hugging Face or lm-evaluation-harness users do: ``1e-3`` is a *string* (1.1 floats need a
dot), ``yes``/``no``/``on``/``off`` are booleans, ``017`` is octal and ``1:30`` is 90. And a key
written twice silently keeps the last value. This module reads the YAML 1.2 core schema instead:

- plain scalars: ``true``/``false`` (any case variant of the spec) are booleans; ``null``, ``~``
  and the empty value are null; ``[-+]?[0-9]+``, ``0o17``, ``0x1F`` are integers; ``1.5``,
  ``1e-3``, ``.5``, ``.inf``, ``.nan`` are floats; everything else (``yes``, ``on``, ``1_000``,
  ``2024-01-01``) is a string. A quoted scalar is always a string.
- a key written twice in one mapping is refused (merge keys ``<<`` may be overridden);
- keys are strings; only strings, numbers, booleans, null, lists and mappings are allowed
  (``!!set``, ``!!binary``, ``!!timestamp`` and custom tags are refused);
- bounds: the file is at most :data:`MAX_BYTES`, the document with every alias expanded at most
  :data:`MAX_NODES` nodes and :data:`MAX_DEPTH` levels deep, and aliases must not be recursive.
  Aliases in PyYAML share one Python object, so a "billion laughs" document loads cheaply but
  explodes in whatever walks it later (validation, hashing, an error message); the bound is
  computed on the node graph before anything is constructed.

Every problem found is reported at once (:class:`YamlProblems`), with its line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bench.problems import clip, shown

#: Largest config file read (shipped sweeps are a few KB).
MAX_BYTES = 1 << 20
#: Largest document, in YAML nodes with every alias expanded.
MAX_NODES = 100_000
#: Deepest nesting, counted with aliases expanded.
MAX_DEPTH = 64

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_SEQ, _MAP, _MERGE = _TAG + "seq", _TAG + "map", _TAG + "merge"
_ALLOWED = {_STR, _INT, _FLOAT, _BOOL, _NULL, _SEQ, _MAP}


class YamlProblems(Exception):
    """A config file that cannot be read as a document: every problem, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


# libyaml's parser when PyYAML was built with it: ~4x faster, and it refuses nesting deeper than
# 1000 levels itself. The pure-Python parser is the fallback (same results, slower).
_Parser = yaml.cyaml.CParser if yaml.__with_libyaml__ else yaml.SafeLoader


class _Loader(_Parser, yaml.constructor.SafeConstructor, yaml.resolver.BaseResolver):  # type: ignore[misc,valid-type]
    """A safe loader with the YAML 1.2 core schema's implicit types."""

    yaml_implicit_resolvers: dict = {}  # own table: PyYAML's default is the YAML 1.1 one

    def __init__(self, text: str):
        _Parser.__init__(self, text)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.BaseResolver.__init__(self)


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#103-core-schema). Integers are listed before
# floats: the first matching resolver wins.
_RESOLVERS = [
    (_BOOL, r"true|True|TRUE|false|False|FALSE", "tTfF"),
    (_NULL, r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    (_INT, r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (_FLOAT, r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
     "-+.0123456789"),
    (_MERGE, r"<<", "<"),
]
for _tag, _pattern, _first in _RESOLVERS:
    _Loader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), list(_first))


def _construct_int(loader: _Loader, node: ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)  # "017" is 17 in YAML 1.2 (1.1 read it as octal)


def _construct_float(loader: _Loader, node: ScalarNode) -> float:
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return -math.inf if text.startswith("-") else math.inf
    if text == ".nan":
        return math.nan
    return float(text)


def _construct_bool(loader: _Loader, node: ScalarNode) -> bool:
    return loader.construct_scalar(node).lower() == "true"


_Loader.add_constructor(_INT, _construct_int)
_Loader.add_constructor(_FLOAT, _construct_float)
_Loader.add_constructor(_BOOL, _construct_bool)


def _line(node: Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _tag(node: Node) -> str:
    return shown(node.tag.replace(_TAG, "!!"))


class _Census:
    """One walk over the composed node graph: every shape problem, and the expanded size."""

    def __init__(self) -> None:
        self.problems: list[str] = []  # the document cannot be built
        self.warnings: list[str] = []  # it can (the last duplicate wins), but the user must know
        self._size: dict[int, int] = {}  # id(node) → expanded size (aliases share node objects)
        self._open: set[int] = set()  # nodes on the current path: seeing one again is a cycle

    def size(self, node: Node, where: str, depth: int = 1) -> int:
        key = id(node)
        if key in self._size:
            return self._size[key]
        if key in self._open:
            self.problems.append(f"{_line(node)}: {where or 'the document'} refers to itself through an alias")
            return MAX_NODES + 1
        if depth > MAX_DEPTH:
            self.problems.append(f"{_line(node)}: {where} is nested more than {MAX_DEPTH} levels deep")
            return MAX_NODES + 1
        self._open.add(key)
        total = 1 + sum(self.size(child, path, depth + 1) for path, child in self._children(node, where))
        self._open.discard(key)
        self._size[key] = total
        return total

    def _children(self, node: Node, where: str) -> list[tuple[str, Node]]:
        if isinstance(node, ScalarNode):
            self._tag_is(node, _ALLOWED, where)
            return []
        if isinstance(node, SequenceNode):
            self._tag_is(node, {_SEQ}, where)
            return [(f"{where}[{i}]", child) for i, child in enumerate(node.value)]
        assert isinstance(node, MappingNode)
        self._tag_is(node, {_MAP}, where)
        seen: dict[str, Node] = {}
        out = []
        for key, value in node.value:
            if key.tag == _MERGE:  # `<<: *base` — merged keys may be overridden by explicit ones
                out.append((where, value))
                continue
            if not isinstance(key, ScalarNode) or key.tag != _STR:
                text = key.value if isinstance(key, ScalarNode) else "a list or mapping"
                self.problems.append(f"{_line(key)}: key {shown(text)} in {where or 'the top level'} is not a "
                                     "string; quote it")
                continue
            name = key.value
            if name in seen:
                self.warnings.append(
                    f"{_line(key)}: duplicate key {shown(name)} in {where or 'the top level'} (first at "
                    f"{_line(seen[name])}); YAML would silently keep only the last one")
            seen[name] = key
            out.append((f"{where}.{name}" if where else name, value))
        return out

    def _tag_is(self, node: Node, tags: set[str], where: str) -> None:
        if node.tag not in tags:
            self.problems.append(f"{_line(node)}: {where or 'the document'}: tag {_tag(node)} is not supported "
                                 "(a config holds strings, numbers, booleans, null, lists and mappings)")


def _syntax_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = getattr(exc, "problem", None) or str(exc)
    return f"malformed YAML{where}: {clip(' '.join(str(what).split()))}"


def parse(text: str) -> tuple[Any, list[str]]:
    """The document in ``text`` under the rules above, and its duplicate keys (the document holds
    the last value of each, so that validation can go on and report everything else too).
    Problems that leave no document raise :class:`YamlProblems`."""
    if len(text) > MAX_BYTES:
        raise YamlProblems([f"the document is {len(text)} characters; a config is at most {MAX_BYTES}"])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        census = _Census()
        if census.size(node, "") > MAX_NODES and not census.problems:
            census.problems.append(f"the document expands to more than {MAX_NODES} values (through aliases "
                                   "or sheer size); a config is far smaller")
        if census.problems:
            raise YamlProblems(census.warnings + census.problems)
        return loader.construct_document(node), census.warnings
    except yaml.YAMLError as exc:
        raise YamlProblems([_syntax_problem(exc)]) from None
    except RecursionError:
        raise YamlProblems([f"the document is nested too deeply (at most {MAX_DEPTH} levels)"]) from None
    except (ValueError, TypeError) as exc:  # an explicit tag on a value it cannot hold, e.g. `!!int abc`
        raise YamlProblems([f"a value cannot be read: {clip(str(exc))}"]) from None
    finally:
        loader.dispose()


def loads(text: str) -> Any:
    """The document in ``text``; every problem, duplicate keys included, raises :class:`YamlProblems`."""
    doc, warnings = parse(text)
    if warnings:
        raise YamlProblems(warnings)
    return doc


def read_text(path: str | Path) -> str:
    """The UTF-8 text of a config file; raises :class:`YamlProblems` naming what is wrong."""
    path = Path(path)
    try:
        if path.is_dir():
            raise YamlProblems(["is a directory, not a config file"])
        if not path.exists():
            raise YamlProblems(["file not found"])
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlProblems([f"cannot be read ({exc.strerror or exc})"]) from None
    if len(data) > MAX_BYTES:
        raise YamlProblems([f"is larger than {MAX_BYTES // 1024} KiB; a config is far smaller"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YamlProblems([f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line} cannot be "
                            "decoded); save it as UTF-8"]) from None


def load(path: str | Path) -> tuple[Any, list[str]]:
    """The document of a config file and its duplicate keys (:func:`read_text`, :func:`parse`)."""
    return parse(read_text(path))
