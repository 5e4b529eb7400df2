"""Model and dataset specs: one resolver for both registries (`bench.models.registry`,
`bench.data.registry`), built-in schemes and plug-ins alike.

A spec string is read in this order:

1. a local data file (datasets only: the registry's ``local`` test, e.g. ``train.parquet``);
2. ``scheme:name`` with one of the registry's built-in schemes (``builtin:cnn``, ``timm:resnet18``,
   ``hf:gpt2``, ``sklearn:digits``): the scheme's builder module;
3. ``module.path:function``: a plug-in, imported by `optimizers.plugins.import_reference` (a module
   path and one attribute name, nothing evaluated);
4. a bare ``name``: a plug-in declared by an installed distribution in the entry-point group
   ``specbench.models`` or ``specbench.datasets``.

A plug-in is a factory the suite calls with one positional argument and the config's args:

- model: ``factory(task: bench.data.TaskInfo, **model_args) -> torch.nn.Module`` (a function, or an
  ``nn.Module`` subclass whose constructor takes the task first);
- dataset: ``factory(seed: int, **dataset_args) -> bench.data.DataBundle`` (a function; ``seed`` is
  the trial's data seed, for held-out splits and anything random).

Its args are validated as optimizer settings are: by its ``settings_model`` (a pydantic model)
when it declares one, else by the model `optimizers.plugins.signature_model` derives from its
signature, with types as written in the config (`bench.config.validate_strict`). A factory whose
return annotation names another class, a class of the wrong kind, or anything not callable is
refused at validation; the built object is checked again.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from bench.problems import shown
from optimizers.plugins import (
    GROUPS,
    Plugin,
    ResolutionError,
    check_built,
    declared_model,
    entry_point_origin,
    entry_points,
    import_reference,
    load_entry_point,
    plugin_names,
    return_problem,
    signature_model,
)


@dataclass(frozen=True)
class Kind:
    """What one registry resolves."""

    name: str
    """``model`` or ``dataset``: the word of every message and the plug-in kind."""
    schemes: Mapping[str, str]
    """Built-in scheme → builder module (imported on first use)."""
    usage: str
    """The forms a spec may take, for messages."""
    first: str
    """What the suite passes a plug-in first, in words."""
    returns: type
    """What a plug-in must return."""
    returns_what: str
    classes_allowed: bool
    """Whether a subclass of ``returns`` may itself be the factory (models: an ``nn.Module`` class)."""


@dataclass(frozen=True)
class PluginFactory:
    """A resolved model or dataset plug-in."""

    kind: Kind
    ref: str
    origin: str
    factory: Callable[..., Any]
    args_model: type[BaseModel]

    def allowed_args(self) -> dict[str, str]:
        """Arg name → description, type and default (``side of the images (int, default 8)``)."""
        out = {}
        for name, field in self.args_model.model_fields.items():
            default = "required" if field.is_required() else f"default {shown(field.get_default(call_default_factory=True))}"
            typ = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
            out[name] = f"{field.description} ({typ}, {default})" if field.description else f"{typ}, {default}"
        return out

    def value_problems(self, args: Mapping[str, Any]) -> list[str]:
        """Problems with the values of known ``args`` (types as written, bounds, required ones)."""
        from bench.config import validate_strict
        from bench.problems import pydantic_problems

        try:
            validate_strict(self.args_model, dict(args))
        except ValidationError as exc:
            return pydantic_problems(exc)
        except TypeError as exc:  # a value JSON cannot hold
            return [str(exc)]
        return []

    def build(self, first: Any, args: Mapping[str, Any]) -> Any:
        """``factory(first, **args)`` with the args' validated values, checked to be of the kind."""
        from bench.config import validate_strict

        values = validate_strict(self.args_model, dict(args))
        kwargs = {k: getattr(values, k) for k in self.args_model.model_fields}
        return check_built(self.factory(first, **kwargs), self.kind.returns, self.kind.returns_what, self.ref)


Parsed = tuple[str, str] | PluginFactory
"""A built-in ``(scheme, name)`` or a plug-in."""


