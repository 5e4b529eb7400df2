"""Typed settings of each optimizer (pydantic, ``extra='forbid'``, every field defaulted and
described). Field names are the config keys, the ``build()`` keyword arguments and the matrix
optimizers' constructor arguments.

These models are the one place where defaults are written: a matrix optimizer's constructor
validates its keyword arguments with its model (:func:`parse_settings`), so a constructor cannot
drift from the registry. :class:`MatrixSettings` holds what every matrix optimizer shares — the
AdamW side-car, the grouping by layer type, the owner-rank distribution and its bucket size —
and each optimizer's model adds its own math.

``momentum`` is shared by every optimizer so that one sweep axis can cover them all: for AdamW it
is β₁ (the first-moment decay), for Spectral Newton, Muon and Shampoo the μ of the momentum
buffer, for SOAP its β₁.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .alpha_policy import DEFAULT_ALPHA_TABLE, AlphaPolicy, alphas_other_than
from .distributed import DEFAULT_BUCKET_CAP_MB
from .layer_types import LAYER_TYPES
from .param_groups import DEFAULT_ADAMW_TYPES, NO_DECAY_TYPES


def _check_types(values: list[str]) -> list[str]:
    bad = [v for v in values if v not in LAYER_TYPES]
    if bad:
        raise ValueError(f"unknown layer type {bad[0]!r}; must be one of {', '.join(LAYER_TYPES)}")
    return values


def _check_betas(v: tuple[float, float]) -> tuple[float, float]:
    if not all(0 <= b < 1 for b in v):
        raise ValueError(f"each beta must be in [0, 1) (got {list(v)})")
    return v


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


class SideCarSettings(BaseModel):
    """Settings of every optimizer that splits a model into matrices and the rest: the AdamW side-car
    for non-matrix parameters, which layer types it gets, and weight decay (the matrix optimizers and
    DeepSpeed's Muon, ``muon_deepspeed``, so that all of them group a model the same way)."""

    model_config = ConfigDict(extra="forbid")

    weight_decay: float = Field(
        0.0, ge=0, description="Decoupled weight decay λ for all groups except biases/norms: p ← p·(1 − lr·λ)."
    )
    adamw_lr: float = Field(1e-3, gt=0, description="Learning rate of the AdamW groups; schedulers scale it with lr.")
    adamw_betas: tuple[float, float] = Field((0.9, 0.999), description="(β₁, β₂) of the AdamW groups.")
    adamw_eps: float = Field(1e-8, gt=0, description="ε of the AdamW groups.")
    adamw_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ADAMW_TYPES),
        description="Layer types updated by AdamW instead of the matrix optimizer (non-matrix parameters always "
        "are).",
    )
    no_decay_types: list[str] = Field(
        default_factory=lambda: list(NO_DECAY_TYPES), description="Layer types with no weight decay."
    )

    _types = field_validator("adamw_types", "no_decay_types")(_check_types)
    _betas = field_validator("adamw_betas")(_check_betas)


class MatrixSettings(SideCarSettings):
    """Settings every matrix optimizer shares (:class:`optimizers.matrix_base.MatrixOptimizer`): the
    side-car's, and the distribution of the matrix work over data-parallel ranks. Subclass it for a
    new optimizer."""

    distribution: Literal["sharded", "redundant"] = Field(
        "sharded",
        description="sharded: each matrix is computed by one owner rank (LPT on m·n·min(m,n)) and the new values "
        "are broadcast in buckets (ZeRO-0) or written back into the ZeRO partitions (ZeRO ≥ 1); redundant: every "
        "rank computes every matrix (ZeRO-0 only). Same on one process.",
    )
    bucket_cap_mb: float = Field(
        DEFAULT_BUCKET_CAP_MB, gt=0, description="Largest broadcast buffer (MiB) of the sharded distribution."
    )


