"""The two-stage tuning protocol and the fair-comparison statistics, without Ray.

- the paired Student-t test against an independent float64 oracle (mpmath's incomplete beta
  function and a root of the t CDF, not scipy);
- range-respecting intervals (perplexity never below 1, accuracy inside [0, 1]);
- stage 2 chosen from stage 1's Parquet files (validation metric, direction, diverged settings
  excluded, nothing before stage 1 finished, the same choice on every re-run), fresh shared seeds;
- the edge flag and the coverage of a search axis; the report's use of finalists only;
- edge checks: the values beyond an edge (a literal transcription of the step rule), the
  settings the driver adds for each finalist's edge, and the report's bracketed / better-beyond
  verdict from them, outside the budget;
- the separation verdict (Holm-significant entries, a bounded metric at its ceiling);
- the ``tuning_stage`` upgrade step.
"""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analysis_fixtures import run_row, write_table

from analysis.comparison import best_settings, comparison_section, prepare_runs
from analysis.paired import holm, paired_table, paired_test, range_interval, separation_lines
from analysis.tuning import (
    BETTER_BEYOND,
    BRACKETED,
    FLAT_BEYOND,
    _edge,
    axis_table,
    beyond_edge,
    final_rows,
    format_axis_table,
)
from bench.config import STAGE_EDGE, STAGE_FINAL, STAGE_SCREEN, STAGE_SINGLE
from bench.results.schema import METADATA_KEY
from bench.results.upgrade import upgrade_file
from launchers.stages import choose_edge_checks, choose_finalists, screening
from launchers.sweep import expand, parse_config

mpmath.mp.dps = 40


