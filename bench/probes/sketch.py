"""Top eigenvalues of a Kronecker factor without forming it (issue 14, point 2).

A Kronecker factor is a Gram matrix of rows, M = Σ_r r_r r_rᵀ (C_δ = M_δ·(R/R′)/N over the rows
δ_r, C_A = M_A / R′ over the rows a_r; `bench.probes.factors`). The probe needs only its K
largest eigenvalues (the rank-matched λ_k of docs/science/quantities.md#kronecker-factors; the Rayleigh quotients u_kᵀCu_k are
means of projections and need no factor at all). Forming M costs d² memory — 3.3 GB for a
28672-wide factor in fp32 — so a side wider than the sketch size ℓ is summarised by

1. **Frequent Directions** (Liberty 2013; Ghashami, Liberty, Phillips & Woodruff 2016) in the
   first pass: an ℓ × d matrix B, updated row block by row block. When B overflows, the SVD
   of B stacked on the new rows, U Σ Vᵀ, is shrunk to B ← diag(√(σ_i² − σ_ℓ₊₁²)₊) Vᵀ (ℓ rows). Guarantees, with
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
    and the total shrinkage σ²_{size+1} of this update's compressions (0 when nothing had to be
    dropped).

    Each compression diagonalises the smaller Gram matrix of the stacked k = ℓ + c rows S (k × d),
    whose eigenvalues are σ_i² and whose eigenvectors give the rows σ_i v_iᵀ (= u_iᵀS): rows of
    width d ≤ 8ℓ come in chunks of c = 8ℓ and use SᵀS (d × d), wider ones in chunks of c = ℓ and
    use SSᵀ (2ℓ × 2ℓ). Memory O(ℓ·d) either way; time per row O(d²) for narrow rows, as forming
    the factor would cost, and O(ℓ·d) for wide ones.
    """
    shrink = 0.0
    dim = rows.shape[1]
    chunk = 8 * size if dim <= 8 * size else size
    for start in range(0, rows.shape[0], chunk):
        block = rows[start : start + chunk]
        if sketch.shape[0] + block.shape[0] <= size:
            sketch = torch.cat([sketch, block.to(F64)])
            continue
        if dim <= sketch.shape[0] + block.shape[0]:
            # d × d: right singular vectors. The new rows' Gram in their own dtype (the probe's),
            # accumulated in float64, as the exact factors are.
            gram = sketch.T @ sketch + (block.T @ block).to(F64)
            lam, vec = torch.linalg.eigh(gram)
            lam = lam.flip(0).clamp_min(0.0)
            cut = float(lam[size]) if dim > size else 0.0
            sketch = torch.sqrt(torch.clamp(lam[:size] - cut, min=0.0))[:, None] * vec.flip(1)[:, :size].T
        else:
            stacked = torch.cat([sketch, block.to(F64)])
            lam, vec = torch.linalg.eigh(stacked @ stacked.T)  # k × k: left singular vectors
            lam = lam.flip(0).clamp_min(0.0)
            cut = float(lam[size])
            top = lam[:size]
            # Row i is u_iᵀS = σ_i v_iᵀ, shrunk to √(σ_i² − cut) v_iᵀ (zero where σ_i ≤ cut).
            scale = torch.where(top > cut, torch.sqrt(torch.clamp(1.0 - cut / torch.where(top > 0, top, 1.0), min=0.0)),
                                torch.zeros_like(top))
            sketch = scale[:, None] * (vec.flip(1)[:, :size].T @ stacked)
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
        basis: Q (d × ℓ), set by :meth:`freeze` after the first pass.
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
        """Q (d × ℓ): orthonormal columns spanning the sketch's rows, zero columns where the sketch
        has fewer than ℓ independent rows; the identity when exact. From the ℓ × ℓ Gram BBᵀ = WΛWᵀ:
        Q = BᵀWΛ^(-1/2) over the eigenvalues above round-off, so no d × d matrix and no SVD of B.
        Zero columns are harmless: they add zero rows to QᵀCQ, and interlacing bounds the rest."""
        if self.basis is None:
            rows = self.padded_rows()
            lam, w = torch.linalg.eigh(rows @ rows.T)
            keep = lam > lam.max().clamp_min(0.0) * self.size * torch.finfo(F64).eps
            scale = torch.where(keep, torch.rsqrt(torch.where(keep, lam, torch.ones_like(lam))), torch.zeros_like(lam))
            self.basis = (rows.T @ w) * scale
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
