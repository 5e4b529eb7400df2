"""Optimizers for specbench: Spectral Newton (PAPER.md §5), AdamW, parameter grouping by layer type.

Public API (docs/ARCHITECTURE.md): :func:`build`, :func:`available`, :func:`settings_model`,
:func:`validate_settings`, :func:`requires_full_matrices`, :func:`describe`; layer types in
:mod:`optimizers.layer_types`; the spectral math in :mod:`optimizers.spectral`.
"""

from .layer_types import LAYER_TYPES, tag_modules, tag_parameters
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
from .spectral import spectral_transform, spectral_transform_with_stats, transfer
from .spectral_newton import SpectralNewton

__all__ = [
    "LAYER_TYPES",
    "OptimizerSpec",
    "SpectralNewton",
    "available",
    "build",
    "describe",
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
