"""The optimizer registry: one name → typed settings, a builder and capability flags.

``build(name, model, **settings)`` validates ``settings`` against the optimizer's pydantic model
(unknown keys are errors) and returns one ready ``torch.optim.Optimizer``. Config validation
calls :func:`validate_settings` first, which returns human-readable problems instead of raising.
A matrix optimizer (a :class:`optimizers.matrix_base.MatrixOptimizer` subclass) registers with
:func:`matrix_spec`, which reads its settings model and capabilities from the class.

Every function taking a ``name`` also takes a plug-in (:func:`resolve`): ``module.path:attr`` or
the name of an entry point in the ``specbench.optimizers`` group (:mod:`optimizers.plugins`).
A plug-in resolves into the same :class:`OptimizerSpec` built-ins have, so validation, the ZeRO
check, the build and ``step_metrics`` treat it exactly like one. Built-in names win over entry
points of the same name.
"""

from __future__ import annotations

import dataclasses
import inspect
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
from .param_groups import trainable_parameters
from .plugins import (
    Plugin,
    ResolutionError,
    check_built,
    declared_model,
    entry_point_origin,
    entry_points,
    import_reference,
    is_reference,
    load_entry_point,
    plugin_names,
    return_problem,
    signature_model,
)
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
    """True if it needs whole gradient matrices: under ZeRO ≥ 1 only a :class:`MatrixOptimizer`
    gets them (:func:`optimizers.deepspeed_zero.initialize` attaches the partition layout)."""
    matrix_frame: bool = False
    """True if it builds a :class:`MatrixOptimizer` (:func:`matrix_spec`): whole matrices at every ZeRO stage."""


def _build_adamw(model: nn.Module, s: pydantic.BaseModel, layer_types: Mapping[str, str] | None) -> torch.optim.Optimizer:
    return build_adamw(model, layer_types=layer_types, **s.model_dump())


def matrix_spec(name: str, cls: type[MatrixOptimizer]) -> OptimizerSpec:
    """The registry entry of a matrix optimizer class: its ``settings_model``, its
    ``requires_full_matrices`` flag, and :meth:`MatrixOptimizer.from_model` as the builder."""

    def build_(model: nn.Module, s: pydantic.BaseModel, layer_types: Mapping[str, str] | None) -> torch.optim.Optimizer:
        return cls.from_model(model, layer_types=layer_types, **s.model_dump())

    return OptimizerSpec(name, cls.settings_model, build_, cls.requires_full_matrices, matrix_frame=True)


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
    """Built-in optimizer names, sorted (plug-ins: :func:`installed_plugins`)."""
    return sorted(_REGISTRY)


# --- plug-ins ----------------------------------------------------------------------------------

_PLUGINS: dict[str, OptimizerSpec] = {}  # resolved plug-ins by reference (failures are not kept)

_KINDS = (
    "a torch.optim.Optimizer subclass (a matrix optimizer: of optimizers.MatrixOptimizer), "
    "a factory function (model, **settings) -> torch.optim.Optimizer, or an optimizers.OptimizerSpec"
)


def _class_builder(cls: type[torch.optim.Optimizer]) -> Builder:
    def build_(model: nn.Module, s: pydantic.BaseModel, layer_types: Mapping[str, str] | None) -> torch.optim.Optimizer:
        return cls([p for _, p in trainable_parameters(model)], **s.model_dump())

    return build_


def _factory_builder(factory: Callable[..., Any], ref: str) -> Builder:
    def build_(model: nn.Module, s: pydantic.BaseModel, layer_types: Mapping[str, str] | None) -> torch.optim.Optimizer:
        return check_built(factory(model, **s.model_dump()), torch.optim.Optimizer, "a torch.optim.Optimizer", ref)

    return build_


def plugin_spec(plugin: Plugin) -> OptimizerSpec:
    """The registry entry of a loaded plug-in, named by its reference.

    - an :class:`OptimizerSpec`: taken as it is;
    - a :class:`MatrixOptimizer` subclass: :func:`matrix_spec` (grouping, AdamW side-car,
      owner-rank sharding, checkpoints and metrics from the frame);
    - another ``torch.optim.Optimizer`` subclass: built as ``cls(trainable parameters, **settings)``;
    - any other callable, a factory: ``factory(model, **settings)`` must return a
      ``torch.optim.Optimizer``.

    Settings of the last two: their ``settings_model`` attribute (a pydantic model) if they
    declare one, else the model :func:`optimizers.plugins.signature_model` derives from the
    signature after its first parameter. ``requires_full_matrices``: their attribute of that name
    (default False). Raises :class:`ResolutionError` for anything else.
    """
    obj, ref = plugin.obj, plugin.ref
    if isinstance(obj, OptimizerSpec):
        return dataclasses.replace(obj, name=ref)
    if inspect.isclass(obj) and issubclass(obj, MatrixOptimizer):
        return matrix_spec(ref, obj)
    if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer):
        builder, first = _class_builder(obj), "the parameters"
    elif callable(obj) and not inspect.isclass(obj):
        problem = return_problem(obj, torch.optim.Optimizer, "a torch.optim.Optimizer")
        if problem:
            raise ResolutionError(problem)
        builder, first = _factory_builder(obj, ref), "the model"
    else:
        what = f"the class {obj.__qualname__}" if inspect.isclass(obj) else f"a {type(obj).__qualname__}"
        raise ResolutionError(f"it is {what}, not an optimizer; expected {_KINDS}")
    settings = declared_model(obj) or signature_model(obj, skip=1, title=f"{ref} settings", first=first)
    full = getattr(obj, "requires_full_matrices", False)
    if not isinstance(full, bool):
        raise ResolutionError(f"its requires_full_matrices is {full!r}, not true or false")
    return OptimizerSpec(ref, settings, builder, full)


