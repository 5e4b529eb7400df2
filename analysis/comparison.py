"""Optimizer comparisons under equal tuning budgets: best setting per optimizer, time to target,
and AlgoPerf-style performance profiles.

Everything here works on the ``runs`` and ``steps`` tables as :func:`analysis.dataset.load_table`
returns them; nothing imports the training code.

Vocabulary
----------
- A *workload* is a (sweep, model, dataset) (:data:`analysis.summary.WORKLOAD`): trials of two
  sweeps are never pooled, since sweeps differ in budget, seeds and machine.
- An *optimizer* is a config entry, the ``optimizer_entry`` column (``by=`` selects another,
  e.g. ``optimizer_label`` to treat every setting as a competitor): two entries of one
  registry optimizer (two α policies of Spectral Newton) are two competitors.
- A *setting* is one point of an optimizer's tuning budget: one ``optimizer_label`` (name plus
  setting values) and ``tuning_index`` (-1 without tuning). Each setting runs with every seed.

Everything reads the required ``runs`` columns (``optimizer_entry``, ``tuning_index``,
``metric_goal``, ``seed_index``, ...) as they are: ``analysis.dataset`` refuses files without
them, so nothing here guesses.

Selection and reporting (:func:`best_settings`)
-----------------------------------------------
The best setting is chosen on the **validation** metric only — the mean over seeds of
``best_eval_metric`` (``final_eval_metric`` when a table has no best) — and the chosen setting is
then reported on the **test** metric, mean with a 95 % Student-t interval over its seeds. Choosing
and reporting on the same split would overstate the winner by the selection bias of the search.

A diverged or failed seed counts as the *worst possible* value (−∞ for a ``max`` metric, +∞ for
``min``): a setting that lost any seed therefore ranks below every setting whose seeds all
completed, whatever its mean. Settings that all lost seeds are ordered by the fraction lost, then
by the mean over their completed seeds. An optimizer cannot win by a setting that is fast when it
does not blow up. (``failed`` is treated like ``diverged`` because the table cannot tell an
optimizer-induced crash, e.g. an out-of-memory preconditioner, from an infrastructure one; the
report lists every failed trial with its error.)

Time to target (:func:`time_to_target`, :func:`summarize_time_to_target`)
-------------------------------------------------------------------------
The first logged evaluation at which ``eval_metric`` reaches the workload's target (``>=`` for
``max`` goals, ``<=`` for ``min``) gives the step, samples, tokens and training wall-clock
seconds (curvature-probe pauses excluded, :mod:`analysis.clock`) to target of a trial; a trial that never reaches it has ``reached=False`` and NaN costs. A trial that
reached the target and diverged later still reached it (the evaluation happened).

Default target (:func:`default_targets`), AlgoPerf-like: per workload, the **median over
optimizers of their best setting's mean final validation metric**. With the optimizers' own
tuned end results as the yardstick the target is attainable by construction, and the median puts
it where roughly half of the optimizers reach it — hard enough to separate them, easy enough that
the performance profile is not empty. (A fixed fraction of the best result would depend on the metric's
scale: 90 % of an accuracy and 110 % of a perplexity are not comparable difficulties.) Explicit
targets ``{(model, dataset): value}`` replace the default on that model and dataset in every sweep.

The per-optimizer time used by the performance profile, ``t_{s,w}``, is the **median over the best setting's
seeds**, a seed that never reached the target counting as ∞ (``seed_stat="mean"``: the mean,
∞ as soon as one seed missed). The median keeps one unlucky seed from erasing an optimizer from
the performance profile while still requiring a majority of seeds to reach the target (with two seeds, both);
means over the seeds that reached would reward luck (survivorship). The summary also gives the
mean and 95 % interval over the seeds that reached, and the fraction that reached.

Performance profiles (:func:`performance_profile`, :func:`performance_profile_scores`)
------------------------------------------------------------------------------------------
As in AlgoPerf (Dahl et al., 2023, "Benchmarking Neural Network Training Algorithms"):
``r_{s,w} = t_{s,w} / min_s t_{s,w}`` and ``ρ_s(τ) = |{w : r_{s,w} ≤ τ}| / |W|`` over the
workloads ``W`` of the comparison. ``r`` and ``τ`` are ratios of times (dimensionless), not
times. An optimizer that did not reach the target, or was not run on a workload, has ``r = ∞``
there; a workload no optimizer solved counts for nobody. The score is the normalised area under
the performance profile on ``τ ∈ [1, τ_max]``, ``(1/(τ_max − 1)) ∫ ρ_s(τ) dτ``, computed exactly from the
step function, with **τ_max = 4** as in AlgoPerf: 1 means fastest on every workload, 0 means
never within 4× of the fastest.

Two rules keep the performance profile honest. It never pools sweeps: one per sweep
(:func:`performance_profiles`), because times measured under different budgets and machines are
not comparable and an optimizer absent from a sweep would count as "never reached" there. And a
workload on which fewer than two optimizers ran is not ranked (it is listed in
``attrs["excluded"]``): a lone optimizer is trivially "fastest", and would win the performance profile by
having been the only one trained (e.g. an α-map sweep that trains AdamW alone).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from analysis.clock import TRAIN_WALL, train_wall_time
from analysis.dataset import TRIAL_PATH
from analysis.paired import format_paired, paired_table, range_interval, separation_lines
from analysis.summary import NONNEGATIVE, WORKLOAD, t_interval
from analysis.tables import CLIPPED_NOTE, format_interval, format_number, frame_grid, grid

SETTING = ["optimizer_label", "tuning_index"]
#: The column that names an optimizer by default: the config entry.
ENTRY = "optimizer_entry"
#: Statuses that count as the worst possible value of a seed.
LOST = ("diverged", "failed")
#: Upper end of the τ range of performance-profile scores (AlgoPerf's value).
TAU_MAX = 4.0
#: Cost measures of time to target: steps-table column -> summary/performance-profile suffix.
MEASURES = {TRAIN_WALL: "seconds", "step": "steps", "samples_seen": "samples", "tokens_seen": "tokens"}
#: Fewest optimizers that must have run on a workload for the performance profile to rank it.
MIN_OPTIMIZERS = 2

SeedStat = Literal["median", "mean"]
Workload = tuple[str, str, str]


# --------------------------------------------------------------------------------- helpers
def _numeric(frame: pd.DataFrame, name: str) -> pd.Series:
    """A measured column as floats (all NaN when a hand-made table lacks it)."""
    if name in frame.columns:
        return pd.to_numeric(frame[name], errors="coerce").astype(float)
    return pd.Series(np.nan, index=frame.index, dtype=float)


def _join_key(*frames: pd.DataFrame) -> str:
    return TRIAL_PATH if all(TRIAL_PATH in f.columns for f in frames) else "trial_id"


def _sign(goal: str) -> float:
    """Multiplier that turns "better" into "smaller" (sort keys, comparisons)."""
    return -1.0 if goal == "max" else 1.0


def prepare_runs(runs: pd.DataFrame, by: str = ENTRY) -> pd.DataFrame:
    """A copy of ``runs`` with the columns the comparison works on.

    Adds ``_opt`` (the optimizer key, column ``by``), ``_val`` (the validation metric used for
    selection, ``best_eval_metric``), ``_final`` (``final_eval_metric``), ``_test``
    (``test_metric``), ``_seed`` (``seed_index``) and ``_key`` (the join key to ``steps``);
    ``tuning_index`` becomes an int and an unrecorded ``search_space`` reads ``'{}'`` (no
    search). A trial that appears twice (a retry appended a row) keeps its last row.
    """
    if runs.empty:
        return runs.copy()
    key = _join_key(runs)
    frame = runs.drop_duplicates(key, keep="last").reset_index(drop=True)
    frame["_key"] = frame[key]
    frame["_opt"] = frame[by].astype(str)
    frame["tuning_index"] = frame["tuning_index"].astype(int)
    space = frame["search_space"] if "search_space" in frame.columns else pd.Series(None, index=frame.index)
    frame["search_space"] = space.astype("object").where(space.notna(), "{}")
    frame["_val"] = _numeric(frame, "best_eval_metric")
    frame["_final"] = _numeric(frame, "final_eval_metric")
    frame["_test"] = _numeric(frame, "test_metric")
    frame["_seed"] = frame["seed_index"]
    return frame


def steps_key(steps: pd.DataFrame, prepared_runs: pd.DataFrame) -> pd.Series | None:
    """The ``_key`` of :func:`prepare_runs` for every ``steps`` row (None when they cannot be
    joined): ``trial_path`` when both tables have it, else through ``trial_id``."""
    if prepared_runs.empty:
        return None
    if TRIAL_PATH in steps.columns and TRIAL_PATH in prepared_runs.columns:
        return steps[TRIAL_PATH].astype("object")
    if "trial_id" in steps.columns and "trial_id" in prepared_runs.columns:
        mapping = prepared_runs.drop_duplicates("trial_id", keep="last").set_index("trial_id")["_key"]
        return steps["trial_id"].map(mapping)
    return None


def _varied_settings(group: pd.DataFrame) -> dict[str, list]:
    """Setting keys whose values differ across the settings of one optimizer (from the
    ``optimizer_settings`` JSON), with their observed values — the grid actually explored when
    no search space was recorded."""
    if "optimizer_settings" not in group.columns:
        return {}
    seen: dict[str, set] = {}
    for text in group.drop_duplicates(SETTING)["optimizer_settings"].dropna():
        try:
            settings = json.loads(text)
        except (TypeError, ValueError):
            continue
        if not isinstance(settings, dict):
            continue
        for k, v in settings.items():
            seen.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    varied = {k: v for k, v in seen.items() if len(v) > 1}
    return {
        k: sorted((json.loads(x) for x in v), key=lambda x: (str(type(x)), x))
        for k, v in sorted(varied.items())
    }


# ------------------------------------------------------------------------------- settings
#: Columns of :func:`setting_table`.
SETTING_COLUMNS = [
    *WORKLOAD, "optimizer", "optimizer_label", "tuning_index", "metric_name", "metric_goal",
    "n_seeds", "n_completed", "n_diverged", "n_failed", "frac_lost",
    "val_metric_mean", "final_eval_metric_mean", "selection_rank", "chosen",
]  # fmt: skip


def setting_table(runs: pd.DataFrame, by: str = ENTRY) -> pd.DataFrame:
    """Every setting of every optimizer on every workload, with its validation score.

    ``val_metric_mean`` is the mean over completed seeds of the validation metric;
    ``frac_lost`` the fraction of seeds that diverged or failed; ``selection_rank`` 1 is the
    setting :func:`best_settings` picks (``chosen``). Ordering: settings without lost seeds first
    (a lost seed is the worst possible value), then by ``frac_lost``, then by the validation mean
    (best first, NaN last), then by label for a stable tie-break.
    """
    frame = prepare_runs(runs, by)
    if frame.empty:
        return pd.DataFrame(columns=SETTING_COLUMNS)
    rows = []
    for (sweep, model, dataset, opt, label, tidx), group in frame.groupby([*WORKLOAD, "_opt", *SETTING], sort=True):
        status = group["status"]
        done = group[status == "completed"]
        rows.append(
            {
                "sweep_name": sweep, "model": model, "dataset": dataset, "optimizer": opt,
                "optimizer_label": label, "tuning_index": int(tidx),
                "metric_name": group["metric_name"].iloc[0], "metric_goal": group["metric_goal"].iloc[0],
                "n_seeds": int(group["_seed"].nunique()), "n_completed": len(done),
                "n_diverged": int((status == "diverged").sum()), "n_failed": int((status == "failed").sum()),
                "frac_lost": int(status.isin(LOST).sum()) / len(group),
                "val_metric_mean": float(done["_val"].mean()) if done["_val"].notna().any() else math.nan,
                "final_eval_metric_mean": float(done["_final"].mean()) if done["_final"].notna().any() else math.nan,
            }
        )  # fmt: skip
    table = pd.DataFrame(rows)
    sign = np.array([_sign(g) for g in table["metric_goal"]])
    table["_score"] = sign * table["val_metric_mean"]
    table["_nan"] = table["_score"].isna()
    table = table.sort_values(
        [*WORKLOAD, "optimizer", "frac_lost", "_nan", "_score", "optimizer_label"], kind="stable"
    )
    table["selection_rank"] = table.groupby([*WORKLOAD, "optimizer"]).cumcount() + 1
    table["chosen"] = table["selection_rank"] == 1
    return table.drop(columns=["_score", "_nan"])[SETTING_COLUMNS].reset_index(drop=True)


#: Columns of :func:`best_settings`.
BEST_COLUMNS = [
    *WORKLOAD, "optimizer", "metric_name", "metric_goal", "rank",
    "best_setting", "tuning_index", "n_settings", "n_settings_lost",
    "val_metric_mean", "final_eval_metric_mean",
    "test_metric_mean", "test_metric_low", "test_metric_high", "test_metric_clipped",
    "n_seeds", "n_completed", "n_diverged", "n_failed",
    "search_space", "settings_varied",
]  # fmt: skip


def best_settings(runs: pd.DataFrame, by: str = ENTRY) -> pd.DataFrame:
    """The best setting of each optimizer on each workload, chosen on validation, reported on test.

    One row per (sweep, model, dataset, optimizer). ``best_setting`` / ``tuning_index`` identify
    the setting picked on the validation metric (see the module docstring: mean over seeds of
    ``best_eval_metric``, a diverged or failed seed counting as the worst possible value);
    ``val_metric_mean`` is its selection score and ``final_eval_metric_mean`` its mean final
    validation metric (the default time-to-target rule uses it). ``test_metric_mean`` /
    ``_low`` / ``_high`` are the mean and 95 % Student-t interval over its completed seeds,
    inside the metric's range by construction (:func:`analysis.paired.range_interval`; bounds
    NaN with fewer than two seeds; clipped, ``test_metric_clipped``, when a seed sits on a bound).
    ``n_seeds`` and ``n_completed`` / ``n_diverged`` / ``n_failed`` describe that setting's
    seeds. ``n_settings`` is the tuning budget used (distinct settings tried),
    ``n_settings_lost`` how many of them lost a seed. ``search_space`` is the recorded search
    space (JSON, ``'{}'`` without tuning) and ``settings_varied`` the setting keys that actually
    differ across the tried settings with their values (JSON), which documents grids too.
    ``rank`` orders the optimizers of a workload by the chosen setting's test metric under the
    same rule (a lost seed is worst possible), 1 = best.

    Args:
        runs: the ``runs`` table.
        by: the column that names an optimizer (default ``optimizer_entry``, the config entry).
    """
    frame = prepare_runs(runs, by)
    settings = setting_table(runs, by)
    if frame.empty or settings.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    chosen = settings[settings["chosen"]].set_index([*WORKLOAD, "optimizer"])
    rows = []
    for (sweep, model, dataset, opt), group in frame.groupby([*WORKLOAD, "_opt"], sort=True):
        pick = chosen.loc[(sweep, model, dataset, opt)]
        mine = group[
            (group["optimizer_label"] == pick["optimizer_label"])
            & (group["tuning_index"] == pick["tuning_index"])
        ]
        test = range_interval(mine.loc[mine["status"] == "completed", "_test"], pick["metric_name"])
        opt_settings = settings[
            (settings["sweep_name"] == sweep) & (settings["model"] == model)
            & (settings["dataset"] == dataset) & (settings["optimizer"] == opt)
        ]  # fmt: skip
        spaces = [
            s for s in group["search_space"].dropna().astype(str) if s.strip() not in ("", "{}", "null")
        ]
        rows.append(
            {
                "sweep_name": sweep, "model": model, "dataset": dataset, "optimizer": opt,
                "metric_name": pick["metric_name"], "metric_goal": pick["metric_goal"],
                "best_setting": pick["optimizer_label"], "tuning_index": int(pick["tuning_index"]),
                "n_settings": len(opt_settings), "n_settings_lost": int((opt_settings["frac_lost"] > 0).sum()),
                "val_metric_mean": pick["val_metric_mean"], "final_eval_metric_mean": pick["final_eval_metric_mean"],
                "test_metric_mean": test.mean, "test_metric_low": test.low, "test_metric_high": test.high,
                "test_metric_clipped": test.clipped,
                "n_seeds": int(pick["n_seeds"]), "n_completed": int(pick["n_completed"]),
                "n_diverged": int(pick["n_diverged"]), "n_failed": int(pick["n_failed"]),
                "search_space": spaces[0] if spaces else "{}",
                "settings_varied": json.dumps(_varied_settings(group), sort_keys=True),
                "_lost": float(pick["frac_lost"]),
            }
        )  # fmt: skip
    table = pd.DataFrame(rows)
    sign = np.array([_sign(g) for g in table["metric_goal"]])
    table["_score"] = sign * table["test_metric_mean"]
    table["_nan"] = table["_score"].isna()
    table = table.sort_values([*WORKLOAD, "_lost", "_nan", "_score", "optimizer"], kind="stable")
    table["rank"] = table.groupby(WORKLOAD).cumcount() + 1
    return table[BEST_COLUMNS].reset_index(drop=True)


# ---------------------------------------------------------------------------- time to target
def default_targets(best: pd.DataFrame) -> dict[Workload, float]:
    """Per workload (sweep, model, dataset), the median over optimizers of their best setting's
    mean final validation metric (:func:`best_settings` ``final_eval_metric_mean``); workloads
    where no optimizer has one get no target."""
    targets: dict[Workload, float] = {}
    if best.empty:
        return targets
    for workload, group in best.groupby(WORKLOAD, sort=True):
        values = pd.to_numeric(group["final_eval_metric_mean"], errors="coerce").dropna()
        if len(values):
            targets[tuple(str(w) for w in workload)] = float(np.median(values))  # type: ignore[assignment]
    return targets


#: Columns of :func:`time_to_target` (one row per trial).
TTT_COLUMNS = [
    *WORKLOAD, "optimizer", "optimizer_label", "tuning_index", "best_setting", "seed", "trial_id",
    "status", "metric_name", "metric_goal", "target", "target_source", "reached",
    *MEASURES,
]  # fmt: skip


def time_to_target(
    steps: pd.DataFrame,
    runs: pd.DataFrame,
    targets: Mapping[tuple[str, str], float] | None = None,
    by: str = ENTRY,
) -> pd.DataFrame:
    """Per trial: when (step, samples, tokens, training wall-clock seconds) ``eval_metric``
    first reached the workload's target.

    Args:
        steps: the ``steps`` table (needs ``step`` and ``eval_metric``; ``wall_time_s`` with
            ``probe_time_s``, ``samples_seen``, ``tokens_seen`` are reported when present).
        runs: the ``runs`` table (workload, optimizer, setting, status, metric goal).
        targets: ``{(model, dataset): value}``, applied in every sweep; other workloads get
            :func:`default_targets` (median over optimizers of the best setting's mean final
            validation metric).
        by: the column that names an optimizer (as in :func:`best_settings`).

    Returns:
        One row per trial (columns ``TTT_COLUMNS``, the training wall-clock as
        ``train_wall_time_s``): ``reached`` is False and the costs NaN when the target was never
        reached (or the workload has no target); ``target_source`` is ``explicit`` or
        ``default``; ``best_setting`` marks the trials of each optimizer's best setting (the
        ones :func:`summarize_time_to_target` aggregates). ``attrs["targets"]`` holds the
        targets used, by (sweep, model, dataset).
    """
    frame = prepare_runs(runs, by)
    if frame.empty:
        out = pd.DataFrame(columns=TTT_COLUMNS)
        out.attrs["targets"] = {}
        return out
    best = best_settings(runs, by)
    explicit = {(str(m), str(d)): float(v) for (m, d), v in (targets or {}).items()}
    used = default_targets(best)
    workloads = {tuple(str(x) for x in w) for w in frame[WORKLOAD].itertuples(index=False)}
    used.update({w: explicit[w[1:]] for w in workloads if w[1:] in explicit})

    meta = frame[["_key", *WORKLOAD, "_opt", *SETTING, "_seed", "status", "metric_name", "metric_goal"]].copy()
    meta["trial_id"] = frame["trial_id"].astype("object")
    keys = list(zip(meta["sweep_name"], meta["model"], meta["dataset"], strict=True))
    meta["target"] = [used.get(w, math.nan) for w in keys]
    meta["target_source"] = [
        "explicit" if w[1:] in explicit else ("default" if w in used else None) for w in keys
    ]
    picks = {(r.sweep_name, r.model, r.dataset, r.optimizer): (r.best_setting, r.tuning_index) for r in best.itertuples()}
    meta["best_setting"] = [
        picks.get((*w, o)) == (lab, int(t))
        for w, o, lab, t in zip(keys, meta["_opt"], meta["optimizer_label"], meta["tuning_index"], strict=True)
    ]

    hits = _first_hits(steps, frame, meta)
    out = meta.merge(hits, on="_key", how="left")
    out["reached"] = out["step"].notna()
    out = out.rename(columns={"_opt": "optimizer", "_seed": "seed"})
    out = out.sort_values([*WORKLOAD, "optimizer", "optimizer_label", "tuning_index", "seed"], kind="stable")
    out = out[TTT_COLUMNS].reset_index(drop=True)
    out.attrs["targets"] = used
    return out


def _first_hits(steps: pd.DataFrame, runs: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """``_key`` → the first logged row whose eval_metric reached the trial's target."""
    cost_cols = list(MEASURES)
    empty = pd.DataFrame(columns=["_key", *cost_cols])
    if steps.empty or not {"step", "eval_metric"} <= set(steps.columns):
        return empty
    keys = steps_key(steps, runs)
    if keys is None:
        return empty
    data = pd.DataFrame({"_key": keys, "step": _numeric(steps, "step")})
    clock = steps.assign(_key=keys.to_numpy()) if "wall_time_s" in steps.columns else None
    data[TRAIN_WALL] = train_wall_time(clock, "_key").to_numpy() if clock is not None else np.nan
    for col in ["eval_metric", "samples_seen", "tokens_seen"]:
        data[col] = _numeric(steps, col)
    data = data[np.isfinite(data["eval_metric"]) & data["step"].notna()]
    # Join on the same key the runs side used (trial_path when both tables have it).
    data = data.merge(meta[["_key", "target", "metric_goal"]], on="_key", how="inner")
    if data.empty:
        return empty
    is_max = data["metric_goal"] == "max"
    hit = np.where(is_max, data["eval_metric"] >= data["target"], data["eval_metric"] <= data["target"])
    data = data[hit & data["target"].notna()]
    if data.empty:
        return empty
    first = data.sort_values(["_key", "step"], kind="stable").drop_duplicates("_key", keep="first")
    return first[["_key", *cost_cols]].reset_index(drop=True)


