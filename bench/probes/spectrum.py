"""The gradient's leading singular triplets and how many of them are real (docs/science/quantities.md#gradient-singular-values).

G = ∇_W L of one layer (its m × n view, float64) has the SVD G = U Σ Vᵀ; the probe keeps σ_k, u_k,
v_k for k ≤ K = min(top_k, numerical rank) (h_k and the Kronecker quantities) and σ_k up to
Kσ = min(max(K, gamma_window), numerical rank) (the γ fits).

**Rank cutoff** (issue 14, point 4). G is a mean of per-row terms, G = Σ_r δ_r a_rᵀ / N
(`bench.probes.factors`), and is computed by summing them in the probe dtype. The summation's
round-off is relative to the size of the terms, not of their sum:

    ‖fl(G) − G‖ ≲ ε · S,    S = Σ_r ‖δ_r‖ ‖a_r‖ / N ≥ ‖G‖₂ = σ_1.

On a well-fit model the per-sample gradients nearly cancel (S ≫ σ_1), and LAPACK's cutoff
σ_1 · max(m, n) · ε, relative to the cancelled sum, falls below that round-off: a softmax head
over c classes, whose exact gradient has rank ≤ c − 1 (1ᵀδ_r = 0 for every sample), then kept a
c-th direction made of round-off (measured on a 10-class digits head at train loss 8e-4: α =
1.40 from the 9 real directions, 1.07 with the round-off one, float32 and float64 alike). The
cutoff is therefore

    σ_k counts as real iff σ_k > ε · max(m, n) · S,

the same LAPACK-style tolerance applied to the scale of the summed terms (it equals the old one
when nothing cancels, S = σ_1). S comes from the first pass's hooks; for layers without them
(grouped convolutions) it falls back to σ_1. Residual limitation: when δ itself is computed with
cancellation — softmax probabilities within ε of 1 at training losses near the dtype's round-off
— its error exceeds ε·‖δ‖ and is not seen here; such a model is round-off in float32 anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bench.probes.layers import ProbedLayer

F64 = torch.float64


@dataclass
class Spectrum:
    """One layer's kept singular triplets and the sums that follow them."""

    layer: ProbedLayer
    sigma: torch.Tensor  # σ_1..σ_Kσ (float64)
    u: torch.Tensor  # m × K (float64)
    v: torch.Tensor  # n × K (float64)
    h_blocks: torch.Tensor | None = None  # per block b of the HVP pass: Σ_{j ∈ b} ⟨D_k, ∇²S_j D_k⟩ (B × K)
    block_terms: torch.Tensor | None = None  # loss terms of each block (B)
    extra: dict[str, float] = field(default_factory=dict)  # per-layer columns (cutoff scale, ...)

    @property
    def k(self) -> int:
        """K, the directions with h_k and the Kronecker quantities."""
        return int(self.u.shape[1])


def cap(layer: ProbedLayer, top_k: int, gamma_window: int | None) -> int:
    """Most triplets a layer can keep: min(max(top_k, gamma_window), min(m, n))."""
    return min(max(top_k, gamma_window or 0), min(layer.shape))


def rank_tolerance(shape: tuple[int, int], sigma1: float, term_scale: float, eps: float) -> float:
    """ε · max(m, n) · S, with S = ``term_scale`` (module docstring), or σ_1 when S is unknown."""
    scale = term_scale if math.isfinite(term_scale) and term_scale > 0 else sigma1
    return eps * max(shape) * scale


def leading_triplets(g: torch.Tensor, top_k: int, gamma_window: int | None, term_scale: float, eps: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """``(sigma, u, v, K, Kσ)`` of one layer's gradient ``g`` (m × n, float64): up to
    :func:`cap` triplets, K = min(top_k, rank), Kσ = min(max(K, gamma_window), rank), where the
    rank counts σ above :func:`rank_tolerance`; K = Kσ = 0 for a zero gradient."""
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    keep = min(max(top_k, gamma_window or 0), s.numel())
    if s.numel() == 0 or not float(s[0]) > 0.0:
        return s[:keep], u[:, :keep], vh[:keep].T, 0, 0
    tol = rank_tolerance((g.shape[0], g.shape[1]), float(s[0]), term_scale, eps)
    rank = int((s > tol).sum())
    k = min(top_k, rank)
    return s[:keep], u[:, :keep], vh[:keep].T, k, min(max(k, gamma_window or 0), rank)
