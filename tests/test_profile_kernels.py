"""measure_kernel / measure_interleaved: the optimizers' own code paths, timed as medians of warm
calls, with FLOPs, interleaved ceilings and dtypes."""

from __future__ import annotations

from statistics import median

import pytest
import torch

from bench.profile import flops as F
from bench.profile import kernels as K


def test_reported_time_is_the_median_of_the_warm_calls(monkeypatch):
    # Calls in order: the first (untimed, 100 s), one more warm-up (50 s), then 5 timed rounds.
    fake = iter([100.0, 50.0, 3.0, 1.0, 2.0, 9.0, 4.0])

    def fake_time_calls(fn, device, calls):
        return [next(fake) for _ in range(calls)]

    monkeypatch.setattr(K, "_time_calls", fake_time_calls)
    cache = {(32, 16, 1, "torch.float32", "cpu"): 1e-3}  # a known ceiling: no ceiling kernel is timed
    row = K.measure_kernel("gram", (32, 16), "fp32", "cpu", repeats=5, warmup=2, ceiling_cache=cache)
    assert row["status"] == "ok" and row["methods_version"] == F.METHODS_VERSION
    assert row["seconds"] == median([3.0, 1.0, 2.0, 9.0, 4.0]) == 3.0
    assert row["seconds_min"] == 1.0 and row["first_call_seconds"] == 100.0
    assert row["repeats"] == 5 and row["warmup"] == 2
    assert row["flops"] == F.transform("gram", 32, 16)
    assert row["flops_per_s"] == pytest.approx(row["flops"] / 3.0)
    assert row["ceiling_seconds"] == 1e-3
    assert row["efficiency"] == pytest.approx(row["flops_per_s"] / (F.matmul(32, 16, 16) / 1e-3))


def test_slow_first_call_reduces_repeats(monkeypatch):
    fake = iter([10.0] + [1.0] * 10)
    monkeypatch.setattr(K, "_time_calls", lambda fn, device, calls: [next(fake) for _ in range(calls)])
    row = K.measure_kernel("solve", (16, 8), repeats=5, warmup=3, max_seconds=25.0,
                           ceiling_cache={(16, 8, 1, "torch.float32", "cpu"): 1.0})
    assert row["repeats"] == 2  # 25 s / 10 s per call; the extra warm-ups were dropped
    assert row["seconds"] == 1.0


def test_real_measurements_are_positive_and_consistent():
    cache: dict = {}
    rows = K.measure_interleaved(list(K.METHODS), (96, 48), repeats=3, warmup=1, ceiling_cache=cache, min_seconds=0.0)
    assert [r["method"] for r in rows] == ["svd", "gram", "solve", "polar", "ns5"]  # no ceiling row
    for r in rows:
        assert r["status"] == "ok", r
        assert r["seconds"] > 0 and r["seconds_min"] <= r["seconds"] <= r["seconds_p75"]
        assert r["repeats"] == 3 and r["flops"] > 0 and r["efficiency"] > 0
        assert r["memory_kind"] == "analytic_workspace" and r["peak_memory_bytes"] > 0
        assert r["shape"] == "96x48" and r["k"] == 48
    # The ceiling was timed in the same rounds, once, and every row is measured against it.
    assert list(cache) == [(96, 48, 1, "torch.float32", "cpu")]
    assert all(r["ceiling_seconds"] == cache[(96, 48, 1, "torch.float32", "cpu")] for r in rows)
    by = {r["method"]: r for r in rows}
    assert by["ns5"]["ns_steps"] == 5 and by["polar"]["ns_steps"] > 0 and by["gram"]["ns_steps"] is None


def test_bf16_routes_upcast_and_newton_schulz_does_not():
    rows = K.measure_interleaved(["ns5", "solve"], (64, 32), "bf16", repeats=1, min_seconds=0.0)
    ns, solve = rows
    assert (ns["compute_dtype"], ns["upcast"]) == ("bfloat16", False)
    assert (solve["compute_dtype"], solve["upcast"]) == ("float32", True)
    assert solve["status"] == ns["status"] == "ok"
    assert ns["ceiling_seconds"] > 0 and solve["ceiling_seconds"] > 0  # one ceiling per compute dtype


def test_routes_are_the_spectral_newton_update():
    """Against an explicit SVD in float64: ΔW = U diag(σ/(σ² + d)) Vᵀ (α = 2) for every route."""
    X = K.make_matrix(40, 24, dtype=torch.float64, seed=3)
    U, S, Vh = torch.linalg.svd(X[0], full_matrices=False)
    expected = (U * (S / (S**2 + 0.1))) @ Vh
    for route in F.ROUTES:
        torch.testing.assert_close(K.build_kernel(route, X, damping=0.1)()[0], expected, rtol=1e-6, atol=1e-9)


def test_ns5_is_the_update_a_muon_step_applies():
    """With momentum 0, weight decay 0, lr 1 and no update scaling, one Muon step subtracts exactly
    its orthogonalised gradient: the ns5 kernel must reproduce it."""
    import optimizers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40, bias=False), torch.nn.ReLU(), torch.nn.Linear(40, 3))
    weight = model[0].weight
    opt = optimizers.build("muon", model, lr=1.0, momentum=0.0, weight_decay=0.0, adjust_lr="none",
                           ns_dtype="float32")
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = weight.detach().clone()
    opt.step()
    applied = before - weight.detach()
    torch.testing.assert_close(K.build_kernel("ns5", weight.grad.unsqueeze(0))()[0], applied, rtol=1e-5, atol=1e-6)


def test_power_law_matrices_have_the_asked_spectrum():
    P = K.make_matrix(50, 20, kind="power_law", decay=1.0, seed=1)[0]
    torch.testing.assert_close(torch.linalg.svdvals(P), 1.0 / torch.arange(1, 21, dtype=torch.float32),
                               rtol=1e-4, atol=1e-5)
