"""analysis.cost_model / cost_report on synthetic profile tables with known constants."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis import cost_model as CM
from analysis import cost_report as CR

A_TRUE, B_TRUE = 2.5e-11, 4e-4  # 40 GFLOP/s, 0.4 ms per call


def synthetic(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Kernel rows t = a·flops + b (± multiplicative noise) for two methods, plus a catalogue."""
    rng = np.random.default_rng(seed)
    rows = []
    sizes = [(64, 32), (128, 64), (256, 128), (384, 128), (512, 256), (768, 256), (1024, 512), (2048, 512),
             (3072, 768)]
    for method, scale in (("gram_eigh", 1.0), ("damped_solve", 0.5)):
        for M, k in sizes:
            flops = 2 * M * k**2 + 14 / 3 * k**3
            t = (scale * A_TRUE * flops + B_TRUE) * (1 + noise * rng.standard_normal())
            rows.append({"op": "kernel", "status": "ok", "method": method, "dtype": "fp32", "device": "cpu",
                         "device_name": "TestCPU", "threads": 2, "shape": f"{M}x{k}", "shape_m": M, "shape_n": k,
                         "flops": flops, "seconds": t, "labels": f"toy/{M}x{k}"})
    for method in ("gram_eigh", "damped_solve"):
        for name, m, n, count in (("big", 1000, 500, 3), ("small", 100, 50, 5)):
            rows.append({"op": "shape", "status": "catalog", "model": "toy", "shape_name": name,
                         "layer_type": "linear", "shape_m": m, "shape_n": n, "count": count, "method": method,
                         "flops": 1e9 if name == "big" else 1e6, "device": "cpu", "device_name": "TestCPU"})
    return pd.DataFrame(rows)


def test_fit_recovers_known_constants_within_one_percent():
    fits = CM.fit_kernels(synthetic(noise=0.002))
    g = fits[("TestCPU", "gram_eigh", "fp32")]
    assert g.a == pytest.approx(A_TRUE, rel=0.01) and g.b == pytest.approx(B_TRUE, rel=0.01)
    d = fits[("TestCPU", "damped_solve", "fp32")]
    assert d.a == pytest.approx(0.5 * A_TRUE, rel=0.01) and d.b == pytest.approx(B_TRUE, rel=0.01)
    assert g.n == 9 and g.median_rel_err < 0.01


def test_nnls_clamps_a_negative_intercept():
    x = np.array([1e6, 1e7, 1e8, 1e9])
    a, b = CM.fit_relative_nnls(x, 1e-9 * x - 1e-4 * (x < 5e6) + 1e-12)  # would want b < 0
    assert b == 0.0 and a > 0
    a, b = CM.fit_relative_nnls([5.0], [2.0])  # one point: a line through it, not an error
    assert a * 5 + b == pytest.approx(2.0)


def test_alpha_beta_fit_recovers_collective_constants():
    alpha, beta = 25e-6, 1 / 12e9
    sizes = np.geomspace(1e3, 1e9, 12)
    rows = [{"op": "collective", "status": "ok", "method": "all_gather", "ranks": 4, "bytes": b,
             "seconds": alpha + beta * b, "device": "cuda", "device_name": "G"} for b in sizes]
    fit = CM.fit_collectives(pd.DataFrame(rows))[("G", "all_gather", 4)]
    assert fit.b == pytest.approx(alpha, rel=0.01) and fit.a == pytest.approx(beta, rel=0.01)


def test_held_out_accuracy_on_exact_data_is_exact():
    acc = CM.held_out_accuracy(synthetic())
    assert set(acc["method"]) == {"gram_eigh", "damped_solve"}
    assert (acc["n_held_out"] == 3).all() and (acc["median_rel_err"] < 1e-9).all()
    assert CM.overall_held_out_error(acc) < 1e-9


def test_lpt_schedule():
    assert CM.lpt_schedule([5, 4, 3, 3, 3], 2) == [10, 8]  # LPT: {5,3} {4,3,3}... → loads 8 and 10
    assert CM.lpt_schedule([1, 1, 1], 5) == [1, 1, 1, 0, 0]


def test_prediction_composes_shape_counts():
    prof = CM.build_device_profile(synthetic(), "test")
    fit = prof["kernels"]["gram_eigh|fp32"]
    t_big, t_small = fit["a"] * 1e9 + fit["b"], fit["a"] * 1e6 + fit["b"]
    one = CM.predict_step_cost("toy", 1, prof, "gram_eigh")
    assert one["matrices"] == 8 and one["elements"] == 3 * 1000 * 500 + 5 * 100 * 50
    assert one["serial_compute_s"] == pytest.approx(3 * t_big + 5 * t_small)
    assert one["total_s"] == one["compute_s"] == one["serial_compute_s"] and one["allgather_s"] == 0
    four = CM.predict_step_cost("toy", 4, prof, "gram_eigh")
    # LPT on 4 ranks: the 3 big matrices on 3 ranks, the 5 small ones fill the 4th rank first.
    assert four["compute_s"] == pytest.approx(t_big)
    assert four["allgather_bytes"] == four["elements"] * CM.UPDATE_BYTES
    expected_gather, source = CM.allgather_seconds(four["allgather_bytes"], 4, prof)
    assert four["allgather_s"] == pytest.approx(expected_gather) and "assumed" in source
    d = CM.DEFAULT_INTERCONNECT
    assert expected_gather == pytest.approx(3 * d["latency_s"] + 0.75 * four["allgather_bytes"] /
                                            d["intra_node_busbw_Bps"])
    assert four["total_s"] == pytest.approx(four["compute_s"] + four["allgather_s"])
    rep = CM.predict_step_cost("toy", 4, prof, "gram_eigh", sharded=False)
    assert rep["compute_s"] == pytest.approx(one["serial_compute_s"]) and rep["allgather_s"] == 0


