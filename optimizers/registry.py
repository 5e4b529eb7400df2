"""The optimizer registry: one name → typed settings, a builder and capability flags.

``build(name, model, **settings)`` validates ``settings`` against the optimizer's pydantic model
(unknown keys are errors) and returns one ready ``torch.optim.Optimizer``. Config validation
calls :func:`validate_settings` first, which returns human-readable problems instead of raising.
A matrix optimizer (a :class:`optimizers.matrix_base.MatrixOptimizer` subclass) registers with
:func:`matrix_spec`, which reads its settings model and capabilities from the class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
import torch
from torch import nn

from .adamw import build_adamw
from .matrix_base import MatrixOptimizer
from .muon import Muon
from .muon_deepspeed import build_muon_deepspeed
from .settings import (
    AdamWSettings,
    MatrixSettings,
    MuonDeepSpeedSettings,
    SideCarSettings,
    parse_settings,
    settings_problems,
)
from .shampoo import Shampoo
from .soap import SOAP
from .spectral_newton import SpectralNewton

Builder = Callable[[nn.Module, pydantic.BaseModel, Mapping[str, str] | None], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer."""

    name: str
    settings: type[pydantic.BaseModel]
    builder: Builder
    """(model, validated settings, layer types or None for the tagger's) → optimizer."""
    requires_full_matrices: bool
    """True if it needs whole gradient matrices: under ZeRO ≥ 1 the engine must be created by
    :func:`optimizers.deepspeed_zero.initialize`, which attaches the partition layout."""


def _build_adamw(model: nn.Module, s: pydantic.BaseModel, layer_types: Mapping[str, str] | None) -> torch.optim.Optimizer:
    return build_adamw(model, layer_types=layer_types, **s.model_dump())


def matrix_spec(name: str, cls: type[MatrixOptimizer]) -> OptimizerSpec:
    """The registry entry of a matrix optimizer class: its ``settings_model``, its
    ``requires_full_matrices`` flag, and :meth:`MatrixOptimizer.from_model` as the builder."""

    def build_(model: nn.Module, s: pydantic.BaseModel, layer_types: Mapping[str, str] | None) -> torch.optim.Optimizer:
        return cls.from_model(model, layer_types=layer_types, **s.model_dump())

    return OptimizerSpec(name, cls.settings_model, build_, cls.requires_full_matrices)


_REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> None:
    """Add an optimizer (adapters for other libraries register themselves here)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


register(OptimizerSpec("adamw", AdamWSettings, _build_adamw, requires_full_matrices=False))
register(matrix_spec("spectral_newton", SpectralNewton))
register(matrix_spec("muon", Muon))
register(matrix_spec("shampoo", Shampoo))
register(matrix_spec("soap", SOAP))
register(OptimizerSpec("muon_deepspeed", MuonDeepSpeedSettings, build_muon_deepspeed, requires_full_matrices=False))


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
    """True if ``name`` needs whole gradient matrices (at ZeRO ≥ 1: through the partition layout)."""
    return _spec(name).requires_full_matrices


def validate_settings(name: str, settings: Mapping[str, Any], prefix: str | None = None) -> list[str]:
    """Problems with ``settings`` for optimizer ``name`` (empty list when valid).

    Messages name the config path, e.g.
    ``optimizers.spectral_newton.method: must be one of svd, gram, solve, polar (got 'qr')``;
    ``prefix`` replaces the default ``optimizers.<name>``.
    """
    if name not in _REGISTRY:
        return [_unknown(name)]
    return settings_problems(_REGISTRY[name].settings, settings, prefix if prefix is not None else f"optimizers.{name}")


def build(
    name: str, model: nn.Module, *, layer_types: Mapping[str, str] | None = None, **settings: Any
) -> torch.optim.Optimizer:
    """One ready optimizer for ``model``; raises ``ValueError`` listing every settings problem.

    ``layer_types`` (parameter name → layer type) replaces the tagger's
    (:func:`optimizers.layer_types.tag_parameters`), for parameter sets the tagger cannot read.
    """
    spec = _spec(name)
    return spec.builder(model, parse_settings(spec.settings, settings, f"optimizers.{name}"), layer_types)


def describe(name: str) -> list[tuple[str, Any, str]]:
    """``(field, default, description)`` for every setting of ``name`` (for ``config --show``): the
    optimizer's own settings first, then those every matrix optimizer shares."""
    model = settings_model(name)
    fields = model.model_fields
    shared = [f for f in fields if f in MatrixSettings.model_fields] if issubclass(model, SideCarSettings) else []
    return [
        (field, fields[field].get_default(call_default_factory=True), fields[field].description or "")
        for field in [f for f in fields if f not in shared] + shared
    ]
