"""Spectral transfer functions of a gradient matrix (docs/science/spectral_newton.md). Pure math, no optimizer state.

For a matrix G = U Σ Vᵀ (m × n), Spectral Newton's update direction is

    ΔW = U diag(T(σ_k; α)) Vᵀ,   T(σ; α) = σ / (σ^α + d),

i.e. a Newton step under the curvature model h(σ) ∝ σ^α with damping d. Four routes compute it;
all work on the *smaller* side (a wide G is transposed, transformed and transposed back, which is
exact because T acts on singular values only) and in at least fp32 (bf16/fp16 inputs are upcast
and the result is cast back):

- ``svd``   — reference: ``torch.linalg.svd``, then U diag(T(σ)) Vᵀ.
- ``gram``  — eigh of the n × n Gram matrix GᵀG = V Σ² Vᵀ, then ΔW = G V diag(1/(σ^α + d)) Vᵀ
  (since G V = U Σ). Any α. Squaring loses relative accuracy in tiny σ, which the damping makes
  harmless (T ≈ σ/d there).
- ``solve`` — α = 2 only: ΔW = G (GᵀG + dI)⁻¹ via a Cholesky factorisation; no decomposition at all.
- ``polar`` — the paper's route: Newton–Schulz iterations for the polar factor Q of G, the
  symmetric PSD n × n factor |G| = QᵀG = V Σ Vᵀ, then ΔW = G (|G|^α + dI)⁻¹ with the inverse
  function evaluated by eigh of |G| (see :func:`_polar`).

A failing route (torch.linalg error, non-finite output, failed Cholesky) falls back along
``solve → gram → svd`` / ``polar → gram → svd`` / ``gram → svd``, per matrix; a matrix for which
everything fails (or whose input is non-finite) becomes zeros. Both events are counted.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

Method = Literal["svd", "gram", "solve", "polar"]
METHODS: tuple[str, ...] = ("svd", "gram", "solve", "polar")
FALLBACK_CHAINS: dict[str, tuple[str, ...]] = {
    "svd": ("svd",),
    "gram": ("gram", "svd"),
    "solve": ("solve", "gram", "svd"),
    "polar": ("polar", "gram", "svd"),
}
# Newton–Schulz for the polar factor: stop when the relative change of the iterate falls below
# sqrt(eps) (quadratic convergence makes the next iterate accurate to ~eps) and then take one
# polishing step; never more than this many iterations.
NS_MAX_STEPS = 100


class SpectralResult(NamedTuple):
    """Output of :func:`spectral_transform_with_stats`."""

    update: torch.Tensor
    """The transformed matrices, same shape and dtype as the input."""
    fallbacks: int
    """Matrices for which the requested method failed (includes ``zeroed``)."""
    zeroed: int
    """Matrices for which every method failed (or the input was non-finite): returned as zeros."""
    ns_steps: int
    """Newton–Schulz iterations run by the ``polar`` method (0 for the other methods)."""


def transfer(sigma: torch.Tensor, alpha: float | torch.Tensor, damping: float) -> torch.Tensor:
    """T(σ; α) = σ / (σ^α + d), with T = 0 where the denominator is 0 (σ = 0 and d = 0).

    The convention at σ = 0 makes α = 1, d = 0 give the partial isometry U Vᵀ on the range of G
    (Muon's direction) instead of 0/0.
    """
    denom = sigma.clamp_min(0) ** alpha + damping
    return torch.where(denom > 0, sigma / torch.where(denom > 0, denom, 1), torch.zeros_like(sigma))


def _inverse_weights(sigma: torch.Tensor, alpha: torch.Tensor, damping: float) -> torch.Tensor:
    """1 / (σ^α + d), set to 0 where the denominator vanishes (those directions have G v = 0)."""
    denom = sigma.clamp_min(0) ** alpha + damping
    return torch.where(denom > 0, 1 / torch.where(denom > 0, denom, 1), torch.zeros_like(denom))


def _svd(G: torch.Tensor, alpha: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    out = (U * transfer(S, alpha, damping).unsqueeze(-2)) @ Vh
    return out, torch.ones(G.shape[0], dtype=torch.bool, device=G.device)


def _apply_eig(
    G: torch.Tensor, sigma: torch.Tensor, V: torch.Tensor, alpha: torch.Tensor, damping: float
) -> torch.Tensor:
    """ΔW = G V diag(1/(σ^α + d)) Vᵀ, the shared last step of ``gram`` and ``polar``."""
    w = _inverse_weights(sigma, alpha, damping)
    # Form the n × n factor first: one m×n×n product instead of two.
    return G @ ((V * w.unsqueeze(-2)) @ V.mT)


def _gram(G: torch.Tensor, alpha: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    A = G.mT @ G
    A = 0.5 * (A + A.mT)  # exact symmetry for eigh
    evals, V = torch.linalg.eigh(A)
    # Rounding can make eigenvalues of a PSD matrix slightly negative: clamp before the sqrt.
    sigma = evals.clamp_min(0).sqrt()
    return _apply_eig(G, sigma, V, alpha, damping), torch.ones(G.shape[0], dtype=torch.bool, device=G.device)


def _solve(G: torch.Tensor, alpha: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    # U diag(σ/(σ²+d)) Vᵀ = G (GᵀG + dI)⁻¹, the system being n × n. The n × n inverse comes from
    # the Cholesky factor (n³ flops) and is applied with one m×n×n GEMM: on CPU this was ~1.4×
    # faster than two triangular solves with m right-hand sides (same flops, trsm vs gemm), and
    # as accurate here since d > 0 bounds the condition number by (σ₁² + d)/d.
    n = G.shape[-1]
    eye = torch.eye(n, dtype=G.dtype, device=G.device)
    A = G.mT @ G + damping * eye
    L, info = torch.linalg.cholesky_ex(0.5 * (A + A.mT))
    ok = info == 0
    L = torch.where(ok[..., None, None], L, eye)  # failed factors: harmless stand-in, result discarded
    out = G @ torch.cholesky_inverse(L)
    return out, ok


def newton_schulz_polar(G: torch.Tensor, max_steps: int = NS_MAX_STEPS) -> tuple[torch.Tensor, int]:
    """Polar factor Q of a batch of tall matrices G (…, m, n), m ≥ n, by cubic Newton–Schulz.

    X₀ = G / ‖G‖_F (all σ ≤ 1, inside the convergence region (0, √3)), then
    X ← 1.5 X − 0.5 X (XᵀX). Every singular value follows x ← 1.5x − 0.5x³, which converges
    quadratically to 1 (0 stays 0), so X → Q = U Vᵀ on the range of G. This is the classic
    iteration; the quintic used by Muon trades exactness for speed and does not converge to Q.
    Stops when max ‖X_{k+1} − X_k‖_F / ‖X_k‖_F < √eps over the batch, then polishes once;
    returns (Q, iterations run).
    """
    eps = torch.finfo(G.dtype).eps
    norm = torch.linalg.matrix_norm(G, ord="fro", keepdim=True)
    X = G / norm.clamp_min(torch.finfo(G.dtype).tiny)
    tol = eps**0.5
    steps = 0
    while steps < max_steps:
        X_new = 1.5 * X - 0.5 * X @ (X.mT @ X)
        steps += 1
        change = torch.linalg.matrix_norm(X_new - X, ord="fro") / torch.linalg.matrix_norm(X, ord="fro").clamp_min(
            torch.finfo(G.dtype).tiny
        )
        X = X_new
        if not torch.isfinite(change).all():
            break
        if float(change.max()) < tol:
            if steps < max_steps:
                X = 1.5 * X - 0.5 * X @ (X.mT @ X)
                steps += 1
            break
    return X, steps


def _polar(
    G: torch.Tensor, alpha: torch.Tensor, damping: float, max_steps: int = NS_MAX_STEPS
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ΔW = G (|G|^α + dI)⁻¹ with |G| = QᵀG from Newton–Schulz.

    Choice: f(|G|) = (|G|^α + dI)⁻¹ is evaluated by eigh of the small symmetric |G| for every α
    (one code path; for α = 2 a Cholesky solve with |G|² + dI would equal the ``solve`` route,
    since |G|² = GᵀG). Eigenvalues of |G| are σ directly, not σ², so tiny σ keep their relative
    accuracy better than in ``gram``. Multiplying by G rather than by Q makes directions where
    Newton–Schulz has not fully converged (σ/‖G‖_F below ~√eps) harmless: there
    1/(σ^α + d) ≈ 1/d whatever the estimate of σ.
    """
    Q, steps = newton_schulz_polar(G, max_steps)
    P = Q.mT @ G
    P = 0.5 * (P + P.mT)
    sigma, V = torch.linalg.eigh(P)
    out = _apply_eig(G, sigma.clamp_min(0), V, alpha, damping)
    return out, torch.ones(G.shape[0], dtype=torch.bool, device=G.device), steps


def _finite_per_matrix(X: torch.Tensor) -> torch.Tensor:
    """(B,) mask of matrices with only finite entries.

    Tests the sum of each matrix, which is non-finite iff some entry is (±inf, NaN), or if the
    sum overflows: only for entries near the dtype's maximum, where every method would overflow
    anyway. One reduction instead of a full boolean tensor.
    """
    return torch.isfinite(X.sum(dim=(-2, -1)))


def _attempt(
    method: str, G: torch.Tensor, alpha: torch.Tensor, damping: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run one method on a (B, m, n) tall batch; returns (out, ok mask, NS steps)."""
    if method == "polar":
        out, ok, steps = _polar(G, alpha, damping)
    else:
        fn = {"svd": _svd, "gram": _gram, "solve": _solve}[method]
        out, ok = fn(G, alpha, damping)
        steps = 0
    ok = ok & _finite_per_matrix(out)
    return out, ok, steps


def _attempt_isolated(
    method: str, G: torch.Tensor, alpha: torch.Tensor, damping: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`_attempt`, but if the batched call raises, retry matrix by matrix so that one bad
    matrix does not push its whole batch down the fallback chain."""
    try:
        return _attempt(method, G, alpha, damping)
    except RuntimeError:  # torch.linalg.LinAlgError is a RuntimeError
        if G.shape[0] == 1:
            return G.new_zeros(G.shape), torch.zeros(1, dtype=torch.bool, device=G.device), 0
    outs, oks, steps = [], [], 0
    for i in range(G.shape[0]):
        out, ok, s = _attempt_isolated(method, G[i : i + 1], alpha[i : i + 1], damping)
        outs.append(out)
        oks.append(ok)
        steps = max(steps, s)
    return torch.cat(outs), torch.cat(oks), steps


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the spectral math runs in: at least fp32 (fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)


def spectral_transform_with_stats(
    G: torch.Tensor,
    alpha: float | torch.Tensor = 2.0,
    damping: float = 0.1,
    method: str = "gram",
) -> SpectralResult:
    """U diag(T(σ; α)) Vᵀ for every matrix of a batch G (…, m, n), with fallback statistics.

    ``alpha`` is a float or a tensor of the batch shape (one α per matrix, so matrices of equal
    shape but different α still go through one batched call). ``damping`` d ≥ 0. ``method`` is
    one of :data:`METHODS`; ``solve`` requires α = 2 (``ValueError`` otherwise).
    """
    if method not in FALLBACK_CHAINS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if G.ndim < 2:
        raise ValueError(f"expected a (…, m, n) batch of matrices, got shape {tuple(G.shape)}")
    if damping < 0:
        raise ValueError(f"damping must be ≥ 0 (got {damping})")
    batch_shape = G.shape[:-2]
    m, n = G.shape[-2:]
    work_dtype = compute_dtype(G.dtype)
    Gw = G.reshape(-1, m, n).to(work_dtype)
    B = Gw.shape[0]
    alpha_t = torch.as_tensor(alpha, dtype=work_dtype, device=G.device)
    alpha_t = alpha_t.expand(batch_shape).reshape(B) if alpha_t.ndim else alpha_t.expand(B)
    if method == "solve" and not bool(torch.all(alpha_t == 2)):
        raise ValueError("method 'solve' computes G(GᵀG + dI)⁻¹ and needs alpha = 2; use 'gram' or 'polar'")
    # Work on the smaller side: T commutes with transposition, so a wide G is handled as Gᵀ.
    wide = m < n
    if wide:
        Gw = Gw.mT
    alpha_b = alpha_t.reshape(B, 1)  # broadcasts against (B, k) singular values
    chain = FALLBACK_CHAINS[method]
    finite_in = _finite_per_matrix(Gw)
    result: torch.Tensor | None = None
    first: tuple[torch.Tensor, torch.Tensor] | None = None
    ns_steps = 0
    if bool(finite_in.all()):
        # Fast path (the normal case): the whole batch succeeds with the requested method.
        out, ok, ns_steps = _attempt_isolated(chain[0], Gw, alpha_b, damping)
        if bool(ok.all()):
            result = out
        else:
            first = (out, ok)
    fallbacks = zeroed = 0
    if result is None:
        result = torch.zeros_like(Gw)
        pending = torch.nonzero(finite_in).flatten()
        zeroed = fallbacks = int(B - pending.numel())  # non-finite input: no method can rescue it
        for i, step_method in enumerate(chain):
            if pending.numel() == 0:
                break
            if i == 0 and first is not None:  # already computed on the whole (finite) batch
                out, ok = first
            else:
                out, ok, steps = _attempt_isolated(step_method, Gw[pending], alpha_b[pending], damping)
                ns_steps = max(ns_steps, steps)
            result[pending[ok]] = out[ok]
            pending = pending[~ok]
            if i == 0:
                fallbacks += int(pending.numel())
        zeroed += int(pending.numel())
    if wide:
        result = result.mT
    update = result.reshape(*batch_shape, m, n).to(G.dtype)
    return SpectralResult(update, fallbacks, zeroed, ns_steps)


def spectral_transform(
    G: torch.Tensor,
    alpha: float | torch.Tensor = 2.0,
    damping: float = 0.1,
    method: str = "gram",
) -> torch.Tensor:
    """ΔW = U diag(σ_k / (σ_k^α + d)) Vᵀ for a batch G (…, m, n); see the module docstring.

    Same as :func:`spectral_transform_with_stats` without the statistics.
    """
    return spectral_transform_with_stats(G, alpha, damping, method).update


def spectral_norm_estimate(G: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """σ₁ of each matrix of a batch (…, m, n) by power iteration on GᵀG (a lower bound).

    Starts from the largest-norm row of G (never orthogonal to v₁ unless that row is), so the
    estimate is deterministic. Used for ``normalize='spectral'``; the same estimate for every
    method keeps the methods comparable. Returns a tensor of the batch shape, in fp32 or wider.
    """
    work = G.to(compute_dtype(G.dtype))
    rows = torch.linalg.vector_norm(work, dim=-1)  # (…, m)
    idx = rows.argmax(dim=-1, keepdim=True).unsqueeze(-1).expand(*work.shape[:-2], 1, work.shape[-1])
    v = torch.gather(work, -2, idx)  # (…, 1, n): vᵀ, a row
    tiny = torch.finfo(work.dtype).tiny
    for _ in range(iters):
        # vᵀ ← (G v)ᵀ G = (GᵀG v)ᵀ. The row form reads G in its stored order; the column form
        # Gᵀ (G v) multiplies by a transposed view, which took ~20× longer on CPU (batched matrix ×
        # vector, measured on ResNet-18's 4608 × 512 buckets: 0.78 s of power iteration per bucket,
        # more than the whole `gram` transform, so normalize=spectral doubled SN's step).
        v = (work @ v.mT).mT @ work
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(tiny)
    return torch.linalg.vector_norm(work @ v.mT, dim=(-2, -1))