def _seed_time(values: Iterable[float], stat: SeedStat) -> float:
    """Median (or mean) over seeds, NaN (not reached) counting as ∞."""
    x = np.array([math.inf if (v is None or math.isnan(v)) else float(v) for v in values], dtype=float)
    if x.size == 0:
        return math.inf
    if stat == "mean":
        return float(x.mean()) if np.isfinite(x).all() else math.inf
    if stat == "median":
        # np.median of [a, inf] is inf, of [a, b, inf] is b: a majority must reach the target.
        return float(np.median(x))
    raise ValueError(f"seed_stat must be 'median' or 'mean', not {stat!r}")


def summarize_time_to_target(ttt: pd.DataFrame, seed_stat: SeedStat = "median") -> pd.DataFrame:
    """Aggregate :func:`time_to_target` over the seeds of each optimizer's best setting.

    One row per (sweep, model, dataset, optimizer): ``best_setting``, ``target``,
    ``metric_goal``, ``n_seeds``, ``n_reached``, ``frac_reached``; for each cost measure
    (``steps``, ``seconds``, ``samples``, ``tokens``) ``<m>_mean``, ``<m>_low``, ``<m>_high``,
    ``<m>_clipped`` (mean and 95 % t-interval over the seeds that reached the target, clipped at
    0) and ``t_<m>``, the time the performance profile uses: the ``seed_stat`` over all seeds
    with a miss counting as ∞.
    """
    measures = list(MEASURES.values())
    columns = [
        *WORKLOAD, "optimizer", "best_setting", "metric_name", "metric_goal", "target",
        "n_seeds", "n_reached", "frac_reached",
        *[f"{m}_{s}" for m in measures for s in ("mean", "low", "high", "clipped")],
        *[f"t_{m}" for m in measures],
    ]  # fmt: skip
    if ttt.empty:
        return pd.DataFrame(columns=columns)
    data = ttt[ttt["best_setting"].astype(bool)]
    rows = []
    for (sweep, model, dataset, opt), group in data.groupby([*WORKLOAD, "optimizer"], sort=True):
        reached = group["reached"].astype(bool)
        row: dict[str, object] = {
            "sweep_name": sweep, "model": model, "dataset": dataset, "optimizer": opt,
            "best_setting": group["optimizer_label"].iloc[0], "metric_name": group["metric_name"].iloc[0],
            "metric_goal": group["metric_goal"].iloc[0], "target": group["target"].iloc[0],
            "n_seeds": len(group), "n_reached": int(reached.sum()), "frac_reached": float(reached.mean()),
        }  # fmt: skip
        for col, name in MEASURES.items():
            values = pd.to_numeric(group[col], errors="coerce").astype(float)
            ci = t_interval(values[reached], bounds=NONNEGATIVE)
            row.update({f"{name}_mean": ci.mean, f"{name}_low": ci.low, f"{name}_high": ci.high,
                        f"{name}_clipped": ci.clipped})
            row[f"t_{name}"] = _seed_time(values.where(reached), seed_stat)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------ performance profile