def test_measured_collectives_are_used_for_the_all_gather():
    prof = CM.build_device_profile(synthetic(), "test")
    p0, latency, busbw = 4, 20e-6, 100e9
    prof["collectives"] = {"all_gather|4": {"a": (p0 - 1) / (p0 * busbw), "b": (p0 - 1) * latency}}
    t, source = CM.allgather_seconds(1e9, 16, prof)
    assert "measured" in source and t == pytest.approx(15 * latency + 15 / 16 * 1e9 / busbw)


def test_device_profile_roundtrip_and_cost_cli(tmp_path, capsys):
    prof = CM.build_device_profile(synthetic(), "test")
    path = CM.save_device_profile(prof, tmp_path / "test.json")
    doc = json.loads(path.read_text())  # valid JSON: NaN became null
    assert doc["models"]["toy"][0]["count"] in (3, 5)
    assert CM.load_device_profile(path)["kernels"].keys() == prof["kernels"].keys()
    assert CR.cost_cli("toy", 4, path, "damped_solve") == 0
    out = capsys.readouterr().out
    assert "per-rank compute" in out and "all-gather" in out and "toy on 4" in out
    assert CR.cost_cli("nope", 4, path) == 2
    assert "not in the device profile" in capsys.readouterr().err


def test_cost_report_writes_plot_table_and_profile(tmp_path):
    df = synthetic(noise=0.01)
    f = tmp_path / "profile.parquet"
    df.to_parquet(f)
    rep = CR.build_cost_report(f, "test", out_dir=tmp_path / "rep")
    assert rep.profile_path.is_file() and rep.report_path.is_file()
    assert rep.plot_paths and all(p.stat().st_size > 1000 for p in rep.plot_paths)
    table = CR.cost_table(rep.profile, models=["toy"], ranks=[1, 4], methods=["gram_eigh"])
    assert list(table["ranks"]) == [1, 4]
    assert "Held-out" in rep.text and "toy" not in CR.format_cost_table(pd.DataFrame())


def test_method_ratios_weight_by_counts():
    df = synthetic()
    ratios = CR.method_ratios(df, "toy", [("gram_eigh", "damped_solve")])
    per_shape = ratios[ratios["shape"] != "whole model"]
    assert len(per_shape) == 9 and (per_shape["ratio_value"] > 1).all()


def test_probe_overhead_uses_probe_rows_when_present():
    assert CM.probe_overhead(synthetic()) is None
    rows = [{"op": "curvature_probe", "trial_id": "t", "step": 10, "layer": "*", "phase": "total", "seconds": 6.0},
            {"op": "curvature_probe", "trial_id": "t", "step": 10, "layer": "fc", "phase": "hvp", "seconds": 4.0},
            {"op": "curvature_probe", "trial_id": "t", "step": 10, "layer": "conv", "phase": "hvp", "seconds": 1.0}]
    out = CM.probe_overhead(pd.DataFrame(rows), step_time_s=0.5)
    assert out["probe_seconds"] == 6.0 and out["phase_seconds"] == {"hvp": 5.0} and out["probe_in_steps"] == 12
    assert math.isfinite(out["probe_seconds"])


def _probe_rows(kappa: float) -> pd.DataFrame:
    """probe_overhead rows that follow probe/step = κ·K·L·B_probe/B_train exactly."""
    rows = []
    for k, layers, batch, train, step in ((20, 13, 256, 32, 0.07), (5, 13, 256, 32, 0.05), (20, 7, 64, 16, 0.01)):
        rows.append({"op": "probe_overhead", "status": "ok", "k": k, "count": layers, "batch": batch,
                     "train_batch": train, "step_seconds": step, "seconds": kappa * k * layers * batch / train * step})
    return pd.DataFrame(rows)


def test_probe_constant_is_recovered_and_predicts_probe_cost_at_scale(tmp_path, capsys):
    fit = CM.fit_probe_constant(_probe_rows(2.5))
    assert fit["kappa"] == pytest.approx(2.5) and fit["points"] == 3 and fit["loo_median_rel_err"] == pytest.approx(0)
    assert CM.fit_probe_constant(synthetic()) is None  # kernel rows only: nothing to fit

    prof = CM.build_device_profile(pd.concat([synthetic(), _probe_rows(2.5)]), "test")
    pred = CM.predict_probe_cost(prof, layers=560, top_k=20, probe_batch=2048, train_batch=1024, interval=100)
    assert pred["probe_in_steps"] == pytest.approx(2.5 * 20 * 560 * 2)  # 56,000 training steps
    assert pred["overhead_at_interval"] == pytest.approx(560.0)
    assert pred["interval_for_1pct"] == pytest.approx(2.5 * 20 * 560 * 2 / 0.01)

    path = CM.save_device_profile(prof, tmp_path / "p.json")
    assert CR.cost_cli("toy", 2, path, "damped_solve", probe_top_k=4, probe_batch=100, train_batch=50) == 0
    out = capsys.readouterr().out
    # toy has 8 matrices (3 + 5): 2.5 · 4 · 8 · 100/50 = 160 training steps per probe.
    assert "curvature probe" in out and "160 training steps per probe" in out
    assert CR.cost_cli("toy", 2, path, probe_batch=0) == 2
    no_probe = CM.save_device_profile(CM.build_device_profile(synthetic(), "test"), tmp_path / "q.json")
    assert CR.cost_cli("toy", 2, no_probe) == 0 and "no probe constant" in capsys.readouterr().out
