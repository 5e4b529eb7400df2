"""Plug-ins: optimizers, models and datasets named from outside the package, loaded one way.

A config names a plug-in in one of two forms:

- ``module.path:attr`` — ``importlib.import_module("module.path")``, then ``getattr(module, "attr")``.
  The module path is dotted Python identifiers (no relative import, no file path) and the
  attribute one identifier: no dotted attribute walk, no call, no ``eval``. A config can thus
  reach only modules this environment can import (installed distributions, ``PYTHONPATH``), and
  a string causes nothing but an import.
- a bare ``name`` that an installed distribution declares in an entry-point group
  (:data:`GROUPS`: ``specbench.optimizers``, ``specbench.models``, ``specbench.datasets``),
  loaded with ``EntryPoint.load()``. Its value follows the packaging specification (it may
  name ``module:attr.attr``): the distribution wrote it, not the config.

Importing a module runs its top-level code, as every import does: install only plug-ins you
trust. A plug-in must be importable wherever trials run (every node of a cluster).

What a loaded object must be is the business of each registry (:mod:`optimizers.registry` for
optimizers, :mod:`bench.plugins` for models and datasets); this module gives them the loading,
the provenance shown by ``specbench list``, :func:`signature_model` (typed settings derived from
a constructor's or factory's signature) and :func:`return_problem` (a factory declares what it
builds). It lives in the lowest layer
so that ``optimizers`` and ``bench`` share it (imports go ``bench → optimizers``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict

#: Plug-in kind → entry-point group.
GROUPS: dict[str, str] = {
    "optimizer": "specbench.optimizers",
    "model": "specbench.models",
    "dataset": "specbench.datasets",
}

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ResolutionError(KeyError):
    """A name that does not resolve to a usable optimizer, model or dataset; the message names
    the reference and the reason. A ``KeyError`` (an unknown name is a failed lookup) whose
    ``str`` is the message itself."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Plugin:
    """A loaded plug-in object and where it came from."""

    ref: str
    """The reference as a config writes it: ``module.path:attr`` or an entry-point name."""
    obj: Any
    origin: str
    """Provenance for messages and listings: ``module <path>`` or ``entry point of <dist> <version>
    (<value>)``."""


def is_reference(text: str) -> bool:
    """Whether ``text`` has the ``module:attr`` form (it contains a colon)."""
    return ":" in text


def parse_reference(ref: str) -> tuple[str, str] | str:
    """``(module, attr)`` of ``module.path:attr``, or why ``ref`` is not one."""
    module, _, attr = ref.partition(":")
    if not _MODULE.fullmatch(module):
        return f"{module!r} is not a module path (dotted Python identifiers, e.g. my_package.optimizers)"
    if not _ATTR.fullmatch(attr):
        hint = " (one attribute name: no dotted walk)" if "." in attr else ""
        return f"{attr!r} is not an attribute name{hint}; write module.path:Name"
    return module, attr


def import_reference(ref: str) -> Plugin:
    """The object ``module.path:attr`` names; raises :class:`ResolutionError` naming the reason
    (not a reference, module not installed, module failed on import, no such attribute)."""
    parsed = parse_reference(ref)
    if isinstance(parsed, str):
        raise ResolutionError(parsed)
    module_name, attr = parsed
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:  # a parent package is missing or broken
        found, reason = None, f"{type(exc).__name__}: {exc}"
    else:
        reason = "not installed in this environment"
    if found is None:
        raise ResolutionError(f"cannot import module {module_name!r} ({reason})")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - a plug-in may raise anything on import; report it
        raise ResolutionError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, attr):
        raise ResolutionError(f"module {module_name!r} has no attribute {attr!r}")
    return Plugin(ref, getattr(module, attr), f"module {module_name}")


def entry_points(kind: str) -> list[importlib.metadata.EntryPoint]:
    """The entry points of ``kind``'s group that this environment's distributions declare, by name."""
    return sorted(importlib.metadata.entry_points(group=GROUPS[kind]), key=lambda ep: ep.name)


def entry_point_origin(ep: importlib.metadata.EntryPoint) -> str:
    """``entry point of <distribution> <version> (<module:attr>)``."""
    dist = ep.dist
    owner = f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
    return f"entry point of {owner} ({ep.value})"


def load_entry_point(kind: str, name: str) -> Plugin | None:
    """The plug-in ``name`` of ``kind``'s entry-point group, or None when none declares it.
    Raises :class:`ResolutionError` when two distributions declare it or loading fails."""
    found = {ep.value: ep for ep in entry_points(kind) if ep.name == name}  # one per value
    if not found:
        return None
    if len(found) > 1:
        owners = "; ".join(entry_point_origin(ep) for ep in found.values())
        raise ResolutionError(f"{GROUPS[kind]} entry point {name!r} is declared more than once: {owners}")
    (ep,) = found.values()
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - as import_reference
        raise ResolutionError(
            f"loading {entry_point_origin(ep)} failed: {type(exc).__name__}: {exc}"
        ) from None
    return Plugin(name, obj, entry_point_origin(ep))


