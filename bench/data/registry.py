"""The dataset registry: one spec string names any dataset a run can use.

    sklearn:digits           scikit-learn's bundled 8×8 digits            (bench.data.digits)
    builtin:text             byte-level corpus of Python's stdlib sources (bench.data.text)
    hf:<dataset>             datasets.load_dataset(<dataset>, config)     (bench.data.hub)
    path/to/file.parquet     a local .parquet/.arrow/.csv/.json/.jsonl    (bench.data.hub)

Each loader module declares ``ALLOWED_ARGS`` (name → description), ``check_name``,
``validate_args`` and ``load``; this module only parses specs and dispatches. Loader modules
are imported on first use and import their heavy libraries lazily, so config validation
(`check_spec`, `check_args`) stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

from bench.data.task import DataBundle
from bench.problems import shown

#: scheme → loader module.
SCHEMES: dict[str, str] = {
    "sklearn": "bench.data.digits",
    "builtin": "bench.data.text",
    "hf": "bench.data.hub",
}

_USAGE = "use sklearn:digits, builtin:text, hf:<name> or a local .parquet/.arrow/.csv/.json/.jsonl path"


def _local_builder(spec: str) -> str | None:
    from bench.data.hub import local_builder

    return local_builder(spec)


def _parse(spec: str) -> tuple[str, str] | str:
    """``(scheme, name)`` — scheme ``"local"`` for a data file — or an error message."""
    if not isinstance(spec, str) or not spec.strip():
        return f"dataset {shown(spec)}: empty spec; {_USAGE}"
    if _local_builder(spec) is not None:
        return "local", spec
    scheme, sep, name = spec.partition(":")
    if not sep:
        return f"dataset {shown(spec)}: not a known spec or a supported data file; {_USAGE}"
    if scheme not in SCHEMES:
        return f"dataset {shown(spec)}: unknown scheme {shown(scheme)}; {_USAGE}"
    return scheme, name


def _module(scheme: str) -> ModuleType:
    return importlib.import_module(SCHEMES["hf" if scheme == "local" else scheme])


def check_spec(spec: str) -> str | None:
    """An error message naming the problem with ``spec``, or None if it can be loaded.

    Cheap: nothing is downloaded or read beyond a file-existence check.
    """
    parsed = _parse(spec)
    if isinstance(parsed, str):
        return parsed
    scheme, name = parsed
    module = _module(scheme)
    problem = module.check_local(name) if scheme == "local" else module.check_name(name)
    return None if problem is None else f"dataset {shown(spec)}: {problem}"


def allowed_args(spec: str) -> dict[str, str]:
    """The arguments the loader of ``spec`` accepts (name → description); empty for a bad spec."""
    parsed = _parse(spec)
    if isinstance(parsed, str):
        return {}
    scheme, _ = parsed
    module = _module(scheme)
    return dict(module.FILE_ARGS if scheme == "local" else module.ALLOWED_ARGS)


def check_args(spec: str, args: dict[str, Any]) -> list[str]:
    """Problems with ``args`` for ``spec``: unknown names (with a suggestion) and bad values."""
    problem = check_spec(spec)
    if problem:
        return [problem]
    if not isinstance(args, dict):
        return [f"dataset {shown(spec)}: args must be a mapping, got {type(args).__name__}"]
    allowed = allowed_args(spec)
    problems = []
    for key in sorted(args):
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"dataset {shown(spec)}: unknown arg {shown(key)}{hint}; allowed: {', '.join(sorted(allowed))}"
            )
    if problems:
        return problems
    scheme, _ = _parse(spec)  # type: ignore[misc]
    return [f"dataset {shown(spec)}: {p}" for p in _module(scheme).validate_args(args)]


def load_dataset(spec: str, args: dict[str, Any] | None = None, seed: int = 0) -> DataBundle:
    """Load ``spec`` with loader ``args``; held-out splits are drawn from ``seed``.

    Raises ValueError with every problem found by `check_spec` / `check_args` before loading.
    """
    args = dict(args or {})
    problems = check_args(spec, args)
    if problems:
        raise ValueError("; ".join(problems))
    scheme, name = _parse(spec)  # type: ignore[misc]
    module = _module(scheme)
    if scheme == "local":
        return module.load_local(name, args, seed)
    return module.load(name, args, seed)