class SpecResolver:
    """Parses the spec strings of one registry (see the module docstring)."""

    def __init__(self, kind: Kind, local: Callable[[str], bool] | None = None, local_module: str = "") -> None:
        self.kind = kind
        self.local = local  # whether a spec is a local data file (scheme ``local``, read by local_module)
        self.local_module = local_module
        self._plugins: dict[str, PluginFactory] = {}  # successes only: a later install is found

    def module(self, scheme: str) -> ModuleType:
        """The builder module of a built-in scheme (or of ``local`` data files)."""
        return importlib.import_module(self.local_module if scheme == "local" else self.kind.schemes[scheme])

    def parse(self, spec: Any) -> Parsed | str:
        """``(scheme, name)`` (scheme ``local`` for a data file), a plug-in, or an error message."""
        what = f"{self.kind.name} {shown(spec)}"
        if not isinstance(spec, str) or not spec.strip():
            return f"{what}: empty spec; {self.kind.usage}"
        if self.local is not None and self.local(spec):
            return "local", spec
        scheme, sep, name = spec.partition(":")
        if sep and scheme in self.kind.schemes:
            return scheme, name
        if spec in self._plugins:
            return self._plugins[spec]
        try:
            plugin = self._load(spec, scheme, bool(sep))
            self._plugins[spec] = self._factory(plugin)
        except ResolutionError as exc:
            return f"{what}: {exc}"
        return self._plugins[spec]

    def parse_valid(self, spec: Any, problems: list[str]) -> Parsed:
        """``parse(spec)`` where a build or load needs it: ValueError naming every problem (the
        caller's args check ``problems``, else the spec's own) instead of a message to collect."""
        parsed = None if problems else self.parse(spec)
        if parsed is None or isinstance(parsed, str):
            raise ValueError("; ".join(problems) or str(parsed))
        return parsed

    def _load(self, spec: str, scheme: str, has_colon: bool) -> Plugin:
        kind, usage = self.kind, self.kind.usage
        if has_colon:
            try:
                return import_reference(spec)
            except ResolutionError as exc:
                # An undotted prefix may be a mistyped scheme as much as a module: say both.
                lead = "" if "." in scheme else f"unknown scheme {shown(scheme)}, and as a plug-in: "
                raise ResolutionError(f"{lead}{exc}; {usage}") from None
        plugin = load_entry_point(kind.name, spec)
        if plugin is None:
            form = "missing scheme" if self.local is None else "not a known spec or a supported data file"
            raise ResolutionError(
                f"{form}, and no plug-in of that name ({GROUPS[kind.name]} entry points: "
                f"{plugin_names(kind.name)}); {usage}"
            )
        return plugin

    def _factory(self, plugin: Plugin) -> PluginFactory:
        kind, obj = self.kind, plugin.obj
        if inspect.isclass(obj):
            if not (kind.classes_allowed and issubclass(obj, kind.returns)):
                raise ResolutionError(f"it is the class {obj.__qualname__}, not a {kind.name} factory; expected "
                                      f"a function ({kind.first}, **args) -> {kind.returns_what}")
        elif not callable(obj):
            raise ResolutionError(f"it is a {type(obj).__qualname__}, not a {kind.name} factory; expected a "
                                  f"function ({kind.first}, **args) -> {kind.returns_what}")
        else:
            problem = return_problem(obj, kind.returns, kind.returns_what)
            if problem:
                raise ResolutionError(problem)
        args = declared_model(obj) or signature_model(obj, skip=1, title=f"{plugin.ref} args", first=kind.first)
        return PluginFactory(kind, plugin.ref, plugin.origin, obj, args)

    def arg_problems(self, spec: str, args: Any, allowed: Mapping[str, str] | None) -> list[str]:
        """``args`` not a mapping, or names not in ``allowed`` (with a close match); None allows any."""
        what = f"{self.kind.name} {shown(spec)}"
        if not isinstance(args, dict):
            return [f"{what}: args must be a mapping, got {type(args).__name__}"]
        if allowed is None:
            return []
        problems = []
        for key in sorted(args):
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listing = ", ".join(sorted(allowed)) if len(allowed) <= 12 else "see its config class"
                problems.append(f"{what}: unknown arg {shown(key)}{hint}; allowed: {listing or '(none)'}")
        return problems

    def args_problems(self, spec: str, args: Any, spec_problem: str | None,
                      allowed: Callable[[str], Mapping[str, str] | None],
                      builtin_values: Callable[[str, str, dict[str, Any]], list[str]]) -> list[str]:
        """Every problem of ``args`` for ``spec``, checked in order: the spec itself
        (``spec_problem``, from the registry's ``check_spec``), unknown names (``allowed(spec)``,
        with a close match), then the values: a plug-in checks its own, a built-in scheme through
        ``builtin_values(scheme, name, args)``. Each value problem names the spec."""
        if spec_problem:
            return [spec_problem]
        problems = self.arg_problems(spec, args, allowed(spec))
        if problems:
            return problems
        parsed = self.parse(spec)
        if isinstance(parsed, PluginFactory):
            found = parsed.value_problems(args)
        else:
            scheme, name = parsed  # type: ignore[misc]
            found = builtin_values(scheme, name, args)
        return [f"{self.kind.name} {shown(spec)}: {p}" for p in found]

    def installed(self) -> list[tuple[str, str, PluginFactory | str]]:
        """``(name, origin, plug-in or why it does not load)`` of every entry point of this kind."""
        out: list[tuple[str, str, PluginFactory | str]] = []
        for ep in entry_points(self.kind.name):
            parsed = self.parse(ep.name)
            out.append((ep.name, entry_point_origin(ep), parsed if isinstance(parsed, (PluginFactory, str))
                        else f"shadowed: {ep.name!r} reads as a built-in spec"))
        return out
