"""Top eigenvalues of a Kronecker factor without forming it (issue 14, point 2).

A Kronecker factor is a Gram matrix of rows, M = Σ_r r_r r_rᵀ (C_δ = M_δ·(R/R′)/N over the rows
δ_r, C_A = M_A / R′ over the rows a_r; `bench.probes.factors`). The probe needs only its K
largest eigenvalues (the rank-matched λ_k of docs/science/quantities.md#kronecker-factors; the Rayleigh quotients u_kᵀCu_k are
means of projections and need no factor at all). Forming M costs d² memory — 3.3 GB for a
28672-wide factor in fp32 — so a side wider than the sketch size ℓ is summarised by

1. **Frequent Directions** (Liberty 2013; Ghashami, Liberty, Phillips & Woodruff 2016) in the
   first pass: an ℓ × d matrix B, updated row block by row block. When B overflows, its SVD
   B = U Σ Vᵀ is shrunk to B ← diag(√(σ_i² − σ_ℓ₊₁²)₊) Vᵀ (ℓ rows). Guarantees, with
   Δ = Σ_t σ²_{ℓ+1,t} the total shrinkage of all updates:

       0 ≼ M − BᵀB,   ‖M − BᵀB‖₂ ≤ Δ ≤ min_{j ≤ ℓ} ‖R − R_j‖²_F / (ℓ + 1 − j)

   (R_j the best rank-j approximation of the row matrix). Δ is known exactly at the end, so the
   bound is a posteriori. B is **exact** (Δ = 0, BᵀB = M up to round-off) while the rows span at
   most ℓ dimensions, because then σ_{ℓ+1} = 0 at every shrink. Sketches are mergeable: the
   sketch of the union of two row sets is the sketch of their stacked sketches, with the
   shrinkages added, so each rank sketches its own rows and the owner merges.
2. **Rayleigh–Ritz** in the second pass: with Q (d × ℓ) an orthonormal basis of B's row space,
   the rows are projected, Mᵠ = Σ_r (Qᵀr_r)(Qᵀr_r)ᵀ (ℓ × ℓ), and λ̂_k = λ_k(Mᵠ). By Cauchy
   interlacing λ̂_k ≤ λ_k(M), and since Qᵀ M Q ≽ Qᵀ BᵀB Q, whose eigenvalues are B's squared
   singular values, λ̂_k ≥ σ_k(B)² ≥ λ_k(M) − Δ (Weyl). Hence, per eigenvalue,

       0 ≤ λ_k(M) − λ̂_k ≤ Δ,

   the stated error bound (`GramSketch.bound`), never worse than Frequent Directions alone.

A side of width d ≤ ℓ is not sketched: Q = I, and Mᵠ = M is the exact factor (d² ≤ ℓ·d memory).
Memory per side is O(ℓ·d) either way. Everything is float64.
"""

from __future__ import annotations

import torch

F64 = torch.float64


