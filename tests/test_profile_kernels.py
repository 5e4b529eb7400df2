"""measure_kernel / measure_interleaved: positive medians of warm calls, FLOPs, ceilings, dtypes."""

from __future__ import annotations

import math
from statistics import median

import pytest
import torch

from bench.profile import flops as F
from bench.profile import kernels as K


def test_config_method_list_matches_kernels():
    from bench.profile.config import METHODS

    assert METHODS == K.METHODS


def test_reported_time_is_the_median_of_the_warm_calls(monkeypatch):
    # Calls in order: the first (untimed, 100 s), one more warm-up (50 s), then 5 timed rounds.
    fake = iter([100.0, 50.0, 3.0, 1.0, 2.0, 9.0, 4.0])

    def fake_time_calls(fn, device, calls):
        return [next(fake) for _ in range(calls)]

    monkeypatch.setattr(K, "_time_calls", fake_time_calls)
    cache = {(32, 16, 1, "torch.float32", "cpu"): 1e-3}  # a known ceiling: no extra matmul timing
    row = K.measure_kernel("gram_eigh", (32, 16), "fp32", "cpu", repeats=5, warmup=2, ceiling_cache=cache)
    assert row["status"] == "ok"
    assert row["seconds"] == median([3.0, 1.0, 2.0, 9.0, 4.0]) == 3.0
    assert row["seconds_min"] == 1.0 and row["first_call_seconds"] == 100.0
    assert row["repeats"] == 5 and row["warmup"] == 2
    assert row["flops"] == F.gram_eigh(32, 16)
    assert row["flops_per_s"] == pytest.approx(row["flops"] / 3.0)
    assert row["ceiling_seconds"] == 1e-3
    assert row["efficiency"] == pytest.approx(row["flops_per_s"] / (F.matmul(32, 16, 16) / 1e-3))


def test_slow_first_call_reduces_repeats(monkeypatch):
    fake = iter([10.0] + [1.0] * 10)
    monkeypatch.setattr(K, "_time_calls", lambda fn, device, calls: [next(fake) for _ in range(calls)])
    row = K.measure_kernel("damped_solve", (16, 8), repeats=5, warmup=3, max_seconds=25.0,
                           ceiling_cache={(16, 8, 1, "torch.float32", "cpu"): 1.0})
    assert row["repeats"] == 2  # 25 s / 10 s per call; the extra warm-ups were dropped
    assert row["seconds"] == 1.0


def test_real_measurements_are_positive_and_consistent():
    cache: dict = {}
    rows = K.measure_interleaved(["matmul", "gram_eigh", "damped_solve", "ns5", "transform:solve"], (96, 48),
                                 repeats=3, warmup=1, ceiling_cache=cache, min_seconds=0.0)
    by = {r["method"]: r for r in rows}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["seconds"] > 0 and r["seconds_min"] <= r["seconds"] <= r["seconds_p75"]
        assert r["repeats"] == 3 and r["flops"] > 0 and r["efficiency"] > 0
        assert r["memory_kind"] == "analytic_workspace" and r["peak_memory_bytes"] > 0
        assert r["shape"] == "96x48" and r["k"] == 48
    # Every row's ceiling is the matmul row measured with them.
    assert all(r["ceiling_seconds"] == by["matmul"]["seconds"] for r in rows)
    assert by["matmul"]["efficiency"] == pytest.approx(1.0)
    assert by["ns5"]["ns_steps"] == 5


def test_cuda_only_drivers_are_reported_not_raised():
    row = K.measure_kernel("svd:gesvdj", (32, 16), device="cpu", repeats=1)
    assert row["status"] == "unsupported" and "CUDA" in row["error"] and math.isnan(row["seconds"])


def test_bf16_decompositions_upcast_and_record_it():
    ns = K.measure_kernel("ns5", (64, 32), "bf16", repeats=1, min_seconds=0.0)
    solve = K.measure_kernel("damped_solve", (64, 32), "bf16", repeats=1, min_seconds=0.0)
    assert (ns["compute_dtype"], ns["upcast"]) == ("bfloat16", False)
    assert (solve["compute_dtype"], solve["upcast"]) == ("float32", True)
    assert solve["status"] == ns["status"] == "ok"


def test_kernels_compute_the_right_thing():
    from optimizers.spectral import spectral_transform

    X = K.make_matrix(40, 24, dtype=torch.float64, seed=3)
    torch.testing.assert_close(K._damped_solve(X, 0.1), spectral_transform(X, 2.0, 0.1, "solve"))
    evals, _ = K.build_kernel("gram_eigh", X)()
    sigma = torch.linalg.svdvals(X)
    torch.testing.assert_close(evals.flip(-1).sqrt(), sigma)
    Q = K._ns5(X)  # approximately orthogonal columns (Muon's quintic is not exact)
    s = torch.linalg.svdvals(Q)
    assert float(s.max()) < 1.3 and float(s.min()) > 0.6
    P = K.make_matrix(50, 20, kind="power_law", decay=1.0, seed=1)[0]
    torch.testing.assert_close(torch.linalg.svdvals(P), 1.0 / torch.arange(1, 21, dtype=torch.float32),
                               rtol=1e-4, atol=1e-5)
