"""Optimizers for specbench: Spectral Newton (docs/science/spectral_newton.md), AdamW, the matrix baselines Muon,
Shampoo and SOAP, parameter grouping by layer type, owner-rank sharding at ZeRO-0.

Public API (docs/ARCHITECTURE.md): :func:`build`, :func:`available`, :func:`settings_model`,
:func:`validate_settings`, :func:`requires_full_matrices`, :func:`describe`; plug-ins from outside the
package (``module.path:Class`` or an entry point of ``specbench.optimizers``) through :func:`resolve`,
:func:`check_name` and :func:`installed_plugins` (:mod:`optimizers.plugins`); the frame every matrix
optimizer subclasses, :class:`MatrixOptimizer` with its settings base :class:`MatrixSettings`
(:mod:`optimizers.matrix_base`), registered with :func:`register` and :func:`matrix_spec`; layer
types in :mod:`optimizers.layer_types`; the spectral math in :mod:`optimizers.spectral`;
distribution of the matrix work over data-parallel ranks in :mod:`optimizers.distributed`; device
timing in :mod:`optimizers.timing`. Step times are measured by the profiler (``bench.profile``,
``specbench profile``).
"""

from .distributed import OwnerSharding, lpt_assign, matrix_cost, rank_and_world
from .layer_types import LAYER_TYPES, matrix_shape, tag_modules, tag_parameters
from .matrix_base import MatrixOptimizer, OwnedMatrix
from .muon import Muon
from .plugins import ResolutionError
from .registry import (
    OptimizerSpec,
    available,
    build,
    check_name,
    describe,
    installed_plugins,
    matrix_spec,
    register,
    requires_full_matrices,
    resolve,
    settings_model,
    validate_settings,
)
from .settings import MatrixSettings
from .shampoo import Shampoo
from .soap import SOAP
from .spectral import spectral_transform, spectral_transform_with_stats, transfer
from .spectral_newton import SpectralNewton
from .timing import synchronize

__all__ = [
    "LAYER_TYPES",
    "SOAP",
    "MatrixOptimizer",
    "MatrixSettings",
    "Muon",
    "OptimizerSpec",
    "OwnedMatrix",
    "OwnerSharding",
    "ResolutionError",
    "Shampoo",
    "SpectralNewton",
    "available",
    "build",
    "check_name",
    "describe",
    "installed_plugins",
    "lpt_assign",
    "matrix_cost",
    "matrix_shape",
    "matrix_spec",
    "rank_and_world",
    "register",
    "requires_full_matrices",
    "resolve",
    "settings_model",
    "spectral_transform",
    "spectral_transform_with_stats",
    "synchronize",
    "tag_modules",
    "tag_parameters",
    "transfer",
    "validate_settings",
]
