"""analysis.lm_question: the α map beside the paper's LM runs, the optimizer comparison with
95 % intervals, the rule-based conclusions, and the Markdown/HTML report.

Synthetic per-trial Parquet with the writer's schema; every expected value follows from the
numbers written in this file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import write_table
from scipy import stats

from analysis.curvature import load_layer_fits
from analysis.dataset import load_table
from analysis.lm_question import (
    MFU_NOTE,
    alpha_by_depth,
    alpha_map,
    build_lm_question,
    format_mfu,
    optimizer_conclusions,
    optimizer_sweeps,
    optimizer_table,
)
from analysis.tables import format_number

LM = {"model": "hf:gpt2", "dataset": "builtin:text", "task": "lm", "metric_name": "perplexity",
      "metric_goal": "min", "num_parameters": 3_300_000, "world_size": 1}  # fmt: skip
#: α per layer type of the α-map sweep's one trial (two layers each: median = mean).
ALPHAS = {"attn_q": (1.40, 1.50), "attn_out": (1.90, 2.00), "mlp_up": (0.80, 0.90), "mlp_down": (2.00, 2.10)}
#: optimizer entry → {lr: (best validation perplexity per seed, test loss per seed)}
ENTRIES = {
    "adamw": {0.001: ([12.0, 12.2, 12.1], [2.50, 2.52, 2.51]), 0.003: ([13.0, 13.1, 13.2], [2.56, 2.57, 2.58])},
    "spectral_newton[fixed α=2]": {0.01: ([15.0, 15.5, 15.2], [2.70, 2.74, 2.72]),
                                   0.03: ([14.0, 14.1, 14.2], [2.64, 2.67, 2.65])},
    "spectral_newton[measured α]": {0.01: ([14.5, 14.4, 14.6], [2.70, 2.71, 2.72]),
                                    0.03: ([16.0, 16.0, 16.0], [2.80, 2.80, 2.80])},
}  # fmt: skip


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "lm"
    # The α-map sweep: one AdamW trial with layer fits.
    tdir = root / "amap" / "trials" / "adamw-0"
    write_table(tdir / "runs.parquet", [{**LM, "sweep_name": "amap", "trial_id": "adamw-0", "optimizer": "adamw",
                                    "optimizer_label": "adamw", "optimizer_entry": "adamw", "status": "completed",
                                    "seed_index": 0, "tuning_index": -1, "tuning_stage": 0, "tokens_seen": 400_000}])  # fmt: skip
    fits = [{"sweep_name": "amap", "trial_id": "adamw-0", "step": step, "layer": f"h.{i}.{t}", "layer_type": t,
             "depth": i, "alpha": a + (0.5 if step == 50 else 0.0), "gamma": 0.5, "s": a * 0.5, "pr_h": 3.0,
             "beta": 1.0, "phi": a - 1.0}
            for step in (50, 200) for t, pair in ALPHAS.items() for i, a in enumerate(pair)]  # fmt: skip
    write_table(tdir / "layer_fits.parquet", [{**f, "probe_mode": "full"} for f in fits])
    # A cheap-mode probe of the same model: no α, other Φ (never pooled with mode full).
    kdir = root / "amap" / "trials" / "adamw-1"
    write_table(kdir / "runs.parquet", [{**LM, "sweep_name": "amap", "trial_id": "adamw-1", "optimizer": "adamw",
                                    "optimizer_label": "adamw", "optimizer_entry": "adamw", "status": "completed",
                                    "seed_index": 1, "tuning_index": -1, "tuning_stage": 0, "tokens_seen": 400_000}])  # fmt: skip
    write_table(kdir / "layer_fits.parquet", [{**f, "trial_id": "adamw-1", "probe_mode": "kronecker", "alpha": None,
                                               "phi": 100.0} for f in fits])  # fmt: skip
    # The optimizer sweep.
    n = 0
    for entry, settings in ENTRIES.items():
        for tidx, (lr, (vals, tests)) in enumerate(settings.items()):
            for seed, (val, test) in enumerate(zip(vals, tests, strict=True)):
                n += 1
                tid = f"t{n}"
                opt = entry.split("[")[0]
                write_table(root / "opt" / "trials" / tid / "runs.parquet", [{
                    **LM, "sweep_name": "opt", "trial_id": tid, "optimizer": opt, "optimizer_entry": entry,
                    "optimizer_label": f"{entry}(lr={lr})", "optimizer_settings": json.dumps({"lr": lr}),
                    "tuning_index": tidx, "tuning_stage": 0, "search_space": json.dumps({"lr": {"values": list(settings)}}),
                    "seed_index": seed, "seed": seed, "status": "completed", "best_eval_metric": val,
                    "final_eval_metric": val, "test_loss": test, "test_metric": float(pd.Series([test]).map(
                        lambda x: 2.718281828459045 ** x).iloc[0]),
                    "tokens_seen": 400_000, "wall_time_s": 100.0, "median_tokens_per_s": 4000.0, "median_mfu": 0.1,
                }])  # fmt: skip
                write_table(root / "opt" / "trials" / tid / "steps.parquet", [
                    {"trial_id": tid, "step": s, "tokens_seen": s * 2048, "wall_time_s": s * 0.5,
                     "eval_loss": 3.0 - s / 100 * (1 if opt == "adamw" else 0.8), "eval_metric": val,
                     "step_time_s": 0.5, "optimizer_time_s": 0.1 if opt == "adamw" else 0.2}
                    for s in (50, 100, 150, 200)])  # fmt: skip
    return root


def test_alpha_map_compares_each_type_with_both_published_runs(results):
    runs = load_table(results, "runs")
    table = alpha_map(load_layer_fits(results), runs).set_index("layer_type")
    # The latest probe (step 200) only: step 50's α is 0.5 higher everywhere.
    assert table.loc["attn_q", "alpha_median"] == pytest.approx(1.45)
    assert table.loc["attn_q", "paper_table2"] == 1.43
    assert table.loc["attn_q", "verdict"] == "Table 2"
    assert table.loc["attn_out", "verdict"] == "neither"  # 1.95 vs 1.17; no other-run value
    assert table.loc["mlp_up", "verdict"] == "Table 2"  # 0.85 vs 0.84
    assert table.loc["mlp_down", "verdict"] == "other run (≈2)"  # 2.05 vs 1.15 / 2.0
    assert table.loc["mlp_down", "phi_median"] == pytest.approx(1.05)
    assert set(table["trained_with"]) == {"adamw"}
    assert set(table["probe_mode"]) == {"full"}  # the numbers' mode; the kronecker trial has no α
    depth = alpha_by_depth(load_layer_fits(results), runs).set_index("block")
    assert depth.loc[0, "attn_q"] == pytest.approx(1.40) and depth.loc[1, "mlp_down"] == pytest.approx(2.10)


def test_optimizer_table_picks_on_validation_and_reports_test_intervals(results):
    runs = load_table(results, "runs")
    steps = load_table(results, "steps")
    assert optimizer_sweeps(runs) == ["opt"]  # the one-entry α-map sweep is not a comparison
    table = optimizer_table(runs, steps).set_index("optimizer")
    assert list(table.index) == ["adamw", "spectral_newton[fixed α=2]", "spectral_newton[measured α]"]
    assert table.loc["spectral_newton[fixed α=2]", "best_setting"] == "spectral_newton[fixed α=2](lr=0.03)"
    assert table.loc["spectral_newton[measured α]", "best_setting"] == "spectral_newton[measured α](lr=0.01)"
    tests = [2.50, 2.52, 2.51]
    # The loss interval is a t-interval of log(loss) mapped back (a loss is > 0).
    logs = np.log(tests)
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / 3**0.5
    assert table.loc["adamw", "test_loss"] == pytest.approx(2.51)
    assert table.loc["adamw", "test_loss_high"] == pytest.approx(math.exp(logs.mean() + half))
    assert table.loc["adamw", "n_settings"] == 2
    assert table.loc["adamw", "optimizer_share"] == pytest.approx(0.2)
    assert table.loc["spectral_newton[fixed α=2]", "optimizer_share"] == pytest.approx(0.4)
    # Target: the median of the entries' final validation perplexity (12.1, 14.1, 14.5) = 14.1;
    # AdamW's seeds are below it from the first evaluation (step 50, 50 · 2048 tokens).
    assert table.loc["adamw", "target"] == pytest.approx(14.1)
    assert table.loc["adamw", "reached"] == "3/3"
    assert table.loc["adamw", "tokens_to_target"] == pytest.approx(50 * 2048)
    assert table.loc["spectral_newton[measured α]", "reached"] == "0/3"

    assert table.loc["adamw", "seed_loss"] == {0: 2.50, 1: 2.52, 2: 2.51}

    lines = optimizer_conclusions(table.reset_index())
    assert any("lowest mean test loss is adamw" in line for line in lines)
    # Paired by seed: SN fixed − AdamW = 0.14, 0.15, 0.14; measured − fixed = 0.06, 0.04, 0.07.
    # Two comparisons, Holm over both; the literal transcription of the paired t-test:
    d = np.array([2.64, 2.67, 2.65]) - np.array([2.50, 2.52, 2.51])
    p_sn = 2 * stats.t.sf(d.mean() / (d.std(ddof=1) / 3**0.5), 2)
    e = np.array([2.70, 2.71, 2.72]) - np.array([2.64, 2.67, 2.65])
    p_pol = 2 * stats.t.sf(e.mean() / (e.std(ddof=1) / 3**0.5), 2)
    holm_sn, holm_pol = (2 * p_sn, max(2 * p_sn, p_pol)) if p_sn < p_pol else (max(2 * p_pol, p_sn), 2 * p_pol)
    (vs_adamw,) = [line for line in lines if "vs AdamW" in line]
    assert "Spectral Newton is worse (paired over 3 seeds" in vs_adamw
    assert f"Holm p = {format_number(holm_sn)}" in vs_adamw
    (policies,) = [line for line in lines if line.startswith("Among the α policies")]
    assert "spectral_newton[measured α]: worse (paired over 3 seeds" in policies
    assert f"Holm p = {format_number(holm_pol)}" in policies


def test_a_difference_the_seeds_do_not_agree_on_is_not_called_one(results):
    runs = load_table(results, "runs")
    table = optimizer_table(runs, load_table(results, "steps"))
    sn = table["optimizer"] == "spectral_newton[measured α]"
    # The best SN variant now; per seed it is below AdamW twice and above it once.
    table.loc[sn, "test_loss"] = 2.505
    table.loc[sn, "seed_loss"] = [{0: 2.49, 1: 2.53, 2: 2.495}]
    lines = optimizer_conclusions(table)
    (vs_adamw,) = [line for line in lines if "vs AdamW" in line]
    assert "not distinguishable at this scale and number of seeds (paired over 3 seeds" in vs_adamw
    # A seed only one side completed is not paired; one shared seed allows no test.
    table.loc[sn, "seed_loss"] = [{0: 2.49, 5: 2.40}]
    (vs_adamw,) = [line for line in optimizer_conclusions(table) if "vs AdamW" in line]
    assert "no paired test possible (fewer than two shared seeds)" in vs_adamw


def test_report_files_are_written(results, tmp_path):
    report = build_lm_question(results, tmp_path / "out")
    md = report.markdown_path.read_text()
    assert "## α map" in md and "## Optimizer comparison" in md and "Measured on 20 language-model trials" in md
    assert "3.3M parameters" in md
    html = report.html_path.read_text()
    assert "<table>" in html and "<img" in html
    names = {p.name for p in report.plot_paths}
    assert "lm_alpha_map.png" in names
    assert any(n.startswith("lm_loss_vs_tokens__opt") for n in names)
    assert all(p.is_file() and p.stat().st_size > 0 for p in report.plot_paths)


def _figure_lines(monkeypatch) -> list[dict]:
    """Record, for every figure saved, its optimizer lines (entry tag, colour) and legend texts."""
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    from analysis.plots import ENTRY_GID

    seen: list[dict] = []
    original = Figure.savefig

    def record(fig, path, *args, **kwargs):
        lines = [(a.get_gid()[len(ENTRY_GID):], to_hex(a.get_color())) for ax in fig.axes
                 for a in ax.get_children() if isinstance(a.get_gid(), str) and a.get_gid().startswith(ENTRY_GID)]
        legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        seen.append({"path": Path(path).name, "lines": lines, "legend": legends})
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return seen


def test_one_colour_per_entry_in_every_figure_and_no_doubled_labels(results, tmp_path, monkeypatch):
    from analysis import build_report

    seen = _figure_lines(monkeypatch)
    out = tmp_path / "out"
    report = build_report(results, out)
    build_lm_question(results, out)
    colours: dict[str, set[str]] = {}
    for fig in seen:
        for entry, colour in fig["lines"]:
            colours.setdefault(entry, set()).add(colour)
    drawn_in = {e for fig in seen for e, _ in fig["lines"]}
    assert drawn_in == set(ENTRIES)  # every entry appears, in loss curves, profiles, α map, LM curves
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({c.pop() for c in colours.values()}) == len(ENTRIES)  # and no two entries share one
    assert report.colors == {e: report.colors[e] for e in sorted(ENTRIES)}
    figures_with_entries = [f["path"] for f in seen if f["lines"]]
    assert any(p.startswith("performance_profile") for p in figures_with_entries)
    assert any(p.startswith("lm_loss") for p in figures_with_entries) and "lm_alpha_map.png" in figures_with_entries
    for fig in seen:
        for text in fig["legend"]:
            label = re.sub(r" \((n=\d+|score [\d.]+)\)$", "", text)
            assert not re.fullmatch(r"(.+) \(\1\)", label) and not re.fullmatch(r"(.+): \1.*", label), text


def test_an_mfu_above_one_is_a_measurement_error_not_a_result(results, tmp_path):
    path = next((results / "opt" / "trials").glob("*/runs.parquet"))
    rows = pd.read_parquet(path).to_dict("records")
    entry = rows[0]["optimizer_entry"]
    for p in (results / "opt" / "trials").glob("*/runs.parquet"):
        frame = pd.read_parquet(p)
        if frame.loc[0, "optimizer_entry"] == entry:
            write_table(p, frame.assign(median_mfu=1.236).drop(columns=["schema_version"]))
    md = build_lm_question(results, tmp_path / "out").markdown_path.read_text()
    assert "invalid (1.24 > 1)" in md and MFU_NOTE in md
    assert "1.236" not in md
    assert format_mfu(0.468) == "0.468" and format_mfu(float("nan")) == "—"


def test_task_and_direction_come_from_the_runs_columns(results):
    """No name parsing: an LM whose model is called "custom:net" is still an LM, a
    classification sweep of a model called "hf:gpt2" is not, and Spectral Newton entries are
    found by their registry name, whatever their label."""
    runs = load_table(results, "runs")
    runs.loc[runs["sweep_name"] == "opt", "model"] = "custom:net"
    clf = runs[runs["sweep_name"] == "opt"].assign(sweep_name="clf", task="classification",
                                                    trial_path=lambda f: "clf/" + f["trial_path"])
    runs = pd.concat([runs, clf], ignore_index=True)
    assert optimizer_sweeps(runs) == ["opt"]
    relabelled = runs.assign(optimizer_entry=runs["optimizer_entry"].str.replace("spectral_newton", "SN"))
    relabelled["optimizer_label"] = relabelled["optimizer_label"].str.replace("spectral_newton", "SN")
    table = optimizer_table(relabelled, load_table(results, "steps"))
    assert set(table["registry"]) == {"adamw", "spectral_newton"}
    lines = optimizer_conclusions(table)
    assert any(line.startswith("Best Spectral Newton variant (SN[") and "vs AdamW" in line for line in lines)
