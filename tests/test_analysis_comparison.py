"""analysis.comparison: best setting per optimizer (validation → test), time to target,
performance profiles, the report's "Comparisons" section.

Synthetic per-trial Parquet files with the writer's real schema (``bench.results.schema``) and
hand-computable trajectories: every expected number below follows from the tables in this file.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import build_report, load_table
from analysis.comparison import (
    best_settings,
    default_targets,
    performance_profile,
    performance_profile_scores,
    performance_ratios,
    setting_table,
    summarize_time_to_target,
    time_to_target,
)
from analysis.dataset import METADATA_KEY, SCHEMA_VERSION
from analysis.summary import t_interval
from bench.results import schema as writer_schema

EVAL_STEPS = [5, 10, 15, 20]
CNN = {"model": "builtin:cnn", "dataset": "sklearn:digits", "task": "classification",
       "metric_name": "accuracy", "metric_goal": "max"}  # fmt: skip
LM = {"model": "builtin:transformer", "dataset": "builtin:text", "task": "lm",
      "metric_name": "perplexity", "metric_goal": "min"}  # fmt: skip
ADAMW_SPACE = json.dumps({"lr": {"high": 0.1, "log": True, "low": 0.001}}, sort_keys=True)
SN_SPACE = json.dumps({"lr": {"high": 0.1, "log": True, "low": 0.01}}, sort_keys=True)
#: Wall-clock seconds per step: adamw is twice as fast per step as spectral_newton here.
SECONDS_PER_STEP = {"adamw": 0.5, "spectral_newton": 1.0}

# (workload, optimizer, label, tuning_index, search space, test metric per seed,
#  eval trajectory per seed at EVAL_STEPS, or a status string for a seed that did not complete)
TRIALS = [
    # adamw on digits: three settings. lr=0.1 has the best validation seed but lost the other
    # seed (diverged), so it must rank last; lr=0.01 is the pick.
    (CNN, "adamw", "adamw(lr=0.001)", 0, ADAMW_SPACE, [0.79, 0.81],
     [[0.3, 0.5, 0.7, 0.80], [0.3, 0.5, 0.7, 0.82]]),
    (CNN, "adamw", "adamw(lr=0.01)", 1, ADAMW_SPACE, [0.85, 0.87],
     [[0.5, 0.7, 0.85, 0.90], [0.6, 0.8, 0.9, 0.92]]),
    (CNN, "adamw", "adamw(lr=0.1)", 2, ADAMW_SPACE, [0.98, None],
     [[0.9, 0.95, 0.99, 0.99], "diverged"]),
    # spectral_newton on digits: lr=0.05 has the better *test* metric but the worse validation
    # metric; selection must ignore the test split and pick lr=0.02.
    (CNN, "spectral_newton", "spectral_newton(lr=0.02)", 0, SN_SPACE, [0.80, 0.82],
     [[0.7, 0.88, 0.93, 0.93], [0.75, 0.9, 0.95, 0.95]]),
    (CNN, "spectral_newton", "spectral_newton(lr=0.05)", 1, SN_SPACE, [0.95, 0.97],
     [[0.7, 0.85, 0.91, 0.91], [0.7, 0.85, 0.93, 0.93]]),
    # The LM workload (perplexity, lower is better): one setting each, no tuning.
    (LM, "adamw", "adamw", -1, "{}", [15.2, 16.1], [[50, 30, 20, 15], [48, 29, 21, 16]]),
    (LM, "spectral_newton", "spectral_newton", -1, "{}", [17.0, 16.2], [[40, 25, 18, 17], [42, 24, 17, 16]]),
]  # fmt: skip


def _write(path, rows, schema):
    full = [{**{n: None for n in schema.names}, **row, "schema_version": SCHEMA_VERSION} for row in rows]
    schema = schema.with_metadata({METADATA_KEY: str(SCHEMA_VERSION).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path)


def write_sweep(root, trials=TRIALS, sweep: str = "cmp"):
    """Write every trial of ``trials`` under ``root/<sweep>/trials/<id>/``."""
    n = 0
    for workload, opt, label, tidx, space, tests, trajectories in trials:
        for seed, (test, traj) in enumerate(zip(tests, trajectories, strict=True)):
            n += 1
            tid = f"{opt}-{n:08x}"
            tdir = root / sweep / "trials" / tid
            done = not isinstance(traj, str)
            values = traj if done else [0.9]  # a diverged seed logged one evaluation
            steps = EVAL_STEPS[: len(values)]
            sec = SECONDS_PER_STEP[opt]
            better = max if workload["metric_goal"] == "max" else min
            run = {
                "sweep_name": sweep, "trial_id": tid, "optimizer": opt, "optimizer_label": label,
                "optimizer_entry": opt, "tuning_index": tidx, "tuning_stage": 0, "search_space": space,
                "optimizer_settings": json.dumps({"lr": float(label.split("=")[1][:-1]) if "=" in label else 0.01,
                                                  "weight_decay": 0.0}),
                "seed_index": seed, "seed": 100 + seed, "status": "completed" if done else traj,
                "error": None if done else "loss is nan", "world_size": 2,
                "final_eval_metric": float(values[-1]) if done else None,
                "best_eval_metric": float(better(values)) if done else None,
                "test_metric": test, "wall_time_s": steps[-1] * sec, **workload,
            }  # fmt: skip
            _write(tdir / "runs.parquet", [run], writer_schema.RUNS)
            _write(
                tdir / "steps.parquet",
                [
                    {"trial_id": tid, "step": s, "wall_time_s": s * sec, "samples_seen": s * 64,
                     "tokens_seen": s * 64 * 128 if workload["task"] == "lm" else 0,
                     "train_loss": 1.0 / s, "eval_metric": float(v)}
                    for s, v in zip(steps, values, strict=True)
                ],
                writer_schema.STEPS,
            )  # fmt: skip
    return root / sweep


@pytest.fixture
def sweep_dir(tmp_path):
    return write_sweep(tmp_path)


@pytest.fixture
def tables(sweep_dir):
    return load_table(sweep_dir, "runs"), load_table(sweep_dir, "steps")


def _row(frame, **keys):
    mask = np.ones(len(frame), dtype=bool)
    for k, v in keys.items():
        mask &= (frame[k] == v).to_numpy()
    assert mask.sum() == 1, f"expected one row for {keys}, got {mask.sum()}"
    return frame[mask].iloc[0]


# ----------------------------------------------------------------------------- best settings
def test_best_setting_is_chosen_on_validation_and_reported_on_test(tables):
    runs, _ = tables
    best = best_settings(runs)
    assert len(best) == 4  # 2 workloads × 2 optimizers

    adamw = _row(best, model="builtin:cnn", optimizer="adamw")
    assert adamw["best_setting"] == "adamw(lr=0.01)" and adamw["tuning_index"] == 1
    assert adamw["n_settings"] == 3 and adamw["n_settings_lost"] == 1
    assert adamw["val_metric_mean"] == pytest.approx(0.91)
    # The interval is computed on the logit scale (accuracy lives in [0, 1]) and mapped back.
    ci = t_interval([math.log(v / (1 - v)) for v in (0.85, 0.87)])
    assert adamw["test_metric_mean"] == pytest.approx(0.86)
    expected = (1 / (1 + math.exp(-ci.low)), 1 / (1 + math.exp(-ci.high)))
    assert (adamw["test_metric_low"], adamw["test_metric_high"]) == pytest.approx(expected)
    assert adamw["n_seeds"] == 2 and adamw["n_completed"] == 2
    assert json.loads(adamw["search_space"]) == json.loads(ADAMW_SPACE)
    assert json.loads(adamw["settings_varied"]) == {"lr": [0.001, 0.01, 0.1]}

    # Higher test metric at lr=0.05 must not leak into the choice.
    sn = _row(best, model="builtin:cnn", optimizer="spectral_newton")
    assert sn["best_setting"] == "spectral_newton(lr=0.02)"
    assert sn["test_metric_mean"] == pytest.approx(0.81)
    # Ranked by the chosen setting's test metric: adamw 0.86 beats spectral_newton 0.81.
    assert (adamw["rank"], sn["rank"]) == (1, 2)


def test_a_lost_seed_is_worst_possible(tables):
    runs, _ = tables
    settings = setting_table(runs)
    cnn_adamw = settings[(settings["model"] == "builtin:cnn") & (settings["optimizer"] == "adamw")]
    order = list(cnn_adamw.sort_values("selection_rank")["optimizer_label"])
    # lr=0.1 has the best completed validation seed (0.99) but one diverged seed: last.
    assert order == ["adamw(lr=0.01)", "adamw(lr=0.001)", "adamw(lr=0.1)"]
    lost = _row(cnn_adamw, optimizer_label="adamw(lr=0.1)")
    assert (
        lost["frac_lost"] == 0.5
        and lost["n_diverged"] == 1
        and lost["val_metric_mean"] == pytest.approx(0.99)
    )


def test_min_goal_workload(tables):
    runs, _ = tables
    best = best_settings(runs)
    lm_adamw = _row(best, model="builtin:transformer", optimizer="adamw")
    lm_sn = _row(best, model="builtin:transformer", optimizer="spectral_newton")
    assert lm_adamw["val_metric_mean"] == pytest.approx(15.5)  # best = min of the trajectory
    assert lm_adamw["n_settings"] == 1 and lm_adamw["search_space"] == "{}"
    # Lower test perplexity ranks first: adamw 15.65 < spectral_newton 16.6.
    assert (lm_adamw["rank"], lm_sn["rank"]) == (1, 2)


def test_empty_runs():
    assert best_settings(pd.DataFrame()).empty
    ttt = time_to_target(pd.DataFrame(), pd.DataFrame())
    assert ttt.empty and ttt.attrs["targets"] == {}
    assert performance_profile(ttt).empty


# ---------------------------------------------------------------------------- time to target
def test_default_target_is_median_of_best_setting_final_metrics(tables):
    runs, _ = tables
    targets = default_targets(best_settings(runs))
    # digits: adamw(lr=0.01) final mean 0.91, spectral_newton(lr=0.02) 0.94 → 0.925.
    assert targets[("cmp", "builtin:cnn", "sklearn:digits")] == pytest.approx(0.925)
    # LM: adamw final mean 15.5, spectral_newton 16.5 → 16.0.
    assert targets[("cmp", "builtin:transformer", "builtin:text")] == pytest.approx(16.0)


def test_time_to_target_per_trial_default_targets(tables):
    runs, steps = tables
    ttt = time_to_target(steps, runs)
    assert len(ttt) == len(runs)
    best = ttt[ttt["best_setting"]]
    assert len(best) == 8  # 4 (workload, optimizer) pairs × 2 seeds
    cnn = best[best["model"] == "builtin:cnn"]
    # adamw's best setting peaks at 0.90 / 0.92 < 0.925: never reached.
    adamw = cnn[cnn["optimizer"] == "adamw"]
    assert not adamw["reached"].any() and adamw["step"].isna().all() and adamw["train_wall_time_s"].isna().all()
    sn = cnn[cnn["optimizer"] == "spectral_newton"]
    assert sn["reached"].all() and sn["step"].tolist() == [15, 15]
    assert sn["train_wall_time_s"].tolist() == [15.0, 15.0] and sn["samples_seen"].tolist() == [960, 960]
    assert set(ttt["target_source"]) == {"default"}

    # Perplexity: reached when ≤ the target (16.0); 16 itself counts.
    lm = best[best["model"] == "builtin:transformer"].set_index(["optimizer", "seed"])
    assert lm.loc[("adamw", 0), "step"] == 20 and lm.loc[("adamw", 1), "step"] == 20
    assert (
        lm.loc[("spectral_newton", 1), "step"] == 20
        and lm.loc[("spectral_newton", 1), "tokens_seen"] == 20 * 64 * 128
    )
    assert not lm.loc[("spectral_newton", 0), "reached"]


def test_explicit_targets_and_the_boundary(tables):
    runs, steps = tables
    ttt = time_to_target(steps, runs, targets={("builtin:cnn", "sklearn:digits"): 0.8})
    assert ttt.attrs["targets"][("cmp", "builtin:cnn", "sklearn:digits")] == 0.8
    assert ttt.attrs["targets"][("cmp", "builtin:transformer", "builtin:text")] == pytest.approx(16.0)  # default
    cnn = ttt[(ttt["model"] == "builtin:cnn") & ttt["best_setting"]].set_index(["optimizer", "seed"])
    assert set(cnn["target_source"]) == {"explicit"}
    assert cnn.loc[("adamw", 0), "step"] == 15  # 0.85 at step 15
    assert cnn.loc[("adamw", 1), "step"] == 10  # exactly 0.8 at step 10: ≥ reaches
    assert cnn.loc[("adamw", 1), "train_wall_time_s"] == 5.0
    assert cnn.loc[("spectral_newton", 0), "step"] == 10

    summary = summarize_time_to_target(ttt).set_index(["model", "optimizer"])
    row = summary.loc[("builtin:cnn", "adamw")]
    assert row["n_reached"] == 2 and row["frac_reached"] == 1.0
    assert row["steps_mean"] == 12.5 and row["seconds_mean"] == pytest.approx(6.25)
    ci = t_interval([7.5, 5.0])
    # A time is ≥ 0: the two-seed interval's lower end (−9.6 s) is clipped, and says so.
    assert ci.low < 0 and row["seconds_low"] == 0.0 and row["seconds_clipped"]
    assert row["seconds_high"] == pytest.approx(ci.high)
    assert row["t_seconds"] == pytest.approx(6.25)  # median of two = their mean
    assert summary.loc[("builtin:cnn", "spectral_newton"), "t_seconds"] == pytest.approx(10.0)


def test_seed_statistic_counts_misses_as_infinite(tables):
    runs, steps = tables
    ttt = time_to_target(steps, runs)
    summary = summarize_time_to_target(ttt).set_index(["model", "optimizer"])
    lm_sn = summary.loc[("builtin:transformer", "spectral_newton")]
    # One of two seeds reached: the median over {20 s, ∞} is ∞; the mean over reached seeds is 20.
    assert lm_sn["n_reached"] == 1 and lm_sn["frac_reached"] == 0.5
    assert math.isinf(lm_sn["t_seconds"]) and lm_sn["seconds_mean"] == 20.0
    assert math.isnan(lm_sn["seconds_low"])  # one seed: no interval
    mean_stat = summarize_time_to_target(ttt, seed_stat="mean").set_index(["model", "optimizer"])
    assert math.isinf(mean_stat.loc[("builtin:transformer", "spectral_newton"), "t_seconds"])
    assert mean_stat.loc[("builtin:transformer", "adamw"), "t_seconds"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="seed_stat"):
        summarize_time_to_target(ttt, seed_stat="max")


# ----------------------------------------------------------------------- performance profile
def _summary(times: dict[tuple[str, str], dict[str, float]]) -> pd.DataFrame:
    rows = [
        {"model": w[0], "dataset": w[1], "optimizer": opt, "t_seconds": t, "t_steps": t}
        for w, by_opt in times.items()
        for opt, t in by_opt.items()
    ]
    return pd.DataFrame(rows)


def test_profile_ratios_rho_and_exact_score():
    summary = _summary(
        {
            ("m1", "d"): {"A": 10.0, "B": 20.0, "C": math.inf},
            ("m2", "d"): {"A": 30.0, "B": 15.0, "C": 45.0},
            ("m3", "d"): {"A": math.inf, "B": math.inf, "C": math.inf},  # nobody reached
        }
    )
    ratios = performance_ratios(summary)
    assert ratios.loc[("m1", "d")].tolist() == pytest.approx([1.0, 2.0, math.inf])
    assert ratios.loc[("m2", "d")].tolist() == pytest.approx([2.0, 1.0, 3.0])
    assert np.isinf(ratios.loc[("m3", "d")]).all()

    profile = performance_profile(summary, taus=[1.0, 1.5, 2.0, 3.0, 4.0])
    rho = profile.pivot(index="tau", columns="optimizer", values="rho")
    assert rho["A"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert rho["B"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert rho["C"].tolist() == pytest.approx([0, 0, 0, 1 / 3, 1 / 3])

    scores = profile.attrs["scores"].set_index("optimizer")
    # A: (4-1) + (4-2) + 0 over 3 workloads, normalised by 3 → 5/9.
    assert scores.loc["A", "score"] == pytest.approx(5 / 9)
    assert scores.loc["C", "score"] == pytest.approx(1 / 9)
    assert scores.loc["A", "n_reached"] == 2 and scores.loc["A", "n_fastest"] == 1
    # The exact area equals a fine numerical integral of the step function.
    tau = np.linspace(1, 4, 300001)
    fine = performance_profile(summary, taus=tau)
    for opt in "ABC":
        r = fine[fine["optimizer"] == opt]
        area = np.trapezoid(r["rho"], r["tau"]) if hasattr(np, "trapezoid") else np.trapz(r["rho"], r["tau"])
        assert area / 3 == pytest.approx(scores.loc[opt, "score"], abs=1e-4)


def test_profile_missing_optimizer_counts_as_not_reached():
    summary = _summary({("m1", "d"): {"A": 10.0, "B": 12.0}, ("m2", "d"): {"A": 5.0, "C": 6.0}})
    ratios = performance_ratios(summary)
    assert math.isinf(ratios.loc[("m2", "d"), "B"])
    scores = performance_profile_scores(ratios, tau_max=4).set_index("optimizer")
    assert scores.loc["A", "score"] == pytest.approx(1.0)
    assert scores.loc["B", "score"] == pytest.approx((4 - 1.2) / 3 / 2)
    with pytest.raises(ValueError, match="tau_max"):
        performance_profile_scores(ratios, tau_max=1.0)


def test_profile_from_trials_and_in_steps(tables):
    runs, steps = tables
    ttt = time_to_target(steps, runs, targets={("builtin:cnn", "sklearn:digits"): 0.8})
    by_time = performance_profile(ttt)
    ratios = by_time.attrs["ratios"]
    # digits: adamw 6.25 s vs spectral_newton 10 s; LM: adamw 10 s, spectral_newton ∞.
    assert ratios.loc[("builtin:cnn", "sklearn:digits"), "spectral_newton"] == pytest.approx(1.6)
    assert ratios.loc[("builtin:transformer", "builtin:text"), "adamw"] == 1.0
    assert ratios.shape == (2, 2)  # observed workloads only, not the model × dataset cross product
    assert set(by_time.attrs["scores"]["n_workloads"]) == {2}
    # In steps spectral_newton is faster on digits (10 vs 12.5): the measure matters.
    by_steps = performance_profile(ttt, measure="steps")
    assert by_steps.attrs["ratios"].loc[("builtin:cnn", "sklearn:digits"), "adamw"] == pytest.approx(1.25)
    with pytest.raises(ValueError, match="measure"):
        performance_profile(ttt, measure="joules")


# ------------------------------------------------------------------------------------ report
def test_report_has_a_comparisons_section(sweep_dir):
    report = build_report(sweep_dir)
    md = report.report_path.read_text(encoding="utf-8")
    assert "## Comparisons" in md and "### Best setting per optimizer" in md
    assert "### Time to target" in md and "### Performance profile" in md
    assert "adamw(lr=0.01)" in md and "spectral_newton(lr=0.02)" in md
    assert md.index("## Comparisons") < md.index("## Failed and diverged trials")
    section = report.comparison
    assert section is not None and len(section.best) == 4
    profile_png = report.out_dir / "plots" / "performance_profile__cmp.png"
    assert profile_png.is_file() and profile_png in section.plot_paths
    assert "](plots/performance_profile__cmp.png)" in md
    curves = [p for p in section.plot_paths if "best_eval_metric" in p.name]
    assert len(curves) == 4 and all(p.is_file() and p.stat().st_size > 1000 for p in curves)
    assert "best setting per optimizer" in report.text


def test_no_comparisons_section_with_one_optimizer(tmp_path):
    sweep = write_sweep(tmp_path, trials=[t for t in TRIALS if t[1] == "adamw"])
    report = build_report(sweep)
    assert report.comparison is None
    assert "## Comparisons" not in report.report_path.read_text(encoding="utf-8")


def test_comparison_plots_directly(tables, tmp_path):
    from analysis.comparison_plots import (
        plot_best_setting_curves,
        plot_performance_profile,
        seed_interval_band,
    )

    runs, steps = tables
    best = best_settings(runs)
    ttt = time_to_target(steps, runs)
    path = plot_performance_profile(performance_profile(ttt), tmp_path / "p" / "profile.png")
    assert path is not None and path.is_file()
    assert plot_performance_profile(performance_profile(pd.DataFrame()), tmp_path / "x.png") is None
    written = plot_best_setting_curves(steps, runs, best, tmp_path / "c", ttt.attrs["targets"])
    assert {p.name for p in written} == {
        "cmp__builtin-cnn__sklearn-digits__best_eval_metric_vs_step.png",
        "cmp__builtin-cnn__sklearn-digits__best_eval_metric_vs_wall.png",
        "cmp__builtin-transformer__builtin-text__best_eval_metric_vs_step.png",
        "cmp__builtin-transformer__builtin-text__best_eval_metric_vs_wall.png",
    }
    # The band is a t-interval over seeds at each step.
    frame = pd.DataFrame({"k": ["a", "a", "b", "b"], "step": [5, 10, 5, 10], "y": [1.0, 2.0, 3.0, 2.0]})
    band = seed_interval_band(frame, "k", "step", "y")
    ci = t_interval([1.0, 3.0])
    assert band.loc[5, "mean"] == 2.0 and (band.loc[5, "low"], band.loc[5, "high"]) == pytest.approx(
        (ci.low, ci.high)
    )
    assert band.loc[10, "low"] == band.loc[10, "high"] == 2.0


def test_two_entries_of_one_optimizer_are_compared_as_two_competitors(tables):
    """Spectral Newton under two α policies is two config entries: each gets its own best
    setting, instead of one tuning budget that picks the better policy silently."""
    runs, _ = tables
    runs = runs.copy()
    sn_cnn = (runs["optimizer"] == "spectral_newton") & (runs["model"] == "builtin:cnn")
    runs.loc[sn_cnn, "optimizer_entry"] = np.where(
        runs.loc[sn_cnn, "optimizer_label"] == "spectral_newton(lr=0.02)", "sn-fixed", "sn-measured")
    best = best_settings(runs)
    cnn = best[best["model"] == "builtin:cnn"].set_index("optimizer")
    assert set(cnn.index) == {"adamw", "sn-fixed", "sn-measured"}
    assert cnn.loc["sn-measured", "best_setting"] == "spectral_newton(lr=0.05)"
    assert cnn.loc["sn-fixed", "n_settings"] == 1


# ----------------------------------------------------------- performance profile discipline
def test_performance_profile_never_pools_sweeps_nor_ranks_a_lone_optimizer(tmp_path):
    """An α-map-like sweep that trained only AdamW must not make AdamW win the profile: its
    workload is not ranked, and it is never pooled with the comparison sweep."""
    from analysis.comparison import performance_profiles

    write_sweep(tmp_path, trials=[t for t in TRIALS if t[0] is CNN], sweep="cmp")
    write_sweep(tmp_path, trials=[t for t in TRIALS if t[0] is LM and t[1] == "adamw"], sweep="amap")
    runs, steps = load_table(tmp_path, "runs"), load_table(tmp_path, "steps")
    ttt = time_to_target(steps, runs, targets={("builtin:cnn", "sklearn:digits"): 0.8})
    with pytest.raises(ValueError, match="never pools sweeps"):
        performance_profile(ttt)
    profiles = performance_profiles(ttt)
    assert set(profiles) == {"amap", "cmp"}
    amap = profiles["amap"]
    assert amap.attrs["ratios"].empty and amap.attrs["scores"].empty
    assert amap.attrs["excluded"] == [("builtin:transformer", "builtin:text", "only adamw ran")]
    cmp_scores = profiles["cmp"].attrs["scores"].set_index("optimizer")
    assert set(cmp_scores["n_workloads"]) == {1}  # the CNN workload only
    # digits, target 0.8: adamw 6.25 s, spectral_newton 10 s → adamw fastest, sn at τ = 1.6.
    assert cmp_scores.loc["adamw", "score"] == 1.0
    assert cmp_scores.loc["spectral_newton", "score"] == pytest.approx((4 - 1.6) / 3)

    # Within one sweep too: a workload only one optimizer ran is left out of the ranking.
    lone = _summary({("m1", "d"): {"A": 10.0, "B": 20.0}, ("m2", "d"): {"A": 5.0}})
    ratios = performance_ratios(lone)
    assert list(ratios.index) == [("m1", "d")] and ratios.attrs["excluded"] == [("m2", "d", "only A ran")]

    report = build_report(tmp_path, tmp_path / "out")
    md = report.report_path.read_text(encoding="utf-8")
    assert "#### Sweep `amap`" in md and "builtin:transformer on builtin:text (only adamw ran)" in md
    assert (tmp_path / "out" / "plots" / "performance_profile__cmp.png").is_file()
    assert not (tmp_path / "out" / "plots" / "performance_profile__amap.png").exists()


def test_performance_profile_axis_is_a_ratio(tables, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from analysis.comparison_plots import plot_performance_profile

    labels = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (labels.append(fig.axes[0].get_xlabel()),
                                                                  original(fig, *a, **k)))
    runs, steps = tables
    plot_performance_profile(performance_profile(time_to_target(steps, runs)), tmp_path / "p.png")
    assert labels == ["τ = time to target ÷ fastest optimizer's time to target (ratio)"]


# ---------------------------------------------------------------------- bounded intervals
def test_an_accuracy_interval_stays_inside_0_1_and_says_so(tmp_path):
    """Two seeds of accuracy 0.9 and 1.0: mean ± t·s/√2 reaches 1.59; the report clips at 1."""
    trials = [
        (CNN, "adamw", "adamw", -1, "{}", [0.90, 1.00], [[0.5, 0.7, 0.9, 0.95], [0.5, 0.7, 0.9, 0.97]]),
        (CNN, "spectral_newton", "spectral_newton", -1, "{}", [0.80, 0.82], [[0.5, 0.6, 0.7, 0.8]] * 2),
    ]  # fmt: skip
    sweep = write_sweep(tmp_path, trials=trials)
    best = best_settings(load_table(sweep, "runs")).set_index("optimizer")
    raw = t_interval([0.90, 1.00])
    assert raw.high > 1.5  # what the interval would say unclipped
    assert best.loc["adamw", "test_metric_high"] == 1.0 and best.loc["adamw", "test_metric_clipped"]
    assert best.loc["adamw", "test_metric_low"] == pytest.approx(raw.low)
    assert not best.loc["spectral_newton", "test_metric_clipped"]
    md = build_report(sweep).report_path.read_text(encoding="utf-8")
    assert "0.950 [0.315, 1.000]*" in md and "interval clipped to the range" in md
    assert "1.585" not in md


# ------------------------------------------------------------------------- probe pauses
def test_wall_clock_excludes_probe_pauses():
    from analysis.clock import train_wall_time

    steps = pd.DataFrame({
        "trial_path": ["a"] * 4 + ["b"] * 2, "step": [1, 2, 3, 3, 1, 2],
        "wall_time_s": [1.0, 12.0, 13.0, 13.5, 2.0, 4.0],
        "probe_time_s": [0.0, 10.0, 0.0, 0.0, 0.5, 0.0],  # a 10 s probe in a's second interval
    })  # fmt: skip
    # a: 1, 12 − 10, 13 − 10, and the rewritten step 3 counts the probe once; b: its own probe.
    assert train_wall_time(steps, "trial_path").tolist() == [1.0, 2.0, 3.0, 3.5, 1.5, 3.5]
    assert train_wall_time(steps.drop(columns="probe_time_s"), "trial_path").tolist() == steps["wall_time_s"].tolist()


def test_time_to_target_excludes_probe_pauses(tables):
    runs, steps = tables
    probed = steps.copy()
    sn = probed["trial_id"].str.startswith("spectral_newton")
    probed["probe_time_s"] = np.where(sn & (probed["step"] == 5), 100.0, 0.0)
    probed.loc[sn & (probed["step"] >= 5), "wall_time_s"] += 100.0  # the pause is in the clock
    targets = {("builtin:cnn", "sklearn:digits"): 0.8}
    plain = summarize_time_to_target(time_to_target(steps, runs, targets)).set_index(["model", "optimizer"])
    paused = summarize_time_to_target(time_to_target(probed, runs, targets)).set_index(["model", "optimizer"])
    assert paused.loc[("builtin:cnn", "spectral_newton"), "t_seconds"] == plain.loc[
        ("builtin:cnn", "spectral_newton"), "t_seconds"] == pytest.approx(10.0)
