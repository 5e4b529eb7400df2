"""The model registry: one spec string names any model a run can train.

    builtin:cnn | builtin:transformer   small models of this repository   (bench.models.builtin)
    timm:<name>                         a timm image model, random init    (bench.models.timm_models)
    hf:<name-or-config>                 a transformers causal LM, random init (bench.models.hf_models)

Each builder module provides ``check_name``, ``allowed_args`` (name → description, or None when
args pass through to the library and ``validate_args`` checks them), ``validate_args`` and
``build``. Modules are imported on first use, so importing `bench.models` does not import timm
or transformers.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

from torch import nn

from bench.data.task import TaskInfo
from bench.problems import shown

#: scheme → builder module.
SCHEMES: dict[str, str] = {
    "builtin": "bench.models.builtin",
    "timm": "bench.models.timm_models",
    "hf": "bench.models.hf_models",
}

_USAGE = "use builtin:cnn, builtin:transformer, timm:<name> or hf:<name-or-config>"


def _parse(spec: str) -> tuple[str, str] | str:
    """``(scheme, name)`` or an error message."""
    if not isinstance(spec, str) or not spec.strip():
        return f"model {shown(spec)}: empty spec; {_USAGE}"
    scheme, sep, name = spec.partition(":")
    if not sep:
        return f"model {shown(spec)}: missing scheme; {_USAGE}"
    if scheme not in SCHEMES:
        return f"model {shown(spec)}: unknown scheme {shown(scheme)}; {_USAGE}"
    return scheme, name


def _module(scheme: str) -> ModuleType:
    return importlib.import_module(SCHEMES[scheme])


def check_spec(spec: str) -> str | None:
    """An error message naming the problem with ``spec``, or None if it can be built.

    Cheap: registry lookups and at most reading a local config.json; nothing is built or downloaded.
    """
    parsed = _parse(spec)
    if isinstance(parsed, str):
        return parsed
    scheme, name = parsed
    problem = _module(scheme).check_name(name)
    return None if problem is None else f"model {shown(spec)}: {problem}"


def allowed_args(spec: str) -> dict[str, str] | None:
    """The args ``spec`` accepts (name → description); None when any keyword passes through to
    the model library (timm). Raises ValueError for an invalid spec."""
    problem = check_spec(spec)
    if problem:
        raise ValueError(problem)
    scheme, name = _parse(spec)  # type: ignore[misc]
    return _module(scheme).allowed_args(name)


def check_args(spec: str, args: dict[str, Any]) -> list[str]:
    """Problems with ``args`` for ``spec``: unknown names (with a suggestion) and bad values."""
    problem = check_spec(spec)
    if problem:
        return [problem]
    if not isinstance(args, dict):
        return [f"model {shown(spec)}: args must be a mapping, got {type(args).__name__}"]
    scheme, name = _parse(spec)  # type: ignore[misc]
    module = _module(scheme)
    allowed = module.allowed_args(name)
    problems = []
    if allowed is not None:
        for key in sorted(args):
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listing = ", ".join(sorted(allowed)) if len(allowed) <= 12 else "see its config class"
                problems.append(f"model {shown(spec)}: unknown arg {shown(key)}{hint}; allowed: {listing}")
    if problems:
        return problems
    return [f"model {shown(spec)}: {p}" for p in module.validate_args(name, args)]


def build_model(spec: str, task: TaskInfo, args: dict[str, Any] | None = None) -> nn.Module:
    """Build the model ``spec`` for ``task`` with builder ``args``, randomly initialised.

    Weights come from torch's global generator: seed it before calling for reproducible
    initialisation. ``forward(input)`` returns logits (B×classes, or B×T×vocab for LMs).
    """
    args = dict(args or {})
    problems = check_args(spec, args)
    if problems:
        raise ValueError("; ".join(problems))
    scheme, name = _parse(spec)  # type: ignore[misc]
    return _module(scheme).build(name, task, args)
