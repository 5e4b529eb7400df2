"""Optimizers for specbench: Spectral Newton (PAPER.md §5), AdamW, the matrix baselines Muon,
Shampoo and SOAP, parameter grouping by layer type, owner-rank sharding at ZeRO-0.

Public API (docs/ARCHITECTURE.md): :func:`build`, :func:`available`, :func:`settings_model`,
:func:`validate_settings`, :func:`requires_full_matrices`, :func:`describe`; layer types in
:mod:`optimizers.layer_types`; the spectral math in :mod:`optimizers.spectral`; distribution of the
matrix work over data-parallel ranks in :mod:`optimizers.distributed`. Step times are measured by
the profiler (``bench.profile``, ``specbench profile``).
"""

from .distributed import OwnerSharding, lpt_assign, matrix_cost
from .layer_types import LAYER_TYPES, tag_modules, tag_parameters
from .muon import Muon
from .registry import (
    OptimizerSpec,
    available,
    build,
    describe,
    register,
    requires_full_matrices,
    settings_model,
    validate_settings,
)
from .shampoo import Shampoo
from .soap import SOAP
from .spectral import spectral_transform, spectral_transform_with_stats, transfer
from .spectral_newton import SpectralNewton

__all__ = [
    "LAYER_TYPES",
    "SOAP",
    "Muon",
    "OptimizerSpec",
    "OwnerSharding",
    "Shampoo",
    "SpectralNewton",
    "available",
    "build",
    "describe",
    "lpt_assign",
    "matrix_cost",
    "register",
    "requires_full_matrices",
    "settings_model",
    "spectral_transform",
    "spectral_transform_with_stats",
    "tag_modules",
    "tag_parameters",
    "transfer",
    "validate_settings",
]
