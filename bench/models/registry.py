"""The model registry: one spec string names any model a run can train.

    builtin:cnn | builtin:transformer   small models of this repository   (bench.models.builtin)
    timm:<name>                         a timm image model, random init    (bench.models.timm_models)
    hf:<name-or-config>                 a transformers causal LM, random init (bench.models.hf_models)
    module.path:function | <name>       a plug-in: factory(task, **model_args) -> nn.Module,
                                        imported or an entry point of specbench.models (bench.plugins)

Each builder module provides ``check_name``, ``allowed_args`` (name → description, or None when
args pass through to the library and ``validate_args`` checks them), ``validate_args`` and
``build``. Specs are parsed by `bench.plugins.SpecResolver`, shared with the dataset registry.
Modules are imported on first use, so importing `bench.models` does not import timm or
transformers.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bench.data.task import TaskInfo
from bench.plugins import Kind, PluginFactory, SpecResolver
from bench.problems import shown

#: scheme → builder module.
SCHEMES: dict[str, str] = {
    "builtin": "bench.models.builtin",
    "timm": "bench.models.timm_models",
    "hf": "bench.models.hf_models",
}

RESOLVER = SpecResolver(Kind(
    name="model", schemes=SCHEMES, first="the task (bench.data.TaskInfo)", returns=nn.Module,
    returns_what="a torch.nn.Module", classes_allowed=True,
    usage="use builtin:cnn, builtin:transformer, timm:<name>, hf:<name-or-config>, or a plug-in: "
          "module.path:function or an entry-point name",
))


def check_spec(spec: str) -> str | None:
    """An error message naming the problem with ``spec``, or None if it can be built.

    Cheap: registry lookups, at most reading a local config.json, and importing a plug-in's
    module; nothing is built or downloaded.
    """
    parsed = RESOLVER.parse(spec)
    if isinstance(parsed, str):
        return parsed
    if isinstance(parsed, PluginFactory):
        return None  # loaded and of the right kind
    scheme, name = parsed
    problem = RESOLVER.module(scheme).check_name(name)
    return None if problem is None else f"model {shown(spec)}: {problem}"


def allowed_args(spec: str) -> dict[str, str] | None:
    """The args ``spec`` accepts (name → description); None when any keyword passes through to
    the model library (timm). Raises ValueError for an invalid spec."""
    problem = check_spec(spec)
    if problem:
        raise ValueError(problem)
    parsed = RESOLVER.parse(spec)
    if isinstance(parsed, PluginFactory):
        return parsed.allowed_args()
    scheme, name = parsed  # type: ignore[misc]
    return RESOLVER.module(scheme).allowed_args(name)


def check_args(spec: str, args: dict[str, Any]) -> list[str]:
    """Problems with ``args`` for ``spec``: unknown names (with a suggestion) and bad values."""
    return RESOLVER.args_problems(spec, args, check_spec(spec), allowed_args,
                                  lambda scheme, name, a: RESOLVER.module(scheme).validate_args(name, a))


def build_model(spec: str, task: TaskInfo, args: dict[str, Any] | None = None) -> nn.Module:
    """Build the model ``spec`` for ``task`` with builder ``args``, randomly initialised.

    Weights come from torch's global generator: seed it before calling for reproducible
    initialisation. ``forward(input)`` returns logits (B×classes, or B×T×vocab for LMs).
    """
    args = dict(args or {})
    parsed = RESOLVER.parse_valid(spec, check_args(spec, args))
    if isinstance(parsed, PluginFactory):
        return parsed.build(task, args)
    scheme, name = parsed  # type: ignore[misc]
    return RESOLVER.module(scheme).build(name, task, args)