# ---------------------------------------------------------------------------- paired test
def _oracle(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """t, two-sided p and the 95 % interval of the mean difference, in 40-digit arithmetic."""
    d = [mpmath.mpf(x) - mpmath.mpf(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = mpmath.fsum(d) / n
    sd = mpmath.sqrt(mpmath.fsum((x - mean) ** 2 for x in d) / (n - 1))
    nu = n - 1
    t = mean / (sd / mpmath.sqrt(n))
    p = mpmath.betainc(nu / mpmath.mpf(2), mpmath.mpf(1) / 2, 0, nu / (nu + t**2), regularized=True)

    def cdf(x):  # Student-t CDF for x > 0
        return 1 - mpmath.betainc(nu / mpmath.mpf(2), mpmath.mpf(1) / 2, 0, nu / (nu + x**2), regularized=True) / 2

    q = mpmath.findroot(lambda x: cdf(x) - mpmath.mpf("0.975"), 2.5)
    half = q * sd / mpmath.sqrt(n)
    return float(t), float(p), float(mean - half), float(mean + half)


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_paired_test_matches_a_float64_oracle(n):
    rng = np.random.default_rng(n)
    a = list(3.0 + rng.normal(0, 0.1, n))
    b = [x - 0.05 + e for x, e in zip(a, rng.normal(0, 0.04, n), strict=True)]
    got = paired_test(a, b)
    t, p, low, high = _oracle(a, b)
    assert got["n"] == n and got["mean_diff"] == pytest.approx(float(np.mean(np.subtract(a, b))), rel=1e-13)
    assert got["t_stat"] == pytest.approx(t, rel=1e-10)
    assert got["p_value"] == pytest.approx(p, rel=1e-8)
    assert (got["diff_low"], got["diff_high"]) == pytest.approx((low, high), rel=1e-9)


def test_paired_test_drops_unpaired_seeds_and_refuses_degenerate_input():
    got = paired_test([1.0, 2.0, math.nan, 4.0], [0.5, 1.0, 3.0, 5.0])
    assert got["n"] == 3
    assert math.isnan(paired_test([1.0], [0.0])["p_value"])
    assert math.isnan(paired_test([1.0, 2.0], [0.0, 1.0])["t_stat"])  # identical differences


def test_holm_adjustment():
    # Sorted p = 0.01, 0.02, 0.04 → 3·0.01, max(0.03, 2·0.02), max(0.04, 1·0.04).
    assert holm([0.04, 0.01, math.nan, 0.02]) == pytest.approx([0.04, 0.03, math.nan, 0.04], nan_ok=True)


def test_intervals_stay_inside_the_metric_range():
    ppl = [1.02, 1.30, 1.05]
    ci = range_interval(ppl, "perplexity")
    z = np.log(np.subtract(ppl, 1.0))
    half = 4.302652729911275 * z.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert ci.low == pytest.approx(1 + math.exp(z.mean() - half)) and ci.low > 1.0
    assert ci.high == pytest.approx(1 + math.exp(z.mean() + half))
    assert ci.mean == pytest.approx(np.mean(ppl)) and not ci.clipped
    acc = range_interval([0.97, 0.999], "accuracy")
    assert 0.0 < acc.low < acc.high < 1.0
    on_bound = range_interval([0.9, 1.0], "accuracy")  # logit(1) does not exist: clip instead
    assert on_bound.high == 1.0 and on_bound.clipped


# ------------------------------------------------------------------------- stage selection
def _two_stage(**tuning) -> object:
    doc = {
        "name": "fair", "seed": 0, "seeds": 3,
        "workloads": [{"model": "builtin:cnn", "dataset": "sklearn:digits"}],
        "optimizers": [
            {"name": "adamw", "search": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}},
            {"name": "muon", "search": {"lr": {"values": [0.01, 0.03, 0.1, 0.3]}}},
            {"name": "adamw", "label": "fixed", "settings": {"lr": 0.01}},
        ],
        "tuning": {"budget": 4, "finalists": 2, **tuning},
    }
    return parse_config(doc)


def _write_stage1(sweep_dir, cfg, trials, vals, statuses=None):
    for key, ts in screening(cfg, trials).items():
        for i, t in enumerate(ts):
            status = (statuses or {}).get((key, i), "completed")
            write_table(sweep_dir / "trials" / t.trial_id / "runs.parquet", [run_row(
                sweep_name=cfg.name, trial_id=t.trial_id, optimizer=t.optimizer, optimizer_label=t.optimizer_label,
                optimizer_entry=t.optimizer_entry, tuning_index=t.tuning_index, tuning_stage=t.tuning_stage,
                seed_index=t.seed_index, status=status, best_eval_metric=vals[key][i],
                optimizer_settings=json.dumps(t.optimizer_settings))])  # fmt: skip


def test_stage_two_is_chosen_from_stage_one_parquet(tmp_path):
    cfg = _two_stage()
    trials = expand(cfg)
    by_stage = {s: [t for t in trials if t.tuning_stage == s] for s in (STAGE_SCREEN, STAGE_FINAL)}
    # Screening: 4 settings × seed 0 for the two searched entries; the fixed entry (1 setting ≤ 2
    # finalists) goes straight to stage 2 on seeds 1..3.
    assert len(by_stage[STAGE_SCREEN]) == 8 and {t.seed_index for t in by_stage[STAGE_SCREEN]} == {0}
    assert [t.seed_index for t in by_stage[STAGE_FINAL]] == [1, 2, 3]
    sweep = tmp_path / "fair"
    assert choose_finalists(cfg, trials, sweep) is None  # nothing screened yet

    vals = {(0, 0): [0.5, 0.9, 0.8, 0.95], (0, 1): [0.7, 0.6, 0.99, 0.2]}
    _write_stage1(sweep, cfg, trials, vals, statuses={((0, 0), 3): "diverged"})
    chosen = choose_finalists(cfg, trials, sweep)
    # Accuracy is maximised; adamw's 0.95 diverged and is never a finalist.
    assert chosen == {(0, 0): [1, 2], (0, 1): [2, 0]}
    assert choose_finalists(cfg, trials, sweep) == chosen  # a re-run resumes to the same choice

    full = expand(cfg, chosen)
    assert full[: len(trials)] == trials
    stage2 = full[len(trials):]
    assert len(stage2) == 4 * 3 and all(t.tuning_stage == STAGE_FINAL for t in stage2)
    assert {t.seed_index for t in stage2} == {1, 2, 3}
    screened_ids = {t.trial_id for t in by_stage[STAGE_SCREEN]}
    assert not screened_ids & {t.trial_id for t in stage2}  # fresh seeds: no screening trial reused
    seeds = {t.seed_index: t.seed for t in full}
    assert all(t.seed == seeds[t.seed_index] for t in full)  # one seed per index for every entry
    muon_screen = screening(cfg, trials)[(0, 1)]
    muon = [t for t in stage2 if t.optimizer == "muon"]
    assert {t.optimizer_settings["lr"] for t in muon} == {muon_screen[i].optimizer_settings["lr"] for i in (2, 0)}


def test_stage_two_waits_for_every_screening_trial(tmp_path):
    cfg = _two_stage()
    trials = expand(cfg)
    vals = {(0, 0): [0.5] * 4, (0, 1): [0.5] * 4}
    _write_stage1(tmp_path / "fair", cfg, trials, vals, statuses={((0, 1), 0): "failed"})
    assert choose_finalists(cfg, trials, tmp_path / "fair") is None  # a failed trial is retried first


def test_one_stage_sweeps_are_unchanged_and_finalists_must_be_below_budget():
    cfg = _two_stage(finalists=0)
    trials = expand(cfg)
    assert len(trials) == (4 + 4 + 1) * 3 and {t.tuning_stage for t in trials} == {STAGE_SINGLE}
    with pytest.raises(Exception, match="finalists .* must be below tuning.budget"):
        _two_stage(finalists=4)


# ------------------------------------------------------------------- edge flag, coverage
def _tuned_runs(chosen_lr: float) -> pd.DataFrame:
    rows = []
    space = json.dumps({"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "normalize": {"values": ["none", "frobenius"]},
                        "k": {"values": [5, 10, 20]}})
    for i, (lr, norm, k) in enumerate([(1e-3, "none", 5), (1e-2, "frobenius", 10), (3e-2, "none", 10)]):
        val = 0.9 if lr == chosen_lr else 0.5
        stage = STAGE_SCREEN
        rows.append(run_row(trial_id=f"a{i}", optimizer_label=f"adamw({i})", tuning_index=i, tuning_stage=stage,
                            search_space=space, optimizer_settings=json.dumps({"lr": lr, "normalize": norm, "k": k}),
                            best_eval_metric=val, test_metric=val))
        if lr == chosen_lr:
            for s in (1, 2):
                rows.append(run_row(trial_id=f"a{i}s{s}", optimizer_label=f"adamw({i})", tuning_index=i,
                                    tuning_stage=STAGE_FINAL, seed_index=s, search_space=space,
                                    optimizer_settings=json.dumps({"lr": lr, "normalize": norm, "k": k}),
                                    best_eval_metric=val, test_metric=val + 0.01 * s))
    rows.append(run_row(trial_id="m", optimizer="muon", optimizer_label="muon", optimizer_entry="muon",
                        tuning_stage=STAGE_FINAL, seed_index=1, test_metric=0.8, best_eval_metric=0.8))
    rows.append(run_row(trial_id="m2", optimizer="muon", optimizer_label="muon", optimizer_entry="muon",
                        tuning_stage=STAGE_FINAL, seed_index=2, test_metric=0.85, best_eval_metric=0.8))
    return pd.DataFrame(rows)


def test_an_edge_choice_is_flagged_and_coverage_is_measured():
    runs = _tuned_runs(chosen_lr=3e-2)
    final = final_rows(runs)
    assert set(final["tuning_stage"]) == {STAGE_FINAL}  # the screening rows leave the comparison
    best = best_settings(final)
    axes = axis_table(prepare_runs(runs), best).set_index("axis")
    assert bool(axes.loc["lr", "edge"]) is True  # 0.03 is the largest lr tried
    assert axes.loc["lr", "coverage"] == pytest.approx(math.log(30) / math.log(1000))
    assert axes.loc["normalize", "edge"] is None and axes.loc["normalize", "coverage"] == 1.0
    assert bool(axes.loc["k", "edge"]) is False and axes.loc["k", "coverage"] == pytest.approx(2 / 3)
    mid = axis_table(prepare_runs(runs := _tuned_runs(chosen_lr=1e-2)), best_settings(final_rows(runs)))
    assert not bool(mid.set_index("axis").loc["lr", "edge"])
    # 0 at the low end of a non-negative axis is a hard bound (nothing below to search), not an edge.
    decay = {"values": [0.0, 0.01, 0.1]}
    assert _edge(decay, decay["values"], 0.0) is False and _edge(decay, decay["values"], 0.1) is True
    assert _edge({"values": [-0.1, 0.0, 0.1]}, [-0.1, 0.0, 0.1], 0.0) is False
    assert _edge({"values": [-0.1, 0.0]}, [-0.1, 0.0], 0.0) is True
    # A hard end of the setting's domain, recorded from its settings model, is no edge either
    # (preconditioning every step: there is no more often); the other end of the list is.
    freq = {"values": [1, 5, 20], "domain_min": 1}
    assert _edge(freq, [1, 5, 20], 1) is False and _edge(freq, [1, 5, 20], 20) is True
    assert _edge({"values": [0.9, 0.99], "domain_max": 0.99}, [0.9, 0.99], 0.99) is False

    paired = paired_table(prepare_runs(final), best)
    (row,) = paired.itertuples()
    assert (row.optimizer, row.reference, row.n_pairs) == ("muon", "adamw", 2)
    assert row.mean_diff == pytest.approx(((0.8 - 0.91) + (0.85 - 0.92)) / 2)


def test_a_range_edge_is_the_outer_gap_of_the_searched_range_not_the_largest_value_tried():
    # Ten values tried over [1e-4, 1e-1] (log): one gap is a tenth of the log span. The best
    # value is at the edge when it is the extreme tried and no further than that from the bound.
    lr = {"low": 1e-4, "high": 1e-1, "log": True}
    tried = list(np.logspace(-4, -1, 10))
    assert _edge(lr, tried, tried[-1]) is True and _edge(lr, tried, tried[0]) is True
    assert _edge(lr, tried, tried[5]) is False  # interior
    inside = list(np.logspace(-4, -2, 10))  # the largest tried, 1e-2, is 2/3 of the way up
    assert _edge(lr, inside, 1e-2) is False
    assert _edge(lr, [*inside[:-1], 0.09], 0.09) is True  # within the outer tenth (log 0.09 at 0.98)
    # On a linear axis the position is linear: α ∈ [1, 3], the best α 2.9 of five tried.
    alpha = {"low": 1.0, "high": 3.0}
    assert _edge(alpha, [1.2, 1.6, 2.0, 2.4, 2.9], 2.9) is True
    assert _edge(alpha, [1.2, 1.6, 2.0, 2.4, 2.5], 2.5) is False  # 0.75 of the span, gap 0.2
    assert _edge(lr, [0.01], 0.01) is None  # one value tried says nothing


# ---------------------------------------------------------------------------- edge checks
def test_values_beyond_an_edge_step_outward_by_one_gap_of_the_searched_span():
    # Eight values tried over [1e-3, 10] (log): one gap is 4/8 of a decade. The best, 5.013 (the
    # top Halton point at 0.925 of the span), gets 5.013·10^0.5 and 5.013·10^1, to 4 digits.
    lr = {"low": 1e-3, "high": 10.0, "log": True}
    tried = [5.013, 1.345, 0.006965, 0.02, 0.1, 0.3, 2.0e-3, 0.05]
    assert beyond_edge(lr, tried, 5.013, 2) == [float(f"{5.013 * 10 ** 0.5:.4g}"), float(f"{5.013 * 10:.4g}")]
    assert beyond_edge(lr, tried, 2.0e-3, 1) == [float(f"{2.0e-3 / 10 ** 0.5:.4g}")]  # the low side
    assert beyond_edge(lr, tried, 0.1, 2) == []  # interior: nothing to check
    # Linear: α ∈ [1, 3], five tried, a gap of 0.4.
    assert beyond_edge({"low": 1.0, "high": 3.0}, [1.2, 1.6, 2.0, 2.4, 2.9], 2.9, 2) == [3.3, 3.7]
    # An integer axis stops at the setting's domain (frequency ≥ 1): 3 − 25 clips to 1, once.
    freq = {"low": 1, "high": 101, "integer": True, "domain_min": 1}
    assert beyond_edge(freq, [3, 30, 50, 70], 3, 3) == [1]
    # A list of numbers continues its outermost step: a ratio between positive values, else a
    # difference; a list of anything else, or an interior choice, gets nothing.
    decay = {"values": [0.0, 0.01, 0.1, 0.3, 1.0], "domain_min": 0.0}
    assert beyond_edge(decay, decay["values"], 1.0, 2) == [float(f"{1 / 0.3:.4g}"), float(f"{1 / 0.3 ** 2:.4g}")]
    assert beyond_edge(decay, decay["values"], 0.0, 2) == []  # a hard end: nothing below
    beta2 = {"values": [0.8, 0.9, 0.95, 0.99, 0.999]}
    assert beyond_edge(beta2, beta2["values"], 0.8, 2) == [float(f"{0.8 * 8 / 9:.4g}"), float(f"{0.8 * (8 / 9) ** 2:.4g}")]
    assert beyond_edge({"values": [-0.1, 0.0]}, [-0.1, 0.0], -0.1, 2) == [-0.2, -0.3]
    assert beyond_edge({"values": [10, 50, 100]}, [10, 50, 100], 100, 1) == [200]  # integers stay integers
    assert beyond_edge(beta2, beta2["values"], 0.95, 2) == []
    assert beyond_edge({"values": ["none", "frobenius"]}, ["none", "frobenius"], "none", 2) == []


def test_the_driver_checks_each_finalists_edges_beyond_the_budget(tmp_path):
    cfg = _two_stage(edge_check=2)
    trials = expand(cfg)
    screened = screening(cfg, trials)
    lrs = [t.optimizer_settings["lr"] for t in screened[(0, 0)]]
    top = max(range(4), key=lambda i: lrs[i])
    vals = {(0, 0): [0.5] * 4, (0, 1): [0.7, 0.6, 0.99, 0.2]}
    vals[(0, 0)][top] = 0.95  # adamw's best is its largest lr
    _write_stage1(tmp_path / "fair", cfg, trials, vals)
    finalists = choose_finalists(cfg, trials, tmp_path / "fair")
    checks = choose_edge_checks(cfg, finalists)
    # adamw's top point is in the outer quarter of [1e-4, 1e-1] in log (4 values tried), so the
    # winner is checked twice beyond, a quarter of the log span apart.
    span = math.log(1e-1 / 1e-4)
    where = math.log(lrs[top] / 1e-4) / span
    assert where >= 3 / 4 and (0, 0) in checks
    # muon's lr is the list [0.01, 0.03, 0.1, 0.3]: a finalist at its end continues the end's ratio.
    muon_lrs = [screened[(0, 1)][i].optimizer_settings["lr"] for i in finalists[(0, 1)]]
    ratio = {0.01: 0.01 / 0.03, 0.3: 0.3 / 0.1}
    expected_muon = [float(f"{lr * ratio[lr] ** j:.4g}") for lr in muon_lrs if lr in ratio for j in (1, 2)]
    assert [p["lr"] for _, p in checks.get((0, 1), [])] == expected_muon and expected_muon
    assert [i for i, _ in checks[(0, 1)]] == [4, 5]
    expected = [float(f"{lrs[top] * math.exp(j * span / 4):.4g}") for j in (1, 2)]
    assert [(i, p["lr"]) for i, p in checks[(0, 0)]][:2] == [(4, expected[0]), (5, expected[1])]
    full = expand(cfg, finalists, checks)
    edge = [t for t in full if t.tuning_stage == STAGE_EDGE]
    assert {t.seed_index for t in edge} == {0}
    assert [t.tuning_index for t in edge] == [i for key in ((0, 0), (0, 1)) for i, _ in checks[key]]
    assert edge[0].seed == screened[(0, 0)][top].seed  # the screening seed: compared like with like
    assert len({t.trial_id for t in full}) == len(full)  # a check never collides with a budget trial
    assert choose_edge_checks(cfg, finalists) == checks  # a resumed sweep recomputes the same checks
    with pytest.raises(Exception, match="edge_check needs the two-stage protocol"):
        _two_stage(edge_check=2, finalists=0)


def _checked_runs(beyond: dict[float, tuple[float, str]]) -> pd.DataFrame:
    """``_tuned_runs`` with lr 0.03 chosen at its edge, plus edge-check rows (lr → validation, status)
    of the chosen setting on the screening seed."""
    runs = _tuned_runs(chosen_lr=3e-2)
    space = runs["search_space"].iloc[0]
    rows = [run_row(trial_id=f"e{i}", optimizer_label=f"adamw(e{i})", tuning_index=3 + i, tuning_stage=STAGE_EDGE,
                    search_space=space, optimizer_settings=json.dumps({"lr": lr, "normalize": "none", "k": 10}),
                    best_eval_metric=val, test_metric=val, status=status)
            for i, (lr, (val, status)) in enumerate(beyond.items())]  # fmt: skip
    return pd.concat([runs, pd.DataFrame(rows)], ignore_index=True)


def test_an_edge_is_bracketed_when_nothing_beyond_it_scores_better(tmp_path):
    worse = _checked_runs({0.06: (0.85, "completed"), 0.12: (0.3, "diverged")})
    final = final_rows(worse)
    assert STAGE_EDGE not in set(final["tuning_stage"])  # outside the budget: never compared
    axes = axis_table(prepare_runs(worse), best_settings(final)).set_index("axis")
    # The checks are not "tried": 0.03 is still the edge, and the budget's coverage is unchanged.
    assert bool(axes.loc["lr", "edge"]) is True
    assert axes.loc["lr", "coverage"] == pytest.approx(math.log(30) / math.log(1000))
    assert axes.loc["lr", "edge_check"] == BRACKETED
    assert axes.loc["lr", "beyond"].startswith("0.06: 0.850; 0.12: diverged (chosen: 0.900; seed sd ")
    assert pd.isna(axes.loc["k", "edge_check"])  # not an edge, not checked
    table = format_axis_table(axis_table(prepare_runs(worse), best_settings(final)))
    assert "EDGE, bracketed" in table and "nan" not in table

    better = _checked_runs({0.06: (0.95, "completed")})
    axes = axis_table(prepare_runs(better), best_settings(final_rows(better))).set_index("axis")
    assert axes.loc["lr", "edge_check"] == BETTER_BEYOND
    # Within one seed-to-seed standard deviation of the chosen setting (its finalist seeds 0.88
    # and 0.92: sd 0.0283), a better value beyond is noise: the axis is flat there.
    flat = _checked_runs({0.06: (0.92, "completed")})
    flat.loc[flat["trial_id"] == "a2s1", "best_eval_metric"] = 0.88
    flat.loc[flat["trial_id"] == "a2s2", "best_eval_metric"] = 0.92
    axes = axis_table(prepare_runs(flat), best_settings(final_rows(flat))).set_index("axis")
    assert axes.loc["lr", "edge_check"] == FLAT_BEYOND and "seed sd 0.028" in axes.loc["lr", "beyond"]
    flat.loc[flat["trial_id"] == "e0", "best_eval_metric"] = 0.96  # 0.06 better than 0.9 > sd: not noise
    axes = axis_table(prepare_runs(flat), best_settings(final_rows(flat))).set_index("axis")
    assert axes.loc["lr", "edge_check"] == BETTER_BEYOND
    # The report says which edges stay open; a bracketed edge is not one of them.
    md = "\n".join(comparison_section(better, pd.DataFrame(), tmp_path / "b").markdown)
    assert "**Edge choices: 1**, 1 not settled (adamw lr=0.03 (better beyond))" in md
    section = comparison_section(worse, pd.DataFrame(), tmp_path / "w")
    assert "**Edge choices: 1**, every one settled by its edge check (adamw lr=0.03 (bracketed))" in "\n".join(section.markdown)
    # Edge checks are outside the budget: adamw tried its 3 settings, not 5.
    assert section.best.set_index("optimizer").loc["adamw", "n_settings"] == 3


# -------------------------------------------------------------------------- separation
def _finalists(tests: dict[str, list[float]]) -> pd.DataFrame:
    """Finalist rows (one setting per entry, seeds 1..n) with the given test accuracies."""
    return pd.DataFrame([
        run_row(trial_id=f"{opt}{s}", optimizer=opt, optimizer_label=opt, optimizer_entry=opt, tuning_stage=STAGE_FINAL,
                seed_index=s + 1, test_metric=v, best_eval_metric=v)
        for opt, values in tests.items() for s, v in enumerate(values)
    ])  # fmt: skip


def _verdict(tests: dict[str, list[float]]) -> str:
    runs = prepare_runs(final_rows(_finalists(tests)))
    best = best_settings(final_rows(_finalists(tests)))
    (text, blank) = separation_lines(paired_table(runs, best), best)
    assert blank == ""
    return text


def test_the_separation_verdict_names_significant_entries_and_a_saturated_metric():
    apart = _verdict({"adamw": [0.80, 0.82, 0.81], "muon": [0.70, 0.715, 0.705], "soap": [0.79, 0.825, 0.80]})
    # muon is far below adamw with a small spread of differences; soap's differences straddle 0.
    assert "1 of 2 entries differ from the top-ranked adamw" in apart and "muon (p = " in apart
    assert "soap (p" not in apart and "at its ceiling" not in apart
    # Both entries within 0.05 of accuracy 1, differences of both signs: not separated, saturated.
    ceiling = _verdict({"adamw": [0.99, 0.985, 0.992], "muon": [0.981, 0.99, 0.975]})
    assert "**not separated**" in ceiling and "**at its ceiling**" in ceiling
    # distances from 1: 1 − mean(0.99, 0.985, 0.992) = 0.011 (adamw) to 1 − mean(0.981, 0.99, 0.975) = 0.018
    assert "from its bound 1.00: 0.0110–0.0180" in ceiling
    # Far from the bound and not separated: no ceiling claim.
    low = _verdict({"adamw": [0.80, 0.70, 0.75], "muon": [0.78, 0.72, 0.74]})
    assert "**not separated**" in low and "at its ceiling" not in low


def test_each_sweep_gets_its_own_verdict_and_a_one_entry_sweep_none():
    # Two sweeps on the same model and dataset (a comparison, and an α-map sweep of AdamW alone):
    # each verdict reads its own sweep's tests, and the lone entry has nothing to separate.
    comparison = _finalists({"adamw": [0.80, 0.82, 0.81], "muon": [0.70, 0.715, 0.705]})
    alone = _finalists({"adamw": [0.90, 0.91, 0.92]}).assign(sweep_name="amap", trial_id=lambda f: "amap-" + f["trial_id"])
    runs = pd.concat([comparison, alone], ignore_index=True)
    best = best_settings(final_rows(runs))
    lines = [line for line in separation_lines(paired_table(prepare_runs(final_rows(runs)), best), best) if line]
    (only,) = lines
    assert only.startswith(f"**{comparison['model'].iloc[0]} on {comparison['dataset'].iloc[0]}** (sweep `{comparison['sweep_name'].iloc[0]}`)")
    assert "1 of 1 entries differ from the top-ranked adamw" in only and "muon (p = " in only


# ----------------------------------------------------------------------------- upgrade
def test_the_tuning_stage_upgrade_step_fills_zero(tmp_path):
    path = write_table(tmp_path / "runs.parquet", [run_row(trial_id="t")])
    table = pq.read_table(path).drop_columns(["tuning_stage"])
    table = table.set_column(table.column_names.index("schema_version"), "schema_version", pa.array([2], pa.int32()))
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: b"2"}), path)
    assert upgrade_file(path) is True
    assert pq.read_table(path)["tuning_stage"].to_pylist() == [0]
