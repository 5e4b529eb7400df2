"""analysis.cost_model / comm_cost / step_cost / cost_report on synthetic profile tables with known
constants, priced with the optimizer's own sharding plan (launchers.cost)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from analysis import comm_cost as CC
from analysis import cost_model as CM
from analysis import cost_report as CR
from analysis.step_cost import predict_step_cost
from launchers.cost import owner_sharding_plan, planner

A_TRUE, B_TRUE = 2.5e-11, 4e-4  # 40 GFLOP/s, 0.4 ms per call
BIG, SMALL = 1e9, 1e6  # catalogue FLOPs of the toy model's two shapes


def synthetic(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Kernel rows t = a·flops + b (± multiplicative noise) for two routes, plus a catalogue."""
    rng = np.random.default_rng(seed)
    rows = []
    sizes = [(64, 32), (128, 64), (256, 128), (384, 128), (512, 256), (768, 256), (1024, 512), (2048, 512),
             (3072, 768)]
    for method, scale in (("gram", 1.0), ("solve", 0.5)):
        for M, k in sizes:
            flops = 2 * M * k**2 + 14 / 3 * k**3
            t = (scale * A_TRUE * flops + B_TRUE) * (1 + noise * rng.standard_normal())
            rows.append({"op": "kernel", "status": "ok", "method": method, "methods_version": 2, "dtype": "fp32",
                         "device": "cpu", "device_name": "TestCPU", "threads": 2, "shape": f"{M}x{k}",
                         "shape_m": M, "shape_n": k, "flops": flops, "seconds": t, "labels": f"toy/{M}x{k}"})
    for method in ("gram", "solve"):
        for name, m, n, count in (("big", 1000, 500, 3), ("small", 100, 50, 5)):
            rows.append({"op": "shape", "status": "catalog", "model": "toy", "shape_name": name, "methods_version": 2,
                         "layer_type": "linear", "shape_m": m, "shape_n": n, "count": count, "method": method,
                         "flops": BIG if name == "big" else SMALL, "device": "cpu", "device_name": "TestCPU"})
    return pd.DataFrame(rows)


def test_fit_recovers_known_constants_within_one_percent():
    fits = CM.fit_kernels(synthetic(noise=0.002))
    g = fits[("TestCPU", "gram", "fp32")]
    assert g.a == pytest.approx(A_TRUE, rel=0.01) and g.b == pytest.approx(B_TRUE, rel=0.01)
    d = fits[("TestCPU", "solve", "fp32")]
    assert d.a == pytest.approx(0.5 * A_TRUE, rel=0.01) and d.b == pytest.approx(B_TRUE, rel=0.01)
    assert g.n == 9 and g.median_rel_err < 0.01


def test_nnls_clamps_a_negative_intercept():
    x = np.array([1e6, 1e7, 1e8, 1e9])
    a, b = CM.fit_relative_nnls(x, 1e-9 * x - 1e-4 * (x < 5e6) + 1e-12)  # would want b < 0
    assert b == 0.0 and a > 0
    a, b = CM.fit_relative_nnls([5.0], [2.0])  # one point: a line through it, not an error
    assert a * 5 + b == pytest.approx(2.0)


def test_held_out_accuracy_on_exact_data_is_exact():
    acc = CM.held_out_accuracy(synthetic())
    assert set(acc["method"]) == {"gram", "solve"}
    assert (acc["n_held_out"] == 3).all() and (acc["median_rel_err"] < 1e-9).all()
    assert CM.overall_held_out_error(acc) < 1e-9


def test_old_method_names_are_upgraded_once():
    old = pd.DataFrame([
        {"op": "kernel", "method": m, "seconds": 1.0} for m in
        ("transform:gram", "transform:solve", "transform:polar", "transform:svd", "svd", "gram_eigh", "damped_solve",
         "ns5", "matmul", "svd_lowrank", "svd:gesvdj")
    ] + [{"op": "collective", "method": "broadcast", "seconds": 1.0}])
    up = CM.upgrade_method_names(old)
    kernels = up[up["op"] == "kernel"]
    # The routes keep their rows under the optimizer's names; the bare SVD (not the svd route)
    # and every other bare kernel are gone; other ops are untouched.
    assert sorted(kernels["method"]) == ["gram", "ns5", "polar", "solve", "svd"]
    assert (kernels["methods_version"] == 2).all()
    assert list(up[up["op"] == "collective"]["method"]) == ["broadcast"]
    again = CM.upgrade_method_names(up)
    pd.testing.assert_frame_equal(again, up)  # rows already upgraded are left alone


