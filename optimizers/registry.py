"""The optimizer registry: one name → typed settings, a builder and capability flags.

``build(name, model, **settings)`` validates ``settings`` against the optimizer's pydantic model
(unknown keys are errors) and returns one ready ``torch.optim.Optimizer``. Config validation
calls :func:`validate_settings` first, which returns human-readable problems instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

import pydantic
import torch
from torch import nn

from .adamw import build_adamw
from .muon import Muon
from .settings import AdamWSettings, MuonSettings, ShampooSettings, SOAPSettings, SpectralNewtonSettings
from .shampoo import Shampoo
from .soap import SOAP
from .spectral_newton import SpectralNewton


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer."""

    name: str
    settings: type[pydantic.BaseModel]
    builder: Callable[[nn.Module, pydantic.BaseModel], torch.optim.Optimizer]
    requires_full_matrices: bool
    """True if it needs whole gradient matrices (cannot run on ZeRO ≥ 1 flat partitions)."""


def _build_adamw(model: nn.Module, s: pydantic.BaseModel) -> torch.optim.Optimizer:
    assert isinstance(s, AdamWSettings)
    return build_adamw(model, **s.model_dump())


def _build_spectral_newton(model: nn.Module, s: pydantic.BaseModel) -> torch.optim.Optimizer:
    assert isinstance(s, SpectralNewtonSettings)
    return SpectralNewton.from_model(model, **s.model_dump())


def _builder(cls: type, settings_cls: type[pydantic.BaseModel]) -> Callable[..., torch.optim.Optimizer]:
    """Builder of a matrix optimizer: grouping keys go to ``from_model``, the rest to the class."""

    def build_(model: nn.Module, s: pydantic.BaseModel) -> torch.optim.Optimizer:
        assert isinstance(s, settings_cls)
        return cls.from_model(model, **s.model_dump())

    return build_


_REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> None:
    """Add an optimizer (adapters for other libraries register themselves here)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


register(OptimizerSpec("adamw", AdamWSettings, _build_adamw, requires_full_matrices=False))
register(OptimizerSpec("spectral_newton", SpectralNewtonSettings, _build_spectral_newton, requires_full_matrices=True))
register(OptimizerSpec("muon", MuonSettings, _builder(Muon, MuonSettings), requires_full_matrices=True))
register(OptimizerSpec("shampoo", ShampooSettings, _builder(Shampoo, ShampooSettings), requires_full_matrices=True))
register(OptimizerSpec("soap", SOAPSettings, _builder(SOAP, SOAPSettings), requires_full_matrices=True))


def available() -> list[str]:
    """Registered optimizer names, sorted."""
    return sorted(_REGISTRY)


def _spec(name: str) -> OptimizerSpec:
    if name not in _REGISTRY:
        raise KeyError(_unknown(name))
    return _REGISTRY[name]


def _unknown(name: str) -> str:
    return f"unknown optimizer {name!r}; available: {', '.join(available())}"


def settings_model(name: str) -> type[pydantic.BaseModel]:
    """The pydantic settings model of ``name`` (``extra='forbid'``, all fields defaulted)."""
    return _spec(name).settings


def requires_full_matrices(name: str) -> bool:
    """True if ``name`` needs whole gradient matrices (ZeRO stage 0 only)."""
    return _spec(name).requires_full_matrices


_BOUND_WORDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": ("≥", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("≤", "le"),
}


def _format_error(model: type[pydantic.BaseModel], prefix: str, err: Mapping[str, Any]) -> str:
    loc = ".".join(str(x) for x in err["loc"])
    where = f"{prefix}.{loc}" if loc else prefix
    kind = err["type"]
    got = err.get("input")
    if kind == "literal_error":
        field = model.model_fields.get(str(err["loc"][0]))
        choices = [a for a in get_args(field.annotation)] if field is not None else []
        allowed = ", ".join(str(c) for c in choices) if choices else err.get("ctx", {}).get("expected", "")
        return f"{where}: must be one of {allowed} (got {got!r})"
    if kind == "extra_forbidden":
        return f"{where}: unknown setting; allowed: {', '.join(model.model_fields)}"
    if kind in _BOUND_WORDS:
        symbol, key = _BOUND_WORDS[kind]
        return f"{where}: must be {symbol} {err['ctx'][key]} (got {got!r})"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if kind.startswith("value_error") or kind == "assertion_error" or not loc:
        return f"{where}: {msg}"
    return f"{where}: {msg[:1].lower() + msg[1:]} (got {got!r})"


def validate_settings(name: str, settings: Mapping[str, Any], prefix: str | None = None) -> list[str]:
    """Problems with ``settings`` for optimizer ``name`` (empty list when valid).

    Messages name the config path, e.g.
    ``optimizers.spectral_newton.method: must be one of svd, gram, solve, polar (got 'qr')``;
    ``prefix`` replaces the default ``optimizers.<name>``.
    """
    if name not in _REGISTRY:
        return [_unknown(name)]
    model = _REGISTRY[name].settings
    where = prefix if prefix is not None else f"optimizers.{name}"
    if not isinstance(settings, Mapping):
        return [f"{where}: expected a mapping of settings (got {type(settings).__name__})"]
    try:
        model.model_validate(dict(settings))
    except pydantic.ValidationError as exc:
        return [_format_error(model, where, e) for e in exc.errors()]
    return []


def build(name: str, model: nn.Module, **settings: Any) -> torch.optim.Optimizer:
    """One ready optimizer for ``model``; raises ``ValueError`` listing every settings problem."""
    spec = _spec(name)
    problems = validate_settings(name, settings)
    if problems:
        raise ValueError("invalid optimizer settings:\n  " + "\n  ".join(problems))
    return spec.builder(model, spec.settings.model_validate(settings))


def describe(name: str) -> list[tuple[str, Any, str]]:
    """``(field, default, description)`` for every setting of ``name`` (for ``config --show``)."""
    rows = []
    for field, info in settings_model(name).model_fields.items():
        default = info.get_default(call_default_factory=True)
        rows.append((field, default, info.description or ""))
    return rows