class SpectralNewtonSettings(MatrixSettings):
    """Spectral Newton (docs/science/spectral_newton.md): ΔW = U diag(σ/(σ^α + d)) Vᵀ of the momentum matrix; AdamW for
    biases, norms, embeddings and the head."""

    lr: float = Field(0.02, gt=0, description="Learning rate of the matrix group.")
    momentum: float = Field(0.95, ge=0, lt=1, description="μ of the momentum buffer buf ← μ·buf + g (0 disables).")
    nesterov: bool = Field(True, description="Transform g + μ·buf (Nesterov, as Muon) instead of buf.")
    method: Literal["svd", "gram", "solve", "polar"] = Field(
        "gram",
        description="How T is computed: svd (reference), gram (eigh of GᵀG, any α), solve (Cholesky, α = 2 only), "
        "polar (Newton–Schulz polar factor, the paper's route).",
    )
    alpha_policy: AlphaPolicy = Field(
        "fixed",
        description="fixed: alpha for every matrix; by_layer_type: alpha_table; measured: per-layer values "
        "set by the training loop, table as fallback.",
    )
    alpha: float = Field(
        2.0, gt=0, allow_inf_nan=False, description="Curvature exponent α of T(σ; α) under the fixed policy."
    )
    damping: float = Field(0.1, ge=0, allow_inf_nan=False, description="Damping d of T(σ; α) = σ/(σ^α + d).")
    normalize: Literal["none", "frobenius", "spectral"] = Field(
        "none", description="Divide G before T by 1 (paper-faithful), ‖G‖_F, or σ₁ (power-iteration estimate)."
    )
    rms_match: float | None = Field(
        None,
        gt=0,
        description="If set, rescale each update matrix to this RMS (0.2 ≈ AdamW's update RMS, Muon's "
        "convention); null keeps the raw paper update.",
    )
    alpha_table: dict[str, float] = Field(
        default_factory=dict,
        description="Per-layer-type α overrides for by_layer_type/measured; defaults: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_ALPHA_TABLE.items())
        + ".",
    )
    power_iters: int = Field(10, ge=1, description="Power iterations estimating σ₁ for normalize=spectral.")

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
        """The one check of "method solve needs α = 2": solve computes G(GᵀG + dI)⁻¹, which is T only
        for α = 2. The model is not known here, so every layer type that can reach the matrix
        group (all but ``adamw_types``) must get α = 2."""
        if self.method != "solve":
            return self
        types = [t for t in LAYER_TYPES if t not in self.adamw_types]
        odd = alphas_other_than(2.0, self.alpha_policy, self.alpha, self.alpha_table, types)
        if odd is None:
            raise ValueError("method 'solve' needs alpha = 2, but alpha_policy 'measured' sets α per layer; "
                             "use method gram or polar")
        if odd:
            given = f"alpha {self.alpha}" if self.alpha_policy == "fixed" else ", ".join(f"{t} {a}" for t, a in odd.items())
            raise ValueError(f"method 'solve' needs alpha = 2, but alpha_policy {self.alpha_policy!r} gives {given}; "
                             "use method gram or polar")
        return self


class MuonSettings(MatrixSettings):
    """Muon (timm 1.0.31's timm.optim.muon) on matrices, conv kernels as out × (in·kh·kw); AdamW for biases,
    norms, embeddings and the head (optimizers/muon.py)."""

    lr: float = Field(0.02, gt=0, description="Learning rate of the matrix group.")
    momentum: float = Field(0.95, ge=0, lt=1, description="μ of the EMA momentum buf ← μ·buf + (1 − μ)·g.")
    nesterov: bool = Field(True, description="Orthogonalise (1 − μ)·g + μ·buf (Nesterov) instead of buf.")
    ns_steps: int = Field(5, ge=1, le=50, description="Newton–Schulz iterations of the orthogonalisation.")
    ns_coefficients: Literal["original", "quintic", "polar_express", "polar_express_safer"] = Field(
        "original",
        description="Newton–Schulz coefficient preset: original = (3.4445, −4.7750, 2.0315), Keller Jordan's and "
        "torch.optim.Muon's; the others are timm's per-step schedules.",
    )
    ns_dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16",
        description="dtype of the Newton–Schulz matrix products: bfloat16 (as timm, torch.optim.Muon and Keller "
        "Jordan) or float32 (for CPUs without native bfloat16 matrix multiplication, which emulate it slowly).",
    )
    adjust_lr: Literal["original", "match_rms_adamw", "spectral", "none"] = Field(
        "original",
        description="Update scale s(m, n) of the orthogonalised m × n update: original √max(1, m/n) (Keller Jordan, "
        "torch default); match_rms_adamw 0.2·√max(m, n) (Moonlight: AdamW's update RMS); spectral √(m/n) "
        "(Bernstein); none 1.",
    )

class MuonDeepSpeedSettings(SideCarSettings):
    """DeepSpeed's built-in Muon (MuonWithAuxAdam, deepspeed.runtime.zero.muon; DeepSpeed 0.19.8) on
    matrices with its own ZeRO 1–3 handling; the suite's grouping and AdamW side-car settings for the
    rest (optimizers/muon_deepspeed.py)."""

    lr: float = Field(0.02, gt=0, description="Learning rate of the matrix group.")
    momentum: float = Field(
        0.95, ge=0, lt=1, description="μ of the EMA momentum buf ← μ·buf + (1 − μ)·g (Nesterov always on)."
    )
    ns_method: Literal["gram", "standard"] = Field(
        "gram",
        description="DeepSpeed's Newton–Schulz: gram (iterates on the Gram matrix, float16 where the device has it, "
        "else float32; DeepSpeed's default) or standard (Keller Jordan's quintic iteration in bfloat16).",
    )