# ------------------------------------------------------------------------------- communication
def _broadcast_rows(latency: float, beta: float, algorithm: str, backend: str) -> pd.DataFrame:
    rows = []
    for p in (2, 4, 8):
        r, s = CC.terms(algorithm, p)
        for b in np.geomspace(6.5e4, 6.7e7, 6):
            rows.append({"op": "collective", "method": "broadcast", "status": "ok", "ranks": p, "bytes": b,
                         "backend": backend, "seconds": r * latency + s * beta * b})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("backend", "algorithm"), [("gloo", "binomial_tree"), ("nccl", "ring")])
def test_broadcast_fit_recovers_the_constants_and_the_p_law(backend, algorithm):
    latency, beta = 300e-6, 1 / 1.2e9
    fit = CC.fit_broadcast(_broadcast_rows(latency, beta, algorithm, backend))
    assert fit["algorithm"] == algorithm and fit["ranks"] == [2, 4, 8]
    assert fit["latency_s"] == pytest.approx(latency, rel=1e-6) and fit["seconds_per_byte"] == pytest.approx(beta)
    assert all(e < 1e-6 for e in fit["heldout_by_ranks"].values()) and set(fit["heldout_by_ranks"]) == {"2", "4", "8"}


def test_terms_of_the_two_algorithms():
    assert CC.terms("binomial_tree", 2) == (1, 1) and CC.terms("binomial_tree", 5) == (3, 3)
    assert CC.terms("ring", 5) == (4, 1) and CC.terms("ring", 1) == (0, 0)


def test_sync_is_the_sum_over_buckets_and_checks_use_the_recorded_plans():
    fit = {"algorithm": "binomial_tree", "latency_s": 1e-3, "seconds_per_byte": 1e-9}
    plan = [10_000_000, 2_000_000, 500]
    expected = sum(2 * (1e-3 + 1e-9 * b) for b in plan)  # P = 4: two rounds per bucket
    assert CC.sync_seconds(fit, 4, plan) == pytest.approx(expected)
    df = pd.DataFrame([
        {"op": "collective", "method": "owner_sync", "ranks": 4, "seconds": expected * 1.1,
         "bucket_bytes": json.dumps(plan)},
        {"op": "spectral_step", "phase": "sharded", "ranks": 4, "comm_seconds_min": expected / 2,
         "comm_seconds": expected * 2, "bucket_bytes": json.dumps(plan)},
        {"op": "spectral_step", "phase": "sharded", "ranks": 2, "comm_seconds_min": expected * 0.6,
         "comm_seconds": expected * 2, "bucket_bytes": json.dumps(plan)},  # P = 2: one round, expected/2: below
        {"op": "spectral_step", "phase": "redundant", "ranks": 4, "comm_seconds_min": 0.0, "comm_seconds": 0.0,
         "bucket_bytes": "[]"},
    ])
    checks = CC.comm_checks(df, fit)
    assert list(checks["kind"]) == ["owner_sync", "spectral_step", "spectral_step"]
    assert checks["rel_err"].iloc[0] == pytest.approx(0.1 / 1.1) and checks["buckets"].iloc[0] == 3
    assert list(checks["in_bracket"].iloc[1:]) == [True, False]


# ---------------------------------------------------------------------------------- prediction
def _t(f: float, scale: float = 1.0) -> float:
    return scale * A_TRUE * f + B_TRUE


def test_prediction_prices_the_optimizers_assignment_and_buckets():
    costs = CM.fit_device_costs(synthetic(), "test")
    plan = planner()
    one = predict_step_cost("toy", 1, costs, "gram", plan)
    # One rank: Spectral Newton stacks equal shapes, one call per shape.
    assert one["matrices"] == 8 and one["elements"] == 3 * 1000 * 500 + 5 * 100 * 50
    assert one["serial_compute_s"] == pytest.approx(_t(3 * BIG) + _t(5 * SMALL))
    assert one["total_s"] == one["compute_s"] == one["serial_compute_s"] and one["sync_s"] == 0
    four = predict_step_cost("toy", 4, costs, "gram", plan)
    # The optimizer's LPT on m·n·min(m, n): the 3 big matrices on ranks 0–2, the 5 small on rank 3.
    owners = owner_sharding_plan([(1000, 500), (100, 50)] * 3 + [(100, 50)] * 2, 4).owners
    assert sorted(owners[i] for i in (0, 2, 4)) == [0, 1, 2] and {owners[i] for i in (1, 3, 5, 6, 7)} == {3}
    assert four["compute_s"] == pytest.approx(_t(BIG))
    assert four["mean_rank_compute_s"] == pytest.approx((3 * _t(BIG) + _t(5 * SMALL)) / 4)
    # fp32 values, each big matrix (2 MB) a bucket of its own per owner, the small ones one bucket.
    assert four["buckets"] == 4 and four["sync_bytes"] == 4 * four["elements"]
    assumed = CC.assumed_fit(4)
    assert four["sync_s"] == pytest.approx(3 * CC.bucket_seconds(assumed, 4, 2e6) + CC.bucket_seconds(assumed, 4, 1e5))
    assert "assumed NCCL" in four["comm_source"] and four["total_s"] == pytest.approx(four["compute_s"] + four["sync_s"])
    # Muon loops over its matrices: one fixed cost b per matrix, not per shape.
    with_ns5 = {**costs, "kernels": {**costs["kernels"], "ns5|fp32": costs["kernels"]["solve|fp32"]}}
    shapes = [{**s, "flops": {"ns5": s["flops"]["solve"]}} for s in costs["models"]["toy"]]
    muon = predict_step_cost("toy", 1, with_ns5, "ns5", plan, shapes=shapes)
    assert muon["serial_compute_s"] == pytest.approx(3 * _t(BIG, 0.5) + 5 * _t(SMALL, 0.5))
    rep = predict_step_cost("toy", 4, costs, "gram", sharded=False)
    assert rep["compute_s"] == pytest.approx(one["serial_compute_s"]) and rep["sync_s"] == 0