def _summary(ttt: pd.DataFrame, seed_stat: SeedStat) -> pd.DataFrame:
    """Accept either per-trial :func:`time_to_target` rows or their summary."""
    if "reached" in ttt.columns:
        return summarize_time_to_target(ttt, seed_stat)
    return ttt


def performance_ratios(
    ttt: pd.DataFrame, measure: str = "seconds", seed_stat: SeedStat = "median"
) -> pd.DataFrame:
    """``r_{s,w} = t_{s,w} / min_s t_{s,w}``: the workloads of one sweep (rows, a (model,
    dataset) MultiIndex) × optimizers (columns). ∞ where an optimizer missed the target or was
    not run; a workload that no optimizer solved is ∞ for all. Workloads on which fewer than
    :data:`MIN_OPTIMIZERS` optimizers ran are left out and listed in ``attrs["excluded"]``
    (``(model, dataset, reason)``).

    Args:
        ttt: :func:`time_to_target` rows or :func:`summarize_time_to_target` output, of one sweep.
        measure: ``seconds`` (training wall-clock, AlgoPerf's choice), ``steps``, ``samples`` or
            ``tokens`` (hardware-independent alternatives).

    Raises:
        ValueError: an unknown measure, or rows of more than one sweep (never pooled; see
            :func:`performance_profiles`).
    """
    if measure not in MEASURES.values():
        raise ValueError(f"measure must be one of {', '.join(MEASURES.values())}, not {measure!r}")
    summary = _summary(ttt, seed_stat)
    if "sweep_name" in summary.columns and summary["sweep_name"].nunique() > 1:
        raise ValueError(
            "a performance profile never pools sweeps; these rows hold "
            f"{', '.join(sorted(summary['sweep_name'].astype(str).unique()))}: use performance_profiles"
        )
    if summary.empty:
        out = pd.DataFrame()
        out.attrs["excluded"] = []
        return out
    keys = ["model", "dataset"]
    ran = summary.groupby(keys, sort=True)["optimizer"].agg(lambda o: sorted(set(map(str, o))))
    excluded = [
        (m, d, f"only {', '.join(opts)} ran" if opts else "no optimizer ran")
        for (m, d), opts in ran.items() if len(opts) < MIN_OPTIMIZERS
    ]
    ranked = summary.set_index(keys).drop(index=[(m, d) for m, d, _ in excluded]).reset_index()
    if ranked.empty:
        out = pd.DataFrame()
        out.attrs["excluded"] = excluded
        return out
    # Only observed workloads: a pivot over model × dataset would invent the cross product.
    times = ranked.groupby([*keys, "optimizer"], sort=True)[f"t_{measure}"].first().unstack("optimizer")
    times = times.astype(float).fillna(math.inf)
    t = times.to_numpy(dtype=float)
    fastest = t.min(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = t / fastest
    # t == fastest == 0 (reached at the first evaluation with no recorded cost) is a ratio of 1.
    r[(t == 0) & (fastest == 0)] = 1.0
    # A workload nobody solved (fastest = ∞) counts for nobody.
    r[~np.isfinite(fastest[:, 0]), :] = math.inf
    r[np.isnan(r)] = math.inf
    ratios = pd.DataFrame(r, index=times.index, columns=times.columns)
    ratios.columns.name = "optimizer"
    ratios.attrs["excluded"] = excluded
    return ratios


def performance_profile(
    ttt: pd.DataFrame,
    taus: Iterable[float] | None = None,
    measure: str = "seconds",
    seed_stat: SeedStat = "median",
    tau_max: float = TAU_MAX,
) -> pd.DataFrame:
    """AlgoPerf performance profile of one sweep: ``ρ_s(τ)``, the fraction of its ranked
    workloads on which optimizer ``s`` reached the target within ``τ`` times the fastest
    optimizer's time.

    Args:
        ttt: :func:`time_to_target` rows or :func:`summarize_time_to_target` output, of one sweep.
        taus: where to evaluate ρ (default: 1…``tau_max`` on a fine grid plus every ratio in that
            range, so the step function is exact).
        measure: the cost (see :func:`performance_ratios`).
        seed_stat: how seeds aggregate into ``t_{s,w}`` (median by default, see module docs).
        tau_max: the end of the default τ range and of the score.

    Returns:
        Long format: ``optimizer``, ``tau``, ``rho``. ``attrs``: ``ratios`` (the ratio matrix),
        ``scores`` (:func:`performance_profile_scores`), ``excluded`` (workloads not ranked,
        with the reason), ``tau_max``, ``measure``.
    """
    ratios = performance_ratios(ttt, measure, seed_stat)
    attrs = {"ratios": ratios, "scores": performance_profile_scores(ratios, tau_max),
             "excluded": ratios.attrs["excluded"], "tau_max": tau_max, "measure": measure}
    if ratios.empty:
        out = pd.DataFrame(columns=["optimizer", "tau", "rho"])
        out.attrs.update(attrs)
        return out
    if taus is None:
        finite = ratios.to_numpy()[np.isfinite(ratios.to_numpy())]
        grid_ = np.concatenate([np.linspace(1.0, tau_max, 121), finite[finite <= tau_max]])
        taus = np.unique(grid_)
    tau = np.asarray(sorted(float(t) for t in taus), dtype=float)
    rows = []
    for opt in ratios.columns:
        r = ratios[opt].to_numpy(dtype=float)
        rho = (r[None, :] <= tau[:, None]).mean(axis=1)
        rows.append(pd.DataFrame({"optimizer": opt, "tau": tau, "rho": rho}))
    out = pd.concat(rows, ignore_index=True)
    out.attrs.update(attrs)
    return out


def performance_profiles(
    ttt: pd.DataFrame, measure: str = "seconds", seed_stat: SeedStat = "median", tau_max: float = TAU_MAX
) -> dict[str, pd.DataFrame]:
    """:func:`performance_profile` of each sweep in ``ttt`` (``{sweep_name: profile}``, sorted):
    the only way a table of several sweeps gets performance profiles."""
    summary = _summary(ttt, seed_stat)
    if summary.empty:
        return {}
    return {str(sweep): performance_profile(rows, measure=measure, seed_stat=seed_stat, tau_max=tau_max)
            for sweep, rows in summary.groupby("sweep_name", sort=True)}


def performance_profile_scores(ratios: pd.DataFrame, tau_max: float = TAU_MAX) -> pd.DataFrame:
    """Normalised area under each optimizer's performance profile on ``[1, tau_max]``:
    ``(1/(tau_max − 1)) ∫_1^{tau_max} ρ_s(τ) dτ = mean_w max(0, tau_max − r_{s,w}) / (tau_max − 1)``
    (exact for the step function, since every ``r ≥ 1``).

    Columns: ``optimizer``, ``score`` (1 = fastest everywhere), ``n_workloads``, ``n_reached``
    (workloads with a finite ratio), ``n_fastest`` (r = 1), sorted best first.
    """
    if tau_max <= 1:
        raise ValueError(f"tau_max must be greater than 1, not {tau_max}")
    cols = ["optimizer", "score", "n_workloads", "n_reached", "n_fastest"]
    if ratios.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for opt in ratios.columns:
        r = ratios[opt].to_numpy(dtype=float)
        area = np.where(np.isfinite(r), np.clip(tau_max - r, 0.0, tau_max - 1.0), 0.0)
        rows.append(
            {
                "optimizer": opt,
                "score": float(area.mean() / (tau_max - 1.0)),
                "n_workloads": int(r.size),
                "n_reached": int(np.isfinite(r).sum()),
                "n_fastest": int(np.isclose(r, 1.0).sum()),
            }
        )
    return pd.DataFrame(rows, columns=cols).sort_values(
        ["score", "optimizer"], ascending=[False, True], ignore_index=True
    )


# ------------------------------------------------------------------------------- formatting
def _space_text(space: object, varied: object) -> str:
    """The search space, else the settings that varied, compactly."""
    for text in (space, varied):
        if isinstance(text, str) and text.strip() not in ("", "{}", "null"):
            try:
                return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
            except ValueError:
                return text
    return "—"


def _with_note(table: str, clipped: bool, style: str) -> str:
    return f"{table}\n\n{CLIPPED_NOTE}" if clipped and style == "markdown" else table


def format_best_settings(best: pd.DataFrame, style: str = "markdown") -> str:
    """Render :func:`best_settings` (``style``: ``markdown`` or ``plain``)."""
    if best.empty:
        return "(no settings)"
    sweeps = best["sweep_name"].nunique() > 1
    header = [*(["sweep"] if sweeps else []), "model", "dataset", "rank", "optimizer",
              "best setting (validation)", "settings tried", "val", "test (95% CI)", "ok/div/fail", "search space"]
    body = []
    for r in best.itertuples(index=False):
        goal = {"max": "↑", "min": "↓"}.get(r.metric_goal, "")
        body.append([
            *([str(r.sweep_name)] if sweeps else []), str(r.model), str(r.dataset), str(r.rank), str(r.optimizer),
            str(r.best_setting),
            f"{r.n_settings}" + (f" ({r.n_settings_lost} lost a seed)" if r.n_settings_lost else ""),
            f"{format_number(r.val_metric_mean)} {goal}".strip(),
            format_interval(r.test_metric_mean, r.test_metric_low, r.test_metric_high, r.test_metric_clipped),
            f"{r.n_completed}/{r.n_diverged}/{r.n_failed}", _space_text(r.search_space, r.settings_varied),
        ])  # fmt: skip
    return _with_note(grid(header, body, style), bool(best["test_metric_clipped"].any()), style)


def format_time_to_target(summary: pd.DataFrame, style: str = "markdown") -> str:
    """Render :func:`summarize_time_to_target`."""
    if summary.empty:
        return "(no time-to-target data)"
    sweeps = summary["sweep_name"].nunique() > 1
    header = [*(["sweep"] if sweeps else []), "model", "dataset", "target", "optimizer", "best setting",
              "reached", "steps (95% CI)", "seconds (95% CI)", "t (performance profile, s)"]
    body = []
    for r in summary.itertuples(index=False):
        goal = {"max": "≥", "min": "≤"}.get(r.metric_goal, "")
        target = f"{r.metric_name} {goal} {format_number(r.target, 4)}" if r.target == r.target else "—"
        body.append([
            *([str(r.sweep_name)] if sweeps else []), str(r.model), str(r.dataset), target, str(r.optimizer),
            str(r.best_setting), f"{r.n_reached}/{r.n_seeds}",
            format_interval(r.steps_mean, r.steps_low, r.steps_high, r.steps_clipped),
            format_interval(r.seconds_mean, r.seconds_low, r.seconds_high, r.seconds_clipped),
            format_number(r.t_seconds),
        ])  # fmt: skip
    clipped = bool(summary["steps_clipped"].any() or summary["seconds_clipped"].any())
    return _with_note(grid(header, body, style), clipped, style)


def format_performance_profile_scores(scores: pd.DataFrame, style: str = "markdown") -> str:
    """Render :func:`performance_profile_scores`."""
    if scores.empty:
        return "(no performance profile)"
    header = ["optimizer", "score", "workloads reached", "fastest on"]
    body = [
        [str(r.optimizer), f"{r.score:.3f}", f"{r.n_reached}/{r.n_workloads}", str(r.n_fastest)]
        for r in scores.itertuples(index=False)
    ]
    return grid(header, body, style, right={1, 2, 3})


# ----------------------------------------------------------------------------- report section
@dataclass
class ComparisonSection:
    """The report's "Comparisons" section (built when more than one optimizer ran).

    Attributes:
        best: :func:`best_settings`.
        ttt: :func:`time_to_target` per trial (``attrs["targets"]`` holds the targets).
        ttt_summary: :func:`summarize_time_to_target`.
        performance_profiles: :func:`performance_profiles`, one per sweep.
        plot_paths: the performance profiles and best-setting curves written.
        markdown: lines of report.md.
        text: the terminal version (best settings and time to target).
        paired: :func:`analysis.paired.paired_table` (each optimizer against the top-ranked).
        axes: :func:`analysis.tuning.axis_table` (coverage and edge choices per searched axis).
    """

    best: pd.DataFrame
    ttt: pd.DataFrame
    ttt_summary: pd.DataFrame
    performance_profiles: dict[str, pd.DataFrame]
    plot_paths: list[Path] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)
    text: str = ""
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    axes: pd.DataFrame = field(default_factory=pd.DataFrame)