def resolve(name: str) -> OptimizerSpec:
    """The registry entry of ``name``: a built-in, else a plug-in — ``module.path:attr`` or an
    entry point of ``specbench.optimizers`` (:func:`plugin_spec`). Raises
    :class:`optimizers.plugins.ResolutionError` (a ``KeyError``) naming ``name`` and the reason."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name not in _PLUGINS:
        try:
            plugin = import_reference(name) if is_reference(name) else load_entry_point("optimizer", name)
            if plugin is not None:
                _PLUGINS[name] = plugin_spec(plugin)
        except ResolutionError as exc:
            raise ResolutionError(f"optimizer {name!r}: {exc}") from None
        if plugin is None:
            raise ResolutionError(_unknown(name))
    return _PLUGINS[name]


def check_name(name: str) -> str | None:
    """Why ``name`` names no usable optimizer (for config validation), or None."""
    try:
        resolve(name)
    except ResolutionError as exc:
        return str(exc)
    return None


def installed_plugins() -> list[tuple[str, str]]:
    """``(name, origin)`` of every entry point in ``specbench.optimizers``, by name; ``origin``
    says which distribution declares it (and that a built-in of that name wins, if one does)."""
    return [
        (ep.name, entry_point_origin(ep) + (" — shadowed by the built-in of that name" if ep.name in _REGISTRY else ""))
        for ep in entry_points("optimizer")
    ]


def _unknown(name: str) -> str:
    return (f"unknown optimizer {name!r}; available: {', '.join(available())}; plug-ins: "
            f"{plugin_names('optimizer')} (or name one as module.path:Class)")


def settings_model(name: str) -> type[pydantic.BaseModel]:
    """The pydantic settings model of ``name`` (``extra='forbid'``; built-ins default every field)."""
    return resolve(name).settings


def requires_full_matrices(name: str) -> bool:
    """True if ``name`` needs whole gradient matrices (at ZeRO ≥ 1: through the partition layout)."""
    return resolve(name).requires_full_matrices


def builds_matrix_frame(name: str) -> bool:
    """True if ``name`` builds a :class:`MatrixOptimizer` (whole matrices at every ZeRO stage)."""
    return resolve(name).matrix_frame


def validate_settings(name: str, settings: Mapping[str, Any], prefix: str | None = None) -> list[str]:
    """Problems with ``settings`` for optimizer ``name`` (empty list when valid).

    Messages name the config path, e.g.
    ``optimizers.spectral_newton.method: must be one of svd, gram, solve, polar (got 'qr')``;
    ``prefix`` replaces the default ``optimizers.<name>``.
    """
    problem = check_name(name)
    if problem:
        return [problem]
    return settings_problems(resolve(name).settings, settings, prefix if prefix is not None else f"optimizers.{name}")


def build(
    name: str, model: nn.Module, *, layer_types: Mapping[str, str] | None = None, **settings: Any
) -> torch.optim.Optimizer:
    """One ready optimizer for ``model``; raises ``ValueError`` listing every settings problem.

    ``layer_types`` (parameter name → layer type) replaces the tagger's
    (:func:`optimizers.layer_types.tag_parameters`), for parameter sets the tagger cannot read.
    """
    spec = resolve(name)
    return spec.builder(model, parse_settings(spec.settings, settings, f"optimizers.{name}"), layer_types)


def describe(name: str) -> list[tuple[str, Any, str]]:
    """``(field, default, description)`` for every setting of ``name`` (for ``config --show``): the
    optimizer's own settings first, then those every matrix optimizer shares. A required setting
    (a plug-in's parameter without a default) has the default ``...``."""
    model = settings_model(name)
    fields = model.model_fields
    shared = [f for f in fields if f in MatrixSettings.model_fields] if issubclass(model, SideCarSettings) else []
    return [
        (field, ... if fields[field].is_required() else fields[field].get_default(call_default_factory=True),
         fields[field].description or "")
        for field in [f for f in fields if f not in shared] + shared
    ]