def test_measured_broadcast_constants_price_the_sync():
    costs = CM.fit_device_costs(pd.concat([synthetic(), _broadcast_rows(300e-6, 1 / 1.2e9, "binomial_tree", "gloo")]),
                                "test")
    assert costs["broadcast"]["source"] == "measured"
    pred = predict_step_cost("toy", 16, costs, "gram", planner())
    plan = owner_sharding_plan([(1000, 500), (100, 50)] * 3 + [(100, 50)] * 2, 8)  # 8 matrices < 16 ranks
    assert pred["assignment_ranks"] == 8
    assert pred["sync_s"] == pytest.approx(sum(4 * (300e-6 + b / 1.2e9) for b in plan.bucket_bytes))
    assert "measured gloo binomial tree" in pred["comm_source"]


def test_far_more_ranks_than_matrices_schedule_over_the_matrices():
    costs = CM.fit_device_costs(synthetic(), "test")
    t0 = time.perf_counter()
    huge = predict_step_cost("toy", 10**8, costs, "gram", planner())
    assert time.perf_counter() - t0 < 5
    exact = predict_step_cost("toy", 8, costs, "gram", planner())
    assert huge["assignment_ranks"] == 8 and huge["compute_s"] == exact["compute_s"] == pytest.approx(_t(BIG))
    assert huge["buckets"] == exact["buckets"] == 8  # every matrix its own owner and bucket
    assert huge["sync_s"] > exact["sync_s"]  # the broadcasts still reach every rank
    # LPT on more ranks than items gives every item its own rank: the owners do not depend on P ≥ N.
    shapes = [(1000, 500), (100, 50)] * 3 + [(100, 50)] * 2
    assert owner_sharding_plan(shapes, 8).owners == owner_sharding_plan(shapes, 50).owners