def n_optimizers(runs: pd.DataFrame, by: str = ENTRY) -> int:
    """Distinct optimizers (column ``by``) in ``runs``."""
    return 0 if runs.empty else int(runs[by].nunique())


def _performance_profile_lines(
    sweep: str, perf: pd.DataFrame, png: Path | None, link: Callable[[Path, str], str], several: bool
) -> list[str]:
    """The report lines of one sweep's performance profile: scores, what was not ranked, figure."""
    ratios = perf.attrs["ratios"]
    solved = not ratios.empty and bool(np.isfinite(ratios.to_numpy()).any())
    lines = [f"#### Sweep `{sweep}`", ""] if several else []
    if ratios.empty:
        lines += ["No workload of this sweep had two or more optimizers: nothing to rank.", ""]
    elif not solved:
        lines += ["No optimizer reached a target: no performance profile.", ""]
    else:
        lines += [format_performance_profile_scores(perf.attrs["scores"], "markdown"), ""]
    excluded = perf.attrs["excluded"]
    if excluded:
        lines += ["Not ranked (a lone optimizer is trivially fastest): "
                  + "; ".join(f"{m} on {d} ({why})" for m, d, why in excluded) + ".", ""]
    if png is not None:
        lines += [link(png, f"performance profile, sweep {sweep}"), ""]
    return lines