def plugin_names(kind: str) -> str:
    """The entry-point names of ``kind`` for messages (``none installed`` when there are none)."""
    names = sorted({ep.name for ep in entry_points(kind)})
    return ", ".join(names) if names else "none installed"


# --- typed settings from a signature ----------------------------------------------------------


def _config_type(annotation: Any) -> Any:
    """``annotation`` without the union members a config cannot write (``float | Tensor`` →
    ``float``): a YAML value is never a tensor, and the dropped branch would only add a second
    error message to every mistake."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    kept = []
    for member in typing.get_args(annotation):
        try:
            pydantic.TypeAdapter(member)
        except (pydantic.PydanticSchemaGenerationError, TypeError):
            continue
        kept.append(member)
    if not kept or len(kept) == len(typing.get_args(annotation)):
        return annotation
    return typing.Union[tuple(kept)]  # noqa: UP007 - built from a runtime tuple


def signature_model(func: Callable[..., Any], *, skip: int, title: str, first: str) -> type[BaseModel]:
    """Typed settings (pydantic, ``extra="forbid"``) derived from ``func``'s signature.

    The first ``skip`` positional parameters are what the suite passes (``first`` names them in
    messages: the parameters, the model, the task, the seed); every other parameter becomes a
    field with its annotation (or the type of its default, or any value when it has neither)
    and its default (required when it has none). ``Annotated[float, Field(gt=0,
    description=...)]`` gives bounds and a description. ``*args`` and ``**kwargs`` take nothing
    from a config. Raises :class:`ResolutionError` when the signature cannot be read, has
    fewer than ``skip`` positional parameters, or has a positional-only setting.
    """
    target = func.__init__ if inspect.isclass(func) else func
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise ResolutionError(f"its signature cannot be read ({exc})") from None
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable forward references: fall back to what is there
        hints = {}
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < skip and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise ResolutionError(f"it must take {first} as its first positional argument; its signature is {sig}")
    fields: dict[str, Any] = {}
    for p in params:
        if p in positional[:skip] or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind == p.POSITIONAL_ONLY:
            raise ResolutionError(f"parameter {p.name!r} is positional-only, so a config cannot set it")
        default = ... if p.default is p.empty else p.default
        annotation = hints.get(p.name, p.annotation)
        if annotation is p.empty or isinstance(annotation, str):
            annotation = type(default) if default not in (..., None) else Any
        fields[p.name] = (_config_type(annotation), default)
    try:
        return pydantic.create_model(
            title, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
        )
    except (pydantic.PydanticUserError, TypeError, NameError) as exc:
        raise ResolutionError(f"no settings model can be derived from its signature {sig} ({exc})") from None


def declared_model(obj: Any) -> type[BaseModel] | None:
    """``obj.settings_model`` when it declares one; raises :class:`ResolutionError` when it is
    not a pydantic model class."""
    model = getattr(obj, "settings_model", None)
    if model is None:
        return None
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise ResolutionError(f"its settings_model is {model!r}, not a pydantic.BaseModel subclass")
    return model


def return_problem(func: Callable[..., Any], expected: type, what: str) -> str | None:
    """Why the factory ``func`` is not declared to return an ``expected`` (None when it is).

    A factory states what it builds — its return annotation names ``expected`` or a subclass —
    so that one of the wrong kind, or any other callable (``os:system``), is refused at
    validation, before anything runs; the built object is checked again (:func:`check_built`).
    """
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # noqa: BLE001 - unresolvable names, or not a Python function at all
        return f"its return annotation cannot be read ({type(exc).__name__}: {exc}); a factory is a Python function"
    if "return" not in hints:
        return f"a factory must declare what it returns: annotate it -> {what.removeprefix('a ')}"
    returned = hints["return"]
    if not (inspect.isclass(returned) and issubclass(returned, expected)):
        shown_type = returned.__qualname__ if inspect.isclass(returned) else str(returned)
        return f"it returns {shown_type}, not {what}"
    return None


def check_built(obj: Any, expected: type, what: str, ref: str) -> Any:
    """``obj`` if it is an ``expected``; otherwise ``TypeError`` naming the plug-in ``ref``."""
    if not isinstance(obj, expected):
        raise TypeError(f"plug-in {ref!r} returned {type(obj).__qualname__}, not {what}")
    return obj