def test_device_costs_roundtrip_and_cost_cli(tmp_path, capsys):
    costs = CM.fit_device_costs(synthetic(), "test")
    path = CM.save_device_costs(costs, tmp_path / "test.json")
    doc = json.loads(path.read_text())  # valid JSON: NaN became null
    assert doc["models"]["toy"][0]["count"] in (3, 5) and doc["format"] == CM.COSTS_FORMAT
    assert CM.load_device_costs(path)["kernels"].keys() == costs["kernels"].keys()
    assert CR.cost_cli("toy", 4, path, planner(), "solve") == 0
    out = capsys.readouterr().out
    assert "per-rank compute" in out and "bucketed broadcasts" in out and "toy on 4" in out
    assert CR.cost_cli("nope", 4, path, planner()) == 2
    assert "not in the catalogue" in capsys.readouterr().err
    assert CR.cost_cli("toy", 4, path, planner(), "gram_eigh") == 2
    assert "no fit for gram_eigh|fp32" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    ("not json at all", "is not a device-cost JSON file"),
    ("[1, 2]", "is not a device-cost document"),
    ('{"format": 1, "kernels": {}}', "has format 1"),
])
def test_cost_command_refuses_bad_device_files_with_exit_2(tmp_path, capsys, content, message):
    from launchers.cli import main

    bad = tmp_path / "mine.json"
    bad.write_text(content)
    assert main(["cost", "--model", "gpt2-small", "--ranks", "8", "--device", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_shipped_device_costs_price_the_catalogue_models(capsys):
    from launchers.cli import main

    for model in ("gpt2-small", "llama-7b", "llama-70b", "llama-405b"):
        assert main(["cost", "--model", model, "--ranks", "64", "--device", "h200"]) == 0
    out = capsys.readouterr().out
    assert out.count("bucketed broadcasts") == 4 and "llama-405b on 64" in out


def test_cost_report_writes_plot_table_and_costs(tmp_path):
    df = synthetic(noise=0.01)
    f = tmp_path / "profile.parquet"
    df.to_parquet(f)
    rep = CR.build_cost_report(f, "test", planner(), out_dir=tmp_path / "rep")
    assert rep.costs_path.is_file() and rep.report_path.is_file()
    assert rep.plot_paths and all(p.stat().st_size > 1000 for p in rep.plot_paths)
    table = CR.cost_table(rep.costs, planner(), models=["toy"], ranks=[1, 4], methods=["gram"])
    assert list(table["ranks"]) == [1, 4]
    assert "Held-out" in rep.text and "toy" not in CR.format_cost_table(pd.DataFrame())


def test_method_ratios_weight_by_counts():
    ratios = CR.method_ratios(synthetic(), "toy", [("gram", "solve")])
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

    costs = CM.fit_device_costs(synthetic(), "test", probe=_probe_rows(2.5))
    pred = CM.predict_probe_cost(costs, layers=560, top_k=20, probe_batch=2048, train_batch=1024, interval=100)
    assert pred["probe_in_steps"] == pytest.approx(2.5 * 20 * 560 * 2)  # 56,000 training steps
    assert pred["overhead_at_interval"] == pytest.approx(560.0)
    assert pred["interval_for_1pct"] == pytest.approx(2.5 * 20 * 560 * 2 / 0.01)

    path = CM.save_device_costs(costs, tmp_path / "p.json")
    assert CR.cost_cli("toy", 2, path, planner(), "solve", probe_top_k=4, probe_batch=100, train_batch=50) == 0
    out = capsys.readouterr().out
    # toy has 8 matrices (3 + 5): 2.5 · 4 · 8 · 100/50 = 160 training steps per probe.
    assert "curvature probe" in out and "160 training steps per probe" in out
    assert CR.cost_cli("toy", 2, path, planner(), probe_batch=0) == 2
    no_probe = CM.save_device_costs(CM.fit_device_costs(synthetic(), "test"), tmp_path / "q.json")
    assert CR.cost_cli("toy", 2, no_probe, planner()) == 0 and "no constant for probe mode full" in capsys.readouterr().out


def test_each_probe_mode_has_its_own_constant_with_leave_one_out_error(tmp_path, capsys):
    """kronecker: probe/step = κ·B_probe/B_train; online: probe/step = κ (one step's own rows)."""
    full = _probe_rows(2.5)  # no probe_mode column: rows from before the modes, i.e. mode full
    kron = [{"op": "probe_overhead", "status": "ok", "probe_mode": "kronecker", "k": 20, "count": 13, "batch": b,
             "train_batch": 32, "step_seconds": 0.04, "seconds": 3.0 * b / 32 * 0.04} for b in (32, 128, 256)]
    noisy = [1.0, 1.5, 2.0]  # κ_i of three online points: the median predicts each with a known error
    online = [{"op": "probe_overhead", "status": "ok", "probe_mode": "online", "k": 20, "count": 13, "batch": 2048,
               "probe_batch": 32, "train_batch": 32, "step_seconds": 0.05, "seconds": k * 0.05} for k in noisy]
    rows = pd.concat([full, pd.DataFrame(kron), pd.DataFrame(online)], ignore_index=True)
    fits = CM.fit_probe_constants(rows)
    assert set(fits) == {"full", "kronecker", "online"}
    assert fits["full"]["kappa"] == pytest.approx(2.5) and fits["kronecker"]["kappa"] == pytest.approx(3.0)
    assert fits["online"]["kappa"] == pytest.approx(1.5) and fits["online"]["points"] == 3
    # Leave one out: 1.0 from median(1.5, 2) = 1.75 (75 %), 1.5 from 1.5 (0 %), 2.0 from 1.25 (37.5 %).
    assert fits["online"]["loo_median_rel_err"] == pytest.approx(0.375)
    costs = CM.fit_device_costs(synthetic(), "test", probe=rows)
    kron_pred = CM.predict_probe_cost(costs, 560, probe_batch=2048, train_batch=1024, mode="kronecker")
    assert kron_pred["probe_in_steps"] == pytest.approx(6.0)  # independent of K and L
    assert CM.predict_probe_cost(costs, 560, mode="online")["probe_in_steps"] == pytest.approx(1.5)
    path = CM.save_device_costs(costs, tmp_path / "m.json")
    assert CR.cost_cli("toy", 2, path, planner(), probe_mode="online") == 0
    assert "curvature probe (online)" in capsys.readouterr().out
    assert "| online |" in CR.format_probe_table(CM.load_device_costs(path), models=["toy"])
