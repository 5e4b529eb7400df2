"""Spectral Newton with a per-layer learning rate: a matrix optimizer written against the public
base, :class:`optimizers.MatrixOptimizer`, implementing only its per-matrix math.

For a matrix W of fan-out m and fan-in n (conv kernels as out × (in·kh·kw)) with gradient g::

    buf ← μ·buf + g                             momentum
    G   ← buf / ‖buf‖_F                         scale-free input (zero stays zero)
    Δ   ← U diag(σ_k / (σ_k^α + d)) Vᵀ of G     Spectral Newton's transform (docs/science/spectral_newton.md)
    W   ← W·(1 − lr·λ) − lr·(m/n)^p · Δ         the per-layer learning rate lr·(m/n)^p

The factor (m/n)^p with p = ½ is the spectral scaling of Yang, Simon and Bernstein (2023): a
layer's update should change its output in proportion to √(fan-out/fan-in). p = 0 gives one
learning rate for every layer.

Everything else comes from the base for free: grouping by layer type, the AdamW side-car for
biases, norms, embeddings and the head, owner-rank sharding over data-parallel ranks, checkpoints
(``state_dict`` gathers the owners' buffers), step timing and ``step_metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field

from optimizers import MatrixOptimizer, MatrixSettings, spectral_transform


class LayerwiseSpectralNewtonSettings(MatrixSettings):
    """Spectral Newton with a per-layer learning rate lr·(fan_out/fan_in)^p (an example plug-in)."""

    lr: float = Field(0.05, gt=0, description="Base learning rate of the matrix group.")
    momentum: float = Field(0.9, ge=0, lt=1, description="μ of the momentum buffer buf ← μ·buf + g.")
    alpha: float = Field(2.0, gt=0, description="Curvature exponent α of T(σ; α) = σ/(σ^α + d).")
    damping: float = Field(0.1, gt=0, description="Damping d of T(σ; α).")
    method: Literal["svd", "gram"] = Field("gram", description="How T is computed (optimizers.spectral).")
    lr_power: float = Field(0.5, description="p of the per-layer factor (fan_out/fan_in)^p; 0: one lr for all.")


class LayerwiseSpectralNewton(MatrixOptimizer):
    """See the module docstring."""

    settings_model = LayerwiseSpectralNewtonSettings
    requires_full_matrices = True  # T needs whole matrices: the base supplies them at every ZeRO stage
    time_metric = "spectral_time_s"

    def init_state(self, grad: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        return {"buf": torch.zeros_like(grad)}

    def update(self, grad: torch.Tensor, state: dict[str, Any], group: Mapping[str, Any]) -> torch.Tensor:
        buf = state["buf"].mul_(group["momentum"]).add_(grad)
        G = buf.reshape(buf.shape[0], -1)
        G = G / G.norm().clamp_min(torch.finfo(G.dtype).tiny)
        return spectral_transform(G, group["alpha"], group["damping"], group["method"])

    def lr_scale(self, shape: tuple[int, ...], group: Mapping[str, Any]) -> float:
        fan_out, fan_in = shape[0], max(1, int(torch.Size(shape[1:]).numel()))
        return (fan_out / fan_in) ** group["lr_power"]
