"""Per-parameter curvature exponent α for Spectral Newton (docs/science/fits.md#published-numbers).

T(σ; α) = σ / (σ^α + d) assumes the curvature along the gradient's k-th singular direction scales
as h_k ∝ σ_k^α. Three policies choose α per parameter:

- ``fixed``: one α for every matrix (2.0 is the paper's tested optimizer);
- ``by_layer_type``: a table keyed by layer type, seeded from the paper's published medians
  (convs ≈ 2; mini GPT-2: QKV 1.43, attention out 1.17, MLP-up 0.84, MLP-down 1.15; docs/science/spectral_newton.md#the-by-layer-type-table);
- ``measured``: per-parameter values set by the training loop from the suite's own curvature probe
  (``SpectralNewton.set_measured_alpha``), falling back to the table for unmeasured parameters.

Pure functions of the settings (the policy, α and the table's overrides are Spectral Newton
settings, validated by :class:`optimizers.settings.SpectralNewtonSettings`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

AlphaPolicy = Literal["fixed", "by_layer_type", "measured"]
ALPHA_POLICIES: tuple[str, ...] = ("fixed", "by_layer_type", "measured")

DEFAULT_ALPHA_TABLE: dict[str, float] = {
    "conv": 2.0,
    "conv_stem": 2.0,
    "depthwise_conv": 2.0,
    "attn_q": 1.43,
    "attn_k": 1.43,
    "attn_v": 1.43,
    "attn_qkv": 1.43,
    "attn_out": 1.17,
    "mlp_up": 0.84,
    "mlp_gate": 0.84,
    "mlp_down": 1.15,
    "linear": 2.0,
    "head": 2.0,
}
"""Seeded from docs/science/fits.md#published-numbers. The LM values come from one mini GPT-2 run (weak evidence; another run
gave MLP α ≈ 2); gate projections have no published value and reuse MLP-up's."""


def check_alpha(value: float, what: str) -> float:
    """α must be a finite positive number."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}: alpha must be a finite number > 0 (got {value})")
    return value


def table_alpha(table: Mapping[str, float], layer_type: str, alpha: float) -> float:
    """α of ``layer_type`` from the overrides ``table``, else :data:`DEFAULT_ALPHA_TABLE`, else ``alpha``."""
    if layer_type in table:
        return table[layer_type]
    return DEFAULT_ALPHA_TABLE.get(layer_type, alpha)


def resolve_alpha(
    policy: str,
    alpha: float,
    table: Mapping[str, float],
    measured: Mapping[str, float],
    name: str,
    layer_type: str,
) -> float:
    """α for the parameter ``name`` of type ``layer_type`` under ``policy`` (module docstring).

    ``measured`` holds the values set by the training loop; under ``measured`` a parameter
    without one falls back to the table, and types missing from the table (e.g. ``other``) use
    ``alpha``.
    """
    if policy == "fixed":
        return alpha
    if policy == "measured" and name in measured:
        return measured[name]
    return table_alpha(table, layer_type, alpha)


def alphas_other_than(
    target: float, policy: str, alpha: float, table: Mapping[str, float], layer_types: Iterable[str]
) -> dict[str, float] | None:
    """The layer types among ``layer_types`` whose α under ``policy`` differs from ``target``
    (empty: every matrix gets ``target``); ``None`` under ``measured``, whose values are only known
    during training. Spectral Newton's ``solve`` method needs α = 2 for every matrix."""
    if policy == "measured":
        return None
    return {t: a for t in layer_types if (a := alpha if policy == "fixed" else table_alpha(table, t, alpha)) != target}