def comparison_section(
    runs: pd.DataFrame,
    steps: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    targets: Mapping[tuple[str, str], float] | None = None,
    by: str = ENTRY,
    colors: Mapping[str, str] | None = None,
) -> ComparisonSection | None:
    """Tables, performance profiles and curves comparing the optimizers' best settings; None
    with fewer than two optimizers. Plots go to ``<out_dir>/plots/`` and are linked relative to
    ``out_dir``; ``colors`` (entry → colour) is the report's map."""
    if runs.empty or n_optimizers(runs, by) < 2:
        return None
    from analysis.comparison_plots import plot_best_setting_curves, plot_performance_profile
    from analysis.tuning import axis_table, final_rows, format_axis_table, stage_counts, within_budget
    from analysis.tuning_plots import plot_sensitivity

    out = Path(out_dir)
    every = prepare_runs(runs, by)
    runs = final_rows(runs)  # a two-stage sweep is compared on its finalists (analysis.tuning)
    best = best_settings(runs, by)
    # "settings tried" is the whole budget, both stages, not the finalists the ranking saw (nor
    # the edge checks, which are outside the budget).
    budget = every[within_budget(every)]
    tried = budget.drop_duplicates([*WORKLOAD, "_opt", *SETTING]).groupby([*WORKLOAD, "_opt"]).size()
    best["n_settings"] = [int(tried.get((r.sweep_name, r.model, r.dataset, r.optimizer), r.n_settings))
                          for r in best.itertuples()]
    paired = paired_table(prepare_runs(runs, by), best)
    axes = axis_table(every, best)
    sensitivity = plot_sensitivity(every, best, out / "plots")
    ttt = time_to_target(steps, runs, targets, by)
    summary = summarize_time_to_target(ttt)
    profiles = performance_profiles(summary)
    plots: list[Path] = []

    def link(path: Path, alt: str) -> str:
        return f"![{alt}]({Path(os.path.relpath(path, out)).as_posix()})"

    performance_profile_md: list[str] = []
    for sweep, perf in profiles.items():
        png = plot_performance_profile(perf, out / "plots" / f"performance_profile__{sweep}.png", colors, sweep)
        plots += [png] if png is not None else []
        performance_profile_md += _performance_profile_lines(sweep, perf, png, link, len(profiles) > 1)
    curves = plot_best_setting_curves(steps, runs, best, out / "plots", ttt.attrs.get("targets"), by=by, colors=colors)
    plots += curves + sensitivity

    targets_used = ttt.attrs.get("targets", {})
    sources = set(ttt["target_source"].dropna()) if not ttt.empty else set()
    md = [
        "## Comparisons",
        "",
        "Each optimizer's settings (its tuning budget) are compared on the **validation** metric "
        "(mean over seeds of the best validation metric; a diverged or failed seed counts as the "
        "worst possible value, so a setting that lost a seed ranks below every setting that did "
        "not). The chosen setting is reported on the **test** metric: mean and 95 % Student-t "
        "interval over its seeds.",
        "",
        "### Best setting per optimizer",
        "",
        format_best_settings(best, "markdown"),
        "",
        "### Time to target",
        "",
        (
            "Targets: "
            + (
                "explicit"
                if sources == {"explicit"}
                else "the median over optimizers of their best setting's mean final validation "
                "metric (explicit where given)"
            )
            + ". Steps and seconds (training wall-clock, curvature-probe pauses excluded): mean "
            "and 95 % interval over the best setting's seeds that reached the target; `t` (used "
            "by the performance profile) is the median over all its seeds, a seed that never "
            "reached the target counting as ∞."
        ),
        "",
    ]
    if not targets_used:
        md += ["No target: no optimizer has a completed validation metric.", ""]
    else:
        md += [format_time_to_target(summary, "markdown"), ""]
    md += _fairness_lines(paired, best, axes, stage_counts(every), sensitivity, link, format_axis_table)
    md += [
        "### Performance profile",
        "",
        "AlgoPerf's performance profile, one per sweep (sweeps are never pooled): for each "
        "workload the ratio τ = t / t_fastest of an optimizer's time to target to the fastest "
        "optimizer's (a dimensionless ratio of training wall-clock times), and ρ(τ) = the "
        "fraction of the sweep's workloads on which the optimizer was within τ of the fastest. "
        "Only workloads where two or more optimizers ran are ranked. Score: normalised area under "
        f"ρ on τ ∈ [1, {TAU_MAX:g}] (1 = fastest on every workload).",
        "",
        *performance_profile_md,
    ]
    if curves:
        md += [
            "### Best-setting curves",
            "",
            "Validation metric of each optimizer's best setting: mean over seeds, shaded 95 % "
            "t-interval (clipped to the metric's range); dashed: the target.",
            "",
        ]
        md += [item for p in curves for item in (link(p, p.stem.rpartition("__")[2].replace("_", " ")), "")]
    text = "\n\n".join(
        [
            "best setting per optimizer (chosen on validation, test mean [95% CI]):",
            format_best_settings(best, "plain"),
            "time to target:",
            format_time_to_target(summary, "plain"),
            *(["paired per-seed differences of the test metric against the top-ranked optimizer:",
                format_paired(paired, "plain"), *filter(None, separation_lines(paired, best))] if not paired.empty
              else []),
            *(["searched axes (coverage, chosen value, EDGE = chosen at an extreme of the range):",
                format_axis_table(axes, "plain")] if not axes.empty else []),
        ]
    )
    return ComparisonSection(
        best=best, ttt=ttt, ttt_summary=summary, performance_profiles=profiles, plot_paths=plots, markdown=md,
        text=text, paired=paired, axes=axes,
    )


