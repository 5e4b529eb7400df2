"""Sketched Kronecker factors (bench.probes.sketch) against the full factor, in float64:
exact when the rows span fewer than ℓ dimensions, within the stated bound otherwise; and the
probe's sketched eigenvalues against its exact ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_probes_oracle import CE, make_data, make_model, one_thread, settings  # noqa: F401 - autouse fixture

from bench.probes import run_probe
from bench.probes.sketch import GramSketch, frequent_directions

F64 = torch.float64


def _rows(n: int, d: int, rank: int, seed: int, decay: float = 0.7) -> torch.Tensor:
    """n rows in R^d spanning ``rank`` dimensions, with decaying scales (gradient-like)."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=gen, dtype=F64))[0]
    coef = torch.randn(n, rank, generator=gen, dtype=F64) * decay ** torch.arange(rank, dtype=F64)
    return coef @ basis.T


def _two_pass(rows: torch.Tensor, size: int, chunk: int = 7) -> GramSketch:
    """A sketch fed in chunks (first pass), frozen, then projected (second pass)."""
    sk = GramSketch(rows.shape[1], size)
    for i in range(0, rows.shape[0], chunk):
        sk.update(rows[i : i + chunk])
    sk.freeze()
    for i in range(0, rows.shape[0], chunk):
        sk.project(rows[i : i + chunk])
    return sk


def _exact(rows: torch.Tensor) -> np.ndarray:
    return torch.linalg.eigvalsh(rows.T @ rows).flip(0).numpy()


def test_exact_when_rows_span_fewer_than_l_dimensions():
    rows = _rows(200, 60, rank=11, seed=0)
    sk = _two_pass(rows, size=12)
    assert not sk.exact and sk.basis.shape == (60, 12) and sk.gram.shape == (12, 12)  # no 60 × 60 factor
    assert sk.bound < 1e-12 * float(_exact(rows)[0])  # round-off only
    np.testing.assert_allclose(sk.eigenvalues().numpy()[:11], _exact(rows)[:11], rtol=1e-10)


@pytest.mark.parametrize(("size", "decay"), [(8, 0.7), (8, 0.97), (20, 0.9)])
def test_bound_holds_when_the_rank_exceeds_l(size, decay):
    rows = _rows(300, 50, rank=40, seed=1, decay=decay)
    sk = _two_pass(rows, size)
    exact, approx = _exact(rows)[:size], sk.eigenvalues().numpy()
    gap = exact - approx
    assert sk.bound > 0
    assert (gap >= -1e-10 * exact[0]).all()  # Ritz values never exceed the true eigenvalues
    assert (gap <= sk.bound * (1 + 1e-10)).all()
    # The a priori bound: Δ ≤ ‖R − R_j‖²_F / (ℓ + 1 − j) for every j ≤ ℓ.
    tail = np.cumsum(_exact(rows)[::-1])[::-1]  # tail[j] = Σ_{i ≥ j} λ_i = ‖R − R_j‖²_F
    assert all(sk.bound <= tail[j] / (size + 1 - j) * (1 + 1e-10) for j in range(size))
    # Rayleigh-Ritz refines Frequent Directions: between B's squared singular values and the truth.
    fd, _ = frequent_directions(torch.zeros(0, 50, dtype=F64), rows, size)
    fd_values = torch.linalg.svdvals(fd).numpy() ** 2
    assert (approx[: fd_values.size] >= fd_values * (1 - 1e-10)).all()


def test_merged_sketches_bound_the_union():
    """Two ranks' sketches merged (stacked and re-sketched) keep the bound for all rows."""
    rows = _rows(240, 30, rank=30, seed=2, decay=0.9)
    halves = [GramSketch(30, 10), GramSketch(30, 10)]
    halves[0].update(rows[:120])
    halves[1].update(rows[120:])
    merged = GramSketch(30, 10)
    merged.merge(torch.cat([h.padded_rows() for h in halves]), sum(h.shrinkage for h in halves))
    merged.freeze()
    merged.project(rows)
    gap = _exact(rows)[:10] - merged.eigenvalues().numpy()
    assert (gap >= -1e-10).all() and (gap <= merged.bound * (1 + 1e-10)).all()


def test_probe_sketch_matches_the_exact_factor_and_its_bound():
    """The probe with ℓ = 4 on the MLP (every side wider than 4) against ℓ = 20 (exact factors):
    equal to 1e-10 when the batch has 3 samples (rank ≤ 3 < ℓ), within lambda_*_bound with 24."""
    model = make_model("mlp")
    for n, exact_expected in ((3, True), (24, False)):
        data = make_data("mlp", n=n)
        kw = {"batch_size": n, "micro_batch_size": 2, "top_k": 3}
        full = pd.DataFrame(run_probe(model, CE, data, settings(**kw, sketch_size=20), "cpu").curvature_rows)
        sk = pd.DataFrame(run_probe(model, CE, data, settings(**kw, sketch_size=4), "cpu").curvature_rows)
        assert (full.lambda_delta_bound == 0).all() and (full.lambda_A_bound == 0).all()
        for side in ("delta", "A"):
            exact, approx, bound = full[f"lambda_{side}"], sk[f"lambda_{side}"], sk[f"lambda_{side}_bound"]
            ok = exact.notna()
            if exact_expected:
                np.testing.assert_allclose(approx[ok], exact[ok], rtol=1e-10, atol=1e-14 * exact[ok].max())
            else:
                gap = (exact - approx)[ok]
                assert (gap >= -1e-12 * exact[ok].max()).all() and (gap <= bound[ok] * (1 + 1e-9) + 1e-15).all()
                assert (bound > 0).any()
        # Quadratic forms need no factor: h_kron's numerators are exact whatever ℓ.
        np.testing.assert_allclose(sk.rho_delta * sk.lambda_delta, full.rho_delta * full.lambda_delta, rtol=1e-10)