class ShampooSettings(MatrixSettings):
    """Shampoo (Gupta et al. 2018 with Anil et al. 2020's frequency, blocking, grafting; the suite's own
    implementation, optimizers/shampoo.py); AdamW for biases, norms, embeddings and the head."""

    lr: float = Field(0.01, gt=0, description="Learning rate of the matrix group.")
    momentum: float = Field(0.9, ge=0, lt=1, description="μ of M ← μ·M + P on the grafted update P (0 disables).")
    nesterov: bool = Field(True, description="Apply μ·M + P (Nesterov) instead of M.")
    beta2: float = Field(
        1.0, gt=0, le=1, description="Statistics decay: 1 sums G Gᵀ (Gupta et al.); < 1 an EMA with weight 1 − β₂."
    )
    epsilon: float = Field(1e-6, ge=0, description="Ridge ε of (S + εI)^(−1/2k) (times λ_max(S) if epsilon_relative).")
    epsilon_relative: bool = Field(
        True, description="Scale ε by each statistic's largest eigenvalue (scale-free); false: absolute εI (Gupta)."
    )
    preconditioning_frequency: int = Field(
        10, ge=1, description="Inverse roots recomputed every F steps; until step F the graft direction is used."
    )
    max_preconditioner_dim: int = Field(
        1024, ge=1, description="Dimensions larger than this are split into blocks with their own factors."
    )
    graft: Literal["adagrad", "sgd", "none"] = Field(
        "adagrad", description="Layer-wise grafting: rescale the update to the norm of AdaGrad's / SGD's, or none."
    )
    graft_eps: float = Field(1e-8, ge=0, description="δ of the AdaGrad graft G / (√ΣG² + δ).")
    conv_view: Literal["matrix", "tensor"] = Field(
        "matrix",
        description="Conv kernels as out × (in·kh·kw) matrices (suite convention) or order-4 tensors with one "
        "factor per dimension (Gupta et al.).",
    )

class SOAPSettings(MatrixSettings):
    """SOAP (pytorch_optimizer.SOAP, pytorch-optimizer 4.1.0; reference defaults of Vyas et al. 2024) on
    matrices; AdamW for biases, norms, embeddings and the head (optimizers/soap.py)."""

    lr: float = Field(3e-3, gt=0, description="Learning rate of the matrix group.")
    momentum: float = Field(0.95, ge=0, lt=1, description="β₁ of SOAP's first moment (shared key across optimizers).")
    beta2: float = Field(0.95, ge=0, lt=1, description="β₂ of SOAP's second moment in the rotated basis.")
    shampoo_beta: float | None = Field(
        None, ge=0, lt=1, description="Decay of the Shampoo factors L, R (null: β₂, the reference's default)."
    )
    eps: float = Field(1e-8, gt=0, description="ε added to √V.")
    weight_decay: float = Field(
        0.01, ge=0, description="Decoupled weight decay λ of the matrix group (applied after SOAP's update) and "
        "the decayed AdamW groups."
    )
    precondition_frequency: int = Field(10, ge=1, description="Eigenbasis refresh (power iteration + QR) every f steps.")
    max_precond_dim: int = Field(10000, ge=1, description="Dimensions larger than this are not rotated.")
    merge_dims: bool = Field(False, description="Merge tensor dimensions up to max_precond_dim before preconditioning.")
    normalize_grads: bool = Field(False, description="Normalise each update to unit RMS.")
    correct_bias: bool = Field(True, description="Adam bias correction √(1 − β₂ᵗ)/(1 − β₁ᵗ).")
    conv_view: Literal["matrix", "tensor"] = Field(
        "tensor",
        description="Conv kernels as 4-D tensors with one rotation per dimension (the reference's default) or as "
        "out × (in·kh·kw) matrices (the suite's matrix convention; dense rotations up to max_precond_dim).",
    )


# --- validation with messages that name the config path ------------------------------------------

_BOUND_WORDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": ("≥", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("≤", "le"),
}


def _format_error(model: type[BaseModel], prefix: str, err: Mapping[str, Any]) -> str:
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


class SettingsError(ValueError):
    """Invalid optimizer settings; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid optimizer settings:\n  " + "\n  ".join(problems))
        self.problems = problems


def parse_settings(model: type[BaseModel], settings: Any, where: str) -> BaseModel:
    """``settings`` validated by ``model``, every default filled in; raises :class:`SettingsError`
    with one line per problem, each prefixed with the config path ``where``, e.g.
    ``optimizers.spectral_newton.method: must be one of svd, gram, solve, polar (got 'qr')``."""
    if not isinstance(settings, Mapping):
        raise SettingsError([f"{where}: expected a mapping of settings (got {type(settings).__name__})"])
    try:
        return model.model_validate(dict(settings))
    except ValidationError as exc:
        raise SettingsError([_format_error(model, where, e) for e in exc.errors()]) from None


def settings_problems(model: type[BaseModel], settings: Any, where: str) -> list[str]:
    """The problems :func:`parse_settings` would raise (empty list when ``settings`` are valid)."""
    try:
        parse_settings(model, settings, where)
    except SettingsError as exc:
        return exc.problems
    return []