def _fairness_lines(paired: pd.DataFrame, best: pd.DataFrame, axes: pd.DataFrame, stages: pd.DataFrame,
                    sensitivity: list[Path], link: Callable[[Path, str], str],
                    format_axes: Callable[[pd.DataFrame, str], str]) -> list[str]:
    """The report's paired-test and tuning subsections (analysis.paired, analysis.tuning)."""
    from analysis.tuning import BRACKETED, FLAT_BEYOND

    md = ["### Paired per-seed differences", "",
          "Seed index i gives every optimizer the same initial weights and data order, so each "
          "optimizer's chosen setting is compared with the top-ranked one seed by seed: mean of "
          "the per-seed differences of the test metric (optimizer − reference) with its 95 % "
          "interval, the paired Student-t statistic, its two-sided p-value and the Holm-adjusted "
          "p-value over the workload's comparisons. Only seeds both completed are paired.", ""]
    md += [format_paired(paired, "markdown") if not paired.empty else "No pair of optimizers shares two seeds.", ""]
    md += separation_lines(paired, best)
    md += ["### Tuning budget: stages, coverage and edge choices", "",
           "Settings, trials and seeds per optimizer and stage (0: one stage, every setting on every "
           "seed; 1: screening, every setting on one seed; 2: the finalists on fresh seeds, which "
           "alone enter the comparison above; 3: edge checks, outside the budget, below).", "",
           frame_grid(stages, style="markdown"), ""]
    if not axes.empty:
        edges = axes[axes["edge"] == True]  # noqa: E712 - the column holds True/False/None
        md += ["Per searched axis: the values tried (both stages), the fraction of the axis they "
               "cover (log span for a log axis; the share of listed values for a categorical one), "
               "and the chosen value; **EDGE** marks a choice at an end of the searched range (the "
               "first or last listed value; on a range, the extreme value tried within the outer 1/n "
               "of the span, n values tried), which is not an answer: widen the range and run again. "
               "A hard end of the setting's own domain (weight decay 0, preconditioning every step) "
               "is not an edge: nothing lies beyond it. Where the sweep ran edge checks "
               "(`tuning.edge_check`: values beyond a finalist's edge, one typical gap apart, on the "
               "screening seed, outside the equal budget), each is compared on validation with the "
               "chosen setting on that seed, against the chosen setting's seed-to-seed standard "
               "deviation: **bracketed** when every value beyond is worse by more than it, **flat "
               "beyond** when none is better by more than it (both settle the edge: going further "
               "moves the metric by no more than a reseed), **better beyond** otherwise (widen and "
               "run again).", "",
               format_axes(axes, "markdown"), ""]
        open_edges = edges[~edges["edge_check"].isin([BRACKETED, FLAT_BEYOND])]
        listed = ", ".join(f"{r.optimizer} {r.axis}={r.chosen_value}"
                           + (f" ({r.edge_check})" if isinstance(r.edge_check, str) else " (not checked)")
                           for r in edges.itertuples())
        if edges.empty:
            md += ["No chosen setting sits at the edge of its searched range.", ""]
        elif open_edges.empty:
            md += [f"**Edge choices: {len(edges)}**, every one settled by its edge check ({listed}).", ""]
        else:
            md += [f"**Edge choices: {len(edges)}**, {len(open_edges)} not settled ({listed}): "
                   "not an answer until the range is widened and the sweep run again.", ""]
    if sensitivity:
        md += ["Validation metric of every setting tried against each tuned hyperparameter "
               "(hollow: screening seed; filled: finalists; orange cross: edge check; star: chosen).", ""]
        md += [item for p in sensitivity for item in (link(p, p.stem.rpartition("__")[2]), "")]
    return md

