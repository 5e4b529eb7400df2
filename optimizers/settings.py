"""Typed settings of each optimizer (pydantic, ``extra='forbid'``, every field defaulted and
described). Field names are the config keys and the ``build()`` keyword arguments.

``momentum`` is shared by every optimizer so that one sweep axis can cover them all: for AdamW it
is β₁ (the first-moment decay), for Spectral Newton the μ of its momentum buffer.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .alpha_policy import DEFAULT_ALPHA_TABLE
from .layer_types import LAYER_TYPES
from .param_groups import DEFAULT_ADAMW_TYPES, NO_DECAY_TYPES


def _check_types(values: list[str]) -> list[str]:
    bad = [v for v in values if v not in LAYER_TYPES]
    if bad:
        raise ValueError(f"unknown layer type {bad[0]!r}; must be one of {', '.join(LAYER_TYPES)}")
    return values


class AdamWSettings(BaseModel):
    """torch.optim.AdamW (decoupled weight decay; none on biases and norms by default)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="β₁, the first-moment decay (shared key across optimizers).")
    beta2: float = Field(0.999, ge=0, lt=1, description="β₂, the second-moment decay.")
    eps: float = Field(1e-8, gt=0, description="ε added to the denominator √v̂ + ε.")
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay λ: p ← p·(1 − lr·λ).")
    no_decay_types: list[str] = Field(
        default_factory=lambda: list(NO_DECAY_TYPES),
        description="Layer types with no weight decay (1-D parameters never get decay).",
    )
    fused: bool | None = Field(
        None, description="Use torch's fused kernel: true, false (foreach), or null (auto: fused where supported)."
    )

    _types = field_validator("no_decay_types")(_check_types)


class SpectralNewtonSettings(BaseModel):
    """Spectral Newton (PAPER.md §5): ΔW = U diag(σ/(σ^α + d)) Vᵀ of the momentum matrix; AdamW for
    biases, norms, embeddings and the head."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(0.02, gt=0, description="Learning rate of the spectral (matrix) group.")
    momentum: float = Field(0.95, ge=0, lt=1, description="μ of the momentum buffer buf ← μ·buf + g (0 disables).")
    nesterov: bool = Field(True, description="Transform g + μ·buf (Nesterov, as Muon) instead of buf.")
    weight_decay: float = Field(
        0.0, ge=0, description="Decoupled weight decay λ for all groups except biases/norms: p ← p·(1 − lr·λ)."
    )
    method: Literal["svd", "gram", "solve", "polar"] = Field(
        "gram",
        description="How T is computed: svd (reference), gram (eigh of GᵀG, any α), solve (Cholesky, α = 2 only), "
        "polar (Newton–Schulz polar factor, the paper's route).",
    )
    alpha_policy: Literal["fixed", "by_layer_type", "measured"] = Field(
        "fixed",
        description="fixed: alpha for every matrix; by_layer_type: alpha_table; measured: per-layer values "
        "set by the training loop, table as fallback.",
    )
    alpha: float = Field(2.0, gt=0, description="Curvature exponent α of T(σ; α) under the fixed policy.")
    damping: float = Field(0.1, ge=0, description="Damping d of T(σ; α) = σ/(σ^α + d) (the paper's 0.1).")
    normalize: Literal["none", "frobenius", "spectral"] = Field(
        "none", description="Divide G before T by 1 (paper-faithful), ‖G‖_F, or σ₁ (power-iteration estimate)."
    )
    rms_match: float | None = Field(
        None,
        gt=0,
        description="If set, rescale each update matrix to this RMS (0.2 ≈ AdamW's update RMS, Muon's "
        "convention); null keeps the raw paper update.",
    )
    adamw_lr: float = Field(1e-3, gt=0, description="Learning rate of the AdamW groups; schedulers scale it with lr.")
    adamw_betas: tuple[float, float] = Field((0.9, 0.999), description="(β₁, β₂) of the AdamW groups.")
    adamw_eps: float = Field(1e-8, gt=0, description="ε of the AdamW groups.")
    adamw_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ADAMW_TYPES),
        description="Layer types updated by AdamW instead of the spectral update (non-matrix parameters always are).",
    )
    no_decay_types: list[str] = Field(
        default_factory=lambda: list(NO_DECAY_TYPES), description="Layer types with no weight decay."
    )
    alpha_table: dict[str, float] = Field(
        default_factory=dict,
        description="Per-layer-type α overrides for by_layer_type/measured; defaults: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_ALPHA_TABLE.items())
        + ".",
    )
    power_iters: int = Field(10, ge=1, description="Power iterations estimating σ₁ for normalize=spectral.")

    _types = field_validator("adamw_types", "no_decay_types")(_check_types)

    @field_validator("adamw_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each beta must be in [0, 1) (got {list(v)})")
        return v

    @field_validator("alpha_table")
    @classmethod
    def _table(cls, v: dict[str, float]) -> dict[str, float]:
        _check_types(list(v))
        bad = {k: a for k, a in v.items() if not (math.isfinite(a) and a > 0)}
        if bad:
            raise ValueError(f"alpha values must be finite and > 0 (got {bad})")
        return v

    @model_validator(mode="after")
    def _solve_needs_alpha_2(self) -> SpectralNewtonSettings:
        if self.method != "solve":
            return self
        if self.alpha_policy == "measured":
            raise ValueError("method 'solve' needs alpha = 2; alpha_policy 'measured' sets α per layer")
        if self.alpha_policy == "fixed" and self.alpha != 2.0:
            raise ValueError(f"method 'solve' needs alpha = 2 (got {self.alpha}); use gram or polar")
        if self.alpha_policy == "by_layer_type":
            table = {**DEFAULT_ALPHA_TABLE, **self.alpha_table}
            odd = {t: a for t, a in table.items() if a != 2.0 and t not in self.adamw_types}
            if odd:
                raise ValueError(f"method 'solve' needs alpha = 2 but alpha_table gives {odd}; use gram or polar")
        return self
