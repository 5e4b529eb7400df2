"""The spectral transfer T(σ; α) = σ/(σ^α + d) and its four routes (optimizers.spectral).

Oracle: U diag(T(σ)) Vᵀ from numpy.linalg.svd in float64, written here independently of the code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizers.spectral import (
    METHODS,
    newton_schulz_polar,
    spectral_norm_estimate,
    spectral_transform,
    spectral_transform_with_stats,
    transfer,
)

ANY_ALPHA_METHODS = ("svd", "gram", "polar")


def oracle(G: np.ndarray, alpha: float, d: float) -> np.ndarray:
    """U diag(σ/(σ^α + d)) Vᵀ per matrix, float64 numpy."""
    out = np.empty_like(G)
    for idx in np.ndindex(G.shape[:-2]):
        U, s, Vt = np.linalg.svd(G[idx], full_matrices=False)
        den = s**alpha + d
        t = np.divide(s, den, out=np.zeros_like(s), where=den > 0)
        out[idx] = (U * t) @ Vt
    return out


def well_conditioned(shape: tuple[int, ...], seed: int, cond: float = 10.0, scale: float = 1.0) -> torch.Tensor:
    """Random matrices with singular values spread log-uniformly over [scale/cond, scale]."""
    rng = np.random.default_rng(seed)
    *batch, m, n = shape
    k = min(m, n)
    out = np.empty(shape)
    for idx in np.ndindex(*batch):
        U, _ = np.linalg.qr(rng.standard_normal((m, k)))
        V, _ = np.linalg.qr(rng.standard_normal((n, k)))
        s = scale * np.logspace(0, -np.log10(cond), k)
        out[idx] = (U * s) @ V.T
    return torch.from_numpy(out)


def rank_deficient(shape: tuple[int, ...], rank: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    *batch, m, n = shape
    A = rng.standard_normal((*batch, m, rank))
    B = rng.standard_normal((*batch, rank, n))
    return torch.from_numpy(A @ B / np.sqrt(rank))


SHAPES = [(12, 5), (5, 12), (9, 9), (3, 16, 7), (2, 3, 6, 10)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_alpha2_matches_oracle_well_conditioned(shape: tuple[int, ...], method: str) -> None:
    G = well_conditioned(shape, seed=1, cond=30.0, scale=2.0)
    out = spectral_transform(G, 2.0, 0.1, method)
    assert out.shape == G.shape and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), oracle(G.numpy(), 2.0, 0.1), atol=1e-11, rtol=0)


@pytest.mark.parametrize("shape", [(14, 6), (6, 14), (2, 10, 10)], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_alpha2_matches_oracle_rank_deficient(shape: tuple[int, ...], method: str) -> None:
    G = rank_deficient(shape, rank=3, seed=2)
    out = spectral_transform(G, 2.0, 0.1, method)
    np.testing.assert_allclose(out.numpy(), oracle(G.numpy(), 2.0, 0.1), atol=1e-9, rtol=0)


@pytest.mark.parametrize("alpha", [0.84, 1.17, 1.43, 3.0])
@pytest.mark.parametrize("method", ANY_ALPHA_METHODS)
@pytest.mark.parametrize("shape", [(11, 4), (4, 11), (3, 8, 8)], ids=str)
def test_any_alpha_matches_oracle(alpha: float, method: str, shape: tuple[int, ...]) -> None:
    G = well_conditioned(shape, seed=3, cond=20.0, scale=1.5)
    out = spectral_transform(G, alpha, 0.1, method)
    np.testing.assert_allclose(out.numpy(), oracle(G.numpy(), alpha, 0.1), atol=1e-10, rtol=0)
    Gr = rank_deficient(shape, rank=2, seed=4)
    out = spectral_transform(Gr, alpha, 0.1, method)
    np.testing.assert_allclose(out.numpy(), oracle(Gr.numpy(), alpha, 0.1), atol=1e-7, rtol=0)


def test_per_matrix_alpha_in_one_batch() -> None:
    G = well_conditioned((3, 9, 6), seed=5)
    alphas = torch.tensor([0.84, 1.43, 2.0], dtype=torch.float64)
    for method in ANY_ALPHA_METHODS:
        out = spectral_transform(G, alphas, 0.1, method)
        for i, a in enumerate(alphas.tolist()):
            np.testing.assert_allclose(out[i].numpy(), oracle(G[i].numpy(), a, 0.1), atol=1e-11)


def test_alpha2_is_a_damped_solve_on_either_side() -> None:
    G = well_conditioned((10, 4), seed=6, cond=50.0)
    d = 0.1
    right = G @ torch.linalg.inv(G.T @ G + d * torch.eye(4, dtype=G.dtype))
    left = torch.linalg.inv(G @ G.T + d * torch.eye(10, dtype=G.dtype)) @ G
    for method in METHODS:
        out = spectral_transform(G, 2.0, d, method)
        torch.testing.assert_close(out, right, atol=1e-12, rtol=0)
        torch.testing.assert_close(out, left, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ANY_ALPHA_METHODS)
@pytest.mark.parametrize("shape", [(12, 5), (5, 12)], ids=str)
def test_alpha1_small_damping_is_orthogonalisation(method: str, shape: tuple[int, ...]) -> None:
    G = well_conditioned(shape, seed=7, cond=5.0)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    for d in (1e-6, 1e-9):
        out = spectral_transform(G, 1.0, d, method)
        # T(σ; 1) = σ/(σ + d) = 1 − d/σ + …: error ~ d / σ_min.
        torch.testing.assert_close(out, U @ Vh, atol=20 * d, rtol=0)
    exact = spectral_transform(G, 1.0, 0.0, method)
    torch.testing.assert_close(exact, U @ Vh, atol=1e-10, rtol=0)


def test_transfer_function_values() -> None:
    s = torch.tensor([0.0, 0.1, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(transfer(s, 2.0, 0.1), s / (s**2 + 0.1))
    t = transfer(s, 1.0, 0.0)  # σ/σ = 1, with T(0) = 0 rather than 0/0
    assert t.tolist() == [0.0, 1.0, 1.0, 1.0]


def test_solve_refuses_alpha_other_than_2() -> None:
    with pytest.raises(ValueError, match="alpha = 2"):
        spectral_transform(torch.randn(4, 3), 1.5, 0.1, "solve")
    with pytest.raises(ValueError, match="method must be one of"):
        spectral_transform(torch.randn(4, 3), 2.0, 0.1, "qr")


@pytest.mark.parametrize("method", METHODS)
def test_nan_input_falls_back_to_zeros_and_is_counted(method: str) -> None:
    G = well_conditioned((4, 8, 5), seed=8)
    G[2, 1, 1] = float("nan")
    res = spectral_transform_with_stats(G, 2.0, 0.1, method)
    assert torch.isfinite(res.update).all()
    assert torch.equal(res.update[2], torch.zeros(8, 5, dtype=G.dtype))
    assert res.fallbacks == 1 and res.zeroed == 1
    good = [0, 1, 3]
    np.testing.assert_allclose(res.update[good].numpy(), oracle(G[good].numpy(), 2.0, 0.1), atol=1e-11)


def test_failed_method_falls_back_to_next() -> None:
    # d = 0 and a rank-deficient G make GᵀG + dI singular: the Cholesky solve fails and gram
    # takes over (its answer in the null directions is ill-posed, but finite).
    G = rank_deficient((2, 7, 5), rank=2, seed=9)
    res = spectral_transform_with_stats(G, 2.0, 0.0, "solve")
    assert res.fallbacks == 2 and res.zeroed == 0
    assert torch.isfinite(res.update).all()


def test_only_the_failing_matrix_of_a_batch_falls_back() -> None:
    # With d = 0 the zero matrix makes GᵀG + dI = 0 (Cholesky fails); gram maps it to 0 exactly
    # (weights 1/(σ^α + d) are set to 0 where the denominator vanishes). Its neighbours keep
    # the solve result.
    G = well_conditioned((3, 6, 4), seed=15)
    G[1] = 0.0
    res = spectral_transform_with_stats(G, 2.0, 0.0, "solve")
    assert (res.fallbacks, res.zeroed) == (1, 0)
    assert torch.equal(res.update[1], torch.zeros(6, 4, dtype=G.dtype))
    np.testing.assert_allclose(res.update[[0, 2]].numpy(), oracle(G[[0, 2]].numpy(), 2.0, 0.0), atol=1e-10)


def test_no_fallback_on_clean_input() -> None:
    G = well_conditioned((3, 6, 4), seed=10)
    for method in METHODS:
        res = spectral_transform_with_stats(G, 2.0, 0.1, method)
        assert (res.fallbacks, res.zeroed) == (0, 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_is_computed_in_fp32(dtype: torch.dtype) -> None:
    G64 = well_conditioned((2, 16, 8), seed=11, cond=5.0)
    G = G64.to(dtype)
    ref = torch.from_numpy(oracle(G.to(torch.float64).numpy(), 2.0, 0.1))
    for method in METHODS:
        out = spectral_transform(G, 2.0, 0.1, method)
        assert out.dtype == dtype
        # The math runs in fp32 and only the final cast rounds: identical to transforming the
        # upcast input, and within one rounding of the float64 oracle.
        assert torch.equal(out, spectral_transform(G.float(), 2.0, 0.1, method).to(dtype))
        err = (out.to(torch.float64) - ref).abs().max().item()
        assert err <= torch.finfo(dtype).eps * ref.abs().max().item()


def test_polar_agrees_with_svd_in_fp32() -> None:
    G = well_conditioned((3, 64, 32), seed=12, cond=100.0, scale=3.0).float()
    for alpha in (1.0, 1.43, 2.0):
        ref = spectral_transform(G, alpha, 0.1, "svd")
        res = spectral_transform_with_stats(G, alpha, 0.1, "polar")
        torch.testing.assert_close(res.update, ref, atol=2e-5, rtol=1e-4)
        assert 0 < res.ns_steps < 60


def test_newton_schulz_converges_to_the_polar_factor() -> None:
    G = well_conditioned((2, 20, 8), seed=13, cond=100.0)
    Q, steps = newton_schulz_polar(G)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    torch.testing.assert_close(Q, U @ Vh, atol=1e-12, rtol=0)
    assert steps < 60


def test_spectral_norm_estimate() -> None:
    G = well_conditioned((3, 12, 7), seed=14, cond=10.0, scale=4.0)
    est = spectral_norm_estimate(G, iters=30)
    torch.testing.assert_close(est, torch.full((3,), 4.0, dtype=G.dtype), atol=1e-8, rtol=0)