def frequent_directions(sketch: torch.Tensor, rows: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """Frequent Directions update: the sketch of ``[sketch; rows]`` with at most ``size`` rows,
    and the shrinkage σ²_{size+1} of this update (0 when nothing had to be dropped).

    Rows are consumed ``size`` at a time, so every SVD is of at most 2·size rows.
    """
    shrink = 0.0
    for start in range(0, rows.shape[0], size):
        stacked = torch.cat([sketch, rows[start : start + size].to(F64)])
        if stacked.shape[0] <= size:
            sketch = stacked
            continue
        _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
        cut = float(s[size]) ** 2 if s.numel() > size else 0.0
        kept = torch.sqrt(torch.clamp(s[:size] ** 2 - cut, min=0.0))
        sketch = kept[:, None] * vh[:size]
        shrink += cut
    return sketch, shrink


class GramSketch:
    """One side's sketch of M = Σ_r r rᵀ (module docstring): Frequent Directions in the first
    pass, the Rayleigh–Ritz Gram in the second.

    Attributes:
        dim: d, the width of the rows.
        size: ℓ, the sketch size; ``exact`` when d ≤ ℓ (Q = I, nothing sketched).
        rows: the Frequent Directions sketch B (≤ ℓ × d); empty when exact.
        shrinkage: Δ accumulated by this sketch's own updates (and merges).
        basis: Q (d × ℓ′), set by :meth:`freeze` after the first pass.
        gram: Mᵠ = Σ (Qᵀr)(Qᵀr)ᵀ, accumulated in the second pass.
    """

    def __init__(self, dim: int, size: int, device: torch.device | str = "cpu") -> None:
        self.dim, self.size = int(dim), int(size)
        self.exact = self.dim <= self.size
        self.device = torch.device(device)
        self.rows = torch.zeros(0, self.dim, dtype=F64, device=self.device)
        self.shrinkage = 0.0
        self.basis: torch.Tensor | None = torch.eye(self.dim, dtype=F64, device=self.device) if self.exact else None
        self.gram: torch.Tensor | None = None

    def update(self, rows: torch.Tensor) -> None:
        """First pass: add rows (R × d) to the Frequent Directions sketch (no-op when exact)."""
        if not self.exact and rows.shape[0]:
            self.rows, shrink = frequent_directions(self.rows, rows, self.size)
            self.shrinkage += shrink

    def padded_rows(self) -> torch.Tensor:
        """The sketch as exactly ℓ × d rows (zero rows appended), for a fixed-size collective;
        zero rows change neither BᵀB nor a later merge."""
        out = torch.zeros(self.size, self.dim, dtype=F64, device=self.device)
        out[: self.rows.shape[0]] = self.rows
        return out

    def merge(self, stacked: torch.Tensor, shrinkage: float) -> None:
        """Replace the sketch by the sketch of ``stacked`` (the ranks' sketches, one under the
        other) whose own shrinkages sum to ``shrinkage``; adds this merge's shrinkage."""
        if self.exact:
            return
        self.rows, shrink = frequent_directions(torch.zeros(0, self.dim, dtype=F64, device=self.device),
                                                stacked, self.size)
        self.shrinkage = shrinkage + shrink

    def freeze(self) -> torch.Tensor:
        """Q: an orthonormal basis of the sketch's row space, completed to ℓ columns (d × ℓ);
        the identity when exact. Extra columns are harmless: interlacing bounds any basis."""
        if self.basis is None:
            # The ℓ right singular vectors of the (zero-padded) sketch: the first rank(B) span
            # B's rows, the rest are orthonormal completions (LAPACK returns an orthonormal V
            # also for zero singular values), so Q never needs a d × d matrix.
            _, _, vh = torch.linalg.svd(self.padded_rows(), full_matrices=False)
            self.basis = vh.T.contiguous()
        return self.basis

    def set_basis(self, basis: torch.Tensor) -> None:
        """Use ``basis`` (the owner's, shared with every rank) for the second pass."""
        self.basis = basis

    def project(self, rows: torch.Tensor) -> None:
        """Second pass: Mᵠ += (R Q)ᵀ(R Q) for rows R (R × d)."""
        assert self.basis is not None, "freeze() or set_basis() before the second pass"
        # The product runs in the rows' dtype (the probe's) and is accumulated in float64, as
        # the exact factors always were; Q is orthonormal, so it adds no error of its own.
        p = rows if self.exact else rows @ self.basis.to(rows.dtype)
        part = (p.T @ p).to(F64)
        self.gram = part if self.gram is None else self.gram.add_(part)

    def gram_or_zeros(self) -> torch.Tensor:
        """Mᵠ, zeros when no row was projected (so that every rank reduces the same shape)."""
        if self.gram is None:
            width = self.dim if self.exact else self.size
            self.gram = torch.zeros(width, width, dtype=F64, device=self.device)
        return self.gram

    def eigenvalues(self) -> torch.Tensor:
        """λ̂_1 ≥ λ̂_2 ≥ … of M (module docstring); exact when d ≤ ℓ or Δ = 0."""
        return torch.linalg.eigvalsh(self.gram_or_zeros()).flip(0)

    @property
    def bound(self) -> float:
        """Δ: 0 ≤ λ_k(M) − λ̂_k ≤ Δ for every k (module docstring); 0 when exact."""
        return 0.0 if self.exact else self.shrinkage
