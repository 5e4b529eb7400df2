"""Per-parameter curvature exponent α for Spectral Newton (PAPER.md §4–§5).

T(σ; α) = σ / (σ^α + d) assumes the curvature along the gradient's k-th singular direction scales
as h_k ∝ σ_k^α. Three policies choose α per parameter:

- ``fixed``: one α for every matrix (2.0 is the paper's tested optimizer);
- ``by_layer_type``: a table keyed by layer type, seeded from the paper's published medians
  (convs ≈ 2; mini GPT-2: QKV 1.43, attention out 1.17, MLP-up 0.84, MLP-down 1.15; PAPER.md §4);
- ``measured``: per-parameter values set by the training loop from the suite's own curvature probe
  (``SpectralNewton.set_measured_alpha``), falling back to the table for unmeasured parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from .param_groups import check_layer_types

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
"""Seeded from PAPER.md §4. The LM values come from one mini GPT-2 run (weak evidence; another run
gave MLP α ≈ 2); gate projections have no published value and reuse MLP-up's."""


def check_alpha(value: float, what: str) -> float:
    """α must be a finite positive number."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what}: alpha must be a finite number > 0 (got {value})")
    return value


class AlphaResolver:
    """Resolves α for a parameter from its name and layer type under one policy."""

    def __init__(
        self,
        policy: str = "fixed",
        alpha: float = 2.0,
        table: Mapping[str, float] | None = None,
    ) -> None:
        if policy not in ALPHA_POLICIES:
            raise ValueError(f"alpha_policy must be one of {', '.join(ALPHA_POLICIES)} (got {policy!r})")
        self.policy = policy
        self.alpha = check_alpha(alpha, "alpha")
        overrides = dict(table or {})
        check_layer_types(overrides, "alpha_table")
        self.table = {**DEFAULT_ALPHA_TABLE, **{k: check_alpha(v, f"alpha_table.{k}") for k, v in overrides.items()}}
        self.measured: dict[str, float] = {}

    def __call__(self, name: str, layer_type: str) -> float:
        """α for one parameter. Types missing from the table (e.g. ``other``) use ``alpha``."""
        if self.policy == "fixed":
            return self.alpha
        if self.policy == "measured" and name in self.measured:
            return self.measured[name]
        return self.table.get(layer_type, self.alpha)

    def set_measured(self, alphas: Mapping[str, float]) -> None:
        """Record measured α values (only used under the ``measured`` policy)."""
        for name, value in alphas.items():
            self.measured[name] = check_alpha(value, f"measured alpha for {name!r}")
