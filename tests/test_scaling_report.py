"""analysis.scaling_report: the tables, the batch extrapolation and the target statements, on
hand-made profile rows whose expected values follow from the numbers written here."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.dataset import METADATA_KEY, SCHEMA_VERSION
from analysis.scaling_report import build_scaling_report, extrapolate_to_batch, probe_overhead_table

STEP = 0.02  # training step seconds at every point


def _overhead_rows():
    # probe seconds = 0.1·B + 1 on the batch axis; the default point is B = 256.
    pts = [("default", 64, 256, 20), ("probe_batch", 64, 64, 20), ("probe_batch", 64, 128, 20), ("width", 32, 256, 20)]
    rows = []
    for varied, width, batch, k in pts:
        sec = 0.1 * batch + 1 if width == 64 else 10.0
        rows.append({"op": "probe_overhead", "phase": varied, "shape_m": width, "batch": batch, "k": k, "count": 13,
                     "seconds": sec, "step_seconds": STEP, "probe_to_step": sec / STEP, "interval": 100,
                     "overhead_at_interval": sec / (100 * STEP), "interval_for_5pct": sec / (0.05 * STEP),
                     "interval_for_1pct": sec / (0.01 * STEP), "hvp_seconds": 0.8 * sec, "grad_svd_seconds": 0.1 * sec,
                     "factors_seconds": 0.05 * sec, "eigh_seconds": 0.01 * sec})
    return rows


def test_batch_extrapolation_follows_the_measured_line():
    table = probe_overhead_table(pd.DataFrame(_overhead_rows()))
    ext = extrapolate_to_batch(table, 2048)
    assert ext["seconds"] == pytest.approx(0.1 * 2048 + 1)
    assert ext["interval_for_1pct"] == pytest.approx((0.1 * 2048 + 1) / (0.01 * STEP))
    assert ext["points"] == 3
    assert extrapolate_to_batch(table, 128) is None  # measured: nothing to extrapolate


def test_report_states_both_targets(tmp_path):
    rows = _overhead_rows() + [
        {"op": "spectral_step", "phase": d, "ranks": p, "seconds": s, "speedup_vs_redundant": 2.0 / s,
         "max_abs_diff_vs_redundant": 0.0, "max_abs_param": 0.1, "bytes": 0.0 if d == "redundant" or p == 1 else 1e6}
        for p, d, s in [(1, "redundant", 2.0), (1, "sharded", 2.0), (2, "redundant", 2.0), (2, "sharded", 1.1)]
    ]
    full = [{**r, "schema_version": SCHEMA_VERSION} for r in rows]
    table = pa.Table.from_pandas(pd.DataFrame(full), preserve_index=False).replace_schema_metadata({METADATA_KEY: str(SCHEMA_VERSION).encode()})
    path = tmp_path / "res" / "sweep" / "trials" / "job" / "profile.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    rep = build_scaling_report(tmp_path / "res", tmp_path / "out")
    assert "**1.82× (met)**" in rep.text  # 2.0 / 1.1
    # Rows without a probe mode were written before the modes existed: mode full, its 5 % target.
    assert "Mode **full**" in rep.text and "overhead **1330.00%** at interval 100 (target ≤ 5%: NOT met, 266.0× the target)" in rep.text  # 26.6 s / (100 · 0.02 s)
    assert "1 % at 1029000 steps" in rep.text  # (0.1·2048 + 1) / (0.01 · 0.02)
    assert (tmp_path / "out" / "scaling_report.md").is_file() and len(rep.plot_paths) == 2


def test_growth_exponents_recover_known_power_laws():
    from analysis.scaling_report import growth_exponents

    # time = 3 · B^1 · K^1.5 · w^0.5 at every point: each axis must give back its own exponent.
    def seconds(w, b, k):
        return 3.0 * b * k**1.5 * w**0.5

    pts = [("default", 64, 256, 20), ("probe_batch", 64, 64, 20), ("probe_batch", 64, 128, 20),
           ("top_k", 64, 256, 5), ("top_k", 64, 256, 10), ("width", 32, 256, 20)]
    table = pd.DataFrame([{"varied": v, "width": w, "probe_batch": b, "top_k": k, "seconds": seconds(w, b, k)}
                          for v, w, b, k in pts])
    got = growth_exponents(table).set_index("factor")
    assert got.loc["probe_batch", "exponent"] == pytest.approx(1.0)
    assert got.loc["top_k", "exponent"] == pytest.approx(1.5)
    assert got.loc["width", "exponent"] == pytest.approx(0.5)
    assert got.loc["probe_batch", "points"] == 3 and got.loc["width", "values"] == "32, 64"


def test_optimizer_step_summary_divides_by_adamw_and_muon():
    from analysis.scaling_report import optimizer_step_table, step_ratio_summary

    seconds = {"adamw": 0.01, "spectral_newton[solve]": 0.5, "muon": 2.0}
    rows = [{"op": "optimizer_step", "model": model, "label": label, "method": method, "matrices": 4,
             "seconds": scale * seconds[label], "ratio_to_baseline": seconds[label] / seconds["adamw"],
             "ratio_to_reference": seconds[label] / seconds["muon"]}
            for model, scale in (("resnet18", 1.0), ("gpt2-small", 3.0))
            for label, method in (("adamw", None), ("spectral_newton[solve]", "solve"), ("muon", "ns5"))]
    table = optimizer_step_table(pd.DataFrame(rows + [{"op": "kernel", "method": "gram", "seconds": 1.0}]))
    assert len(table) == 6 and list(table["optimizer"][:3]) == ["adamw", "spectral_newton[solve]", "muon"]
    summary = step_ratio_summary(table).set_index("optimizer")
    assert summary.loc["spectral_newton[solve]", "resnet18 / AdamW"] == pytest.approx(50.0)
    assert summary.loc["spectral_newton[solve]", "gpt2-small / Muon"] == pytest.approx(0.25)
    assert list(summary.index) == ["adamw", "spectral_newton[solve]", "muon"]
