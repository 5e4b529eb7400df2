"""Optimizer comparisons under equal tuning budgets: best setting per optimizer, time to target,
and AlgoPerf-style performance profiles.

Everything here works on the ``runs`` and ``steps`` tables as :func:`analysis.dataset.load_table`
returns them; nothing imports the training code.

Vocabulary
----------
- A *workload* is a (model, dataset) pair; an *optimizer* is the ``optimizer`` column (the
  registry name; ``by=`` selects another column, e.g. ``optimizer_label`` to compare entries
  with custom labels as separate optimizers).
- A *setting* is one point of an optimizer's tuning budget: one ``optimizer_label`` (name plus
  setting values) and ``tuning_index`` (-1 without tuning). Each setting runs with every seed.
  Results written before ``tuning_index`` existed count each ``optimizer_label`` as one setting.

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
``max`` goals, ``<=`` for ``min``) gives the step, samples, tokens and wall-clock seconds to
target of a trial; a trial that never reaches it has ``reached=False`` and NaN costs. A trial that
reached the target and diverged later still reached it (the evaluation happened).

Default target (:func:`default_targets`), AlgoPerf-like: per workload, the **median over
optimizers of their best setting's mean final validation metric**. With the optimizers' own
tuned end results as the yardstick the target is attainable by construction, and the median puts
it where roughly half of the optimizers reach it — hard enough to separate them, easy enough that
the profile is not empty. (A fixed fraction of the best result would depend on the metric's
scale: 90 % of an accuracy and 110 % of a perplexity are not comparable difficulties.) Explicit
targets ``{(model, dataset): value}`` replace the default per workload.

The per-optimizer time used by the profile, ``t_{s,w}``, is the **median over the best setting's
seeds**, a seed that never reached the target counting as ∞ (``seed_stat="mean"``: the mean,
∞ as soon as one seed missed). The median keeps one unlucky seed from erasing an optimizer from
the profile while still requiring a majority of seeds to reach the target (with two seeds, both);
means over the seeds that reached would reward luck (survivorship). The summary also gives the
mean and 95 % interval over the seeds that reached, and the fraction that reached.

Performance profiles (:func:`performance_profile`, :func:`profile_scores`)
--------------------------------------------------------------------------
As in AlgoPerf (Dahl et al., 2023, "Benchmarking Neural Network Training Algorithms"):
``r_{s,w} = t_{s,w} / min_s t_{s,w}`` and ``ρ_s(τ) = |{w : r_{s,w} ≤ τ}| / |W|`` over every
workload ``W`` of the comparison. An optimizer that did not reach the target, or was not run on a
workload, has ``r = ∞`` there; a workload no optimizer solved counts for nobody. The score is the
normalised area under the profile on ``τ ∈ [1, τ_max]``, ``(1/(τ_max − 1)) ∫ ρ_s(τ) dτ``, computed
exactly from the step function, with **τ_max = 4** as in AlgoPerf: 1 means fastest on every
workload, 0 means never within 4× of the fastest.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from analysis.dataset import TRIAL_PATH
from analysis.summary import format_number, t_interval

WORKLOAD = ["model", "dataset"]
SETTING = ["optimizer_label", "tuning_index"]
#: Statuses that count as the worst possible value of a seed.
LOST = ("diverged", "failed")
#: Upper end of the τ range of profile scores (AlgoPerf's value).
TAU_MAX = 4.0
#: Cost measures of time to target: steps-table column -> summary/profile suffix.
MEASURES = {"wall_time_s": "seconds", "step": "steps", "samples_seen": "samples", "tokens_seen": "tokens"}
#: Metrics where smaller is better when a table lacks ``metric_goal``.
MIN_METRICS = {"perplexity", "loss"}

SeedStat = Literal["median", "mean"]


# --------------------------------------------------------------------------------- helpers
def _numeric(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return pd.to_numeric(frame[name], errors="coerce").astype(float)
    return pd.Series(np.nan, index=frame.index, dtype=float)


def _text(frame: pd.DataFrame, name: str, default: str | None) -> pd.Series:
    if name in frame.columns:
        col = frame[name].astype("object")
        return col.where(col.notna(), default)
    return pd.Series(default, index=frame.index, dtype="object")


def _join_key(*frames: pd.DataFrame) -> str:
    return TRIAL_PATH if all(TRIAL_PATH in f.columns for f in frames) else "trial_id"


def _goal_of(metric_goal: object, metric_name: object) -> str:
    if isinstance(metric_goal, str) and metric_goal in ("max", "min"):
        return metric_goal
    return "min" if str(metric_name).lower() in MIN_METRICS else "max"


def _sign(goal: str) -> float:
    """Multiplier that turns "better" into "smaller" (sort keys, comparisons)."""
    return -1.0 if goal == "max" else 1.0


def _first(values: pd.Series) -> object:
    present = values.dropna()
    return present.iloc[0] if len(present) else None


def prepare_runs(runs: pd.DataFrame, by: str = "optimizer") -> pd.DataFrame:
    """A copy of ``runs`` with every column the comparison needs, whatever the table's age.

    Adds or fills: ``_opt`` (the optimizer key, column ``by``; ``optimizer_label`` when absent;
    for ``by="optimizer"`` the config entry ``optimizer_entry`` where recorded),
    ``tuning_index`` (-1), ``search_space`` (``'{}'``), ``status`` (``completed``),
    ``metric_goal`` (from ``metric_name``: perplexity/loss → min, else max), ``_val`` (validation
    metric used for selection: ``best_eval_metric``, else ``final_eval_metric``), ``_final``,
    ``_test``, ``_seed`` (``seed_index``, else ``seed``, else the trial) and ``_key`` (the join
    key to ``steps``). A trial that appears twice (a retry appended a row) keeps its last row.
    """
    if runs.empty:
        return runs.copy()
    frame = runs.copy().reset_index(drop=True)
    key = _join_key(frame)
    if key in frame.columns:
        frame = frame.drop_duplicates(key, keep="last").reset_index(drop=True)
    frame["_key"] = frame[key] if key in frame.columns else frame.index.astype(str)
    for col in WORKLOAD:
        frame[col] = _text(frame, col, "?")
    frame["optimizer_label"] = _text(frame, "optimizer_label", None)
    if frame["optimizer_label"].isna().any():
        fallback = _text(frame, "optimizer", "?")
        frame["optimizer_label"] = frame["optimizer_label"].where(frame["optimizer_label"].notna(), fallback)
    opt = _text(frame, by, None) if by in frame.columns else frame["optimizer_label"]
    if by == "optimizer" and "optimizer_entry" in frame.columns:
        # A config entry is the unit of comparison: two entries of one optimizer (two α
        # policies of Spectral Newton) are two competitors, not one tuning budget.
        entry = _text(frame, "optimizer_entry", None)
        opt = entry.where(entry.notna(), opt)
    frame["_opt"] = opt.where(opt.notna(), frame["optimizer_label"]).astype(str)
    tidx = _numeric(frame, "tuning_index").fillna(-1)
    frame["tuning_index"] = tidx.astype(int)
    frame["search_space"] = _text(frame, "search_space", "{}")
    frame["status"] = _text(frame, "status", "completed")
    frame["metric_name"] = _text(frame, "metric_name", None)
    goal = _text(frame, "metric_goal", None)
    frame["metric_goal"] = [_goal_of(g, n) for g, n in zip(goal, frame["metric_name"], strict=True)]
    best, final = _numeric(frame, "best_eval_metric"), _numeric(frame, "final_eval_metric")
    frame["_val"] = best.where(best.notna(), final)
    frame["_final"] = final.where(final.notna(), best)
    frame["_test"] = _numeric(frame, "test_metric")
    for name in ("seed_index", "seed"):
        if name in frame.columns and frame[name].notna().all():
            frame["_seed"] = frame[name].astype("object")
            break
    else:
        frame["_seed"] = frame["_key"]
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
    n = 0
    for text in group.drop_duplicates(SETTING)["optimizer_settings"].dropna():
        try:
            settings = json.loads(text)
        except (TypeError, ValueError):
            continue
        if not isinstance(settings, dict):
            continue
        n += 1
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


def setting_table(runs: pd.DataFrame, by: str = "optimizer") -> pd.DataFrame:
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
    for (model, dataset, opt, label, tidx), group in frame.groupby([*WORKLOAD, "_opt", *SETTING], sort=True):
        status = group["status"]
        done = group[status == "completed"]
        n_seeds = int(group["_seed"].nunique())
        lost = int(status.isin(LOST).sum())
        goal = str(_first(group["metric_goal"]) or "max")
        rows.append(
            {
                "model": model, "dataset": dataset, "optimizer": opt, "optimizer_label": label,
                "tuning_index": int(tidx), "metric_name": _first(group["metric_name"]), "metric_goal": goal,
                "n_seeds": n_seeds, "n_completed": len(done), "n_diverged": int((status == "diverged").sum()),
                "n_failed": int((status == "failed").sum()), "frac_lost": lost / max(len(group), 1),
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
    "test_metric_mean", "test_metric_low", "test_metric_high",
    "n_seeds", "n_completed", "n_diverged", "n_failed",
    "search_space", "settings_varied",
]  # fmt: skip


def best_settings(runs: pd.DataFrame, by: str = "optimizer") -> pd.DataFrame:
    """The best setting of each optimizer on each workload, chosen on validation, reported on test.

    One row per (model, dataset, optimizer). ``best_setting`` / ``tuning_index`` identify the
    setting picked on the validation metric (see the module docstring: mean over seeds of
    ``best_eval_metric``, a diverged or failed seed counting as the worst possible value);
    ``val_metric_mean`` is its selection score and ``final_eval_metric_mean`` its mean final
    validation metric (the default time-to-target rule uses it). ``test_metric_mean`` /
    ``_low`` / ``_high`` are the mean and 95 % Student-t interval over its completed seeds
    (bounds NaN with fewer than two). ``n_seeds`` and ``n_completed`` / ``n_diverged`` /
    ``n_failed`` describe that setting's seeds. ``n_settings`` is the tuning budget used (distinct
    settings tried), ``n_settings_lost`` how many of them lost a seed. ``search_space`` is the
    recorded search space (JSON, ``'{}'`` without tuning) and ``settings_varied`` the setting
    keys that actually differ across the tried settings with their values (JSON), which
    documents grids too. ``rank`` orders the optimizers of a workload by the chosen setting's
    test metric under the same rule (a lost seed is worst possible), 1 = best.

    Args:
        runs: the ``runs`` table.
        by: the column that names an optimizer (default ``optimizer``, the registry name).
    """
    frame = prepare_runs(runs, by)
    settings = setting_table(runs, by)
    if frame.empty or settings.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    chosen = settings[settings["chosen"]].set_index([*WORKLOAD, "optimizer"])
    rows = []
    for (model, dataset, opt), group in frame.groupby([*WORKLOAD, "_opt"], sort=True):
        pick = chosen.loc[(model, dataset, opt)]
        mine = group[
            (group["optimizer_label"] == pick["optimizer_label"])
            & (group["tuning_index"] == pick["tuning_index"])
        ]
        test = t_interval(mine.loc[mine["status"] == "completed", "_test"])
        opt_settings = settings[
            (settings["model"] == model) & (settings["dataset"] == dataset) & (settings["optimizer"] == opt)
        ]
        spaces = [
            s for s in group["search_space"].dropna().astype(str) if s.strip() not in ("", "{}", "null")
        ]
        rows.append(
            {
                "model": model, "dataset": dataset, "optimizer": opt,
                "metric_name": pick["metric_name"], "metric_goal": pick["metric_goal"],
                "best_setting": pick["optimizer_label"], "tuning_index": int(pick["tuning_index"]),
                "n_settings": len(opt_settings), "n_settings_lost": int((opt_settings["frac_lost"] > 0).sum()),
                "val_metric_mean": pick["val_metric_mean"], "final_eval_metric_mean": pick["final_eval_metric_mean"],
                "test_metric_mean": test.mean, "test_metric_low": test.low, "test_metric_high": test.high,
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
def default_targets(best: pd.DataFrame) -> dict[tuple[str, str], float]:
    """Per workload, the median over optimizers of their best setting's mean final validation
    metric (:func:`best_settings` ``final_eval_metric_mean``); workloads where no optimizer has
    one get no target."""
    targets: dict[tuple[str, str], float] = {}
    if best.empty:
        return targets
    for (model, dataset), group in best.groupby(WORKLOAD, sort=True):
        values = pd.to_numeric(group["final_eval_metric_mean"], errors="coerce").dropna()
        if len(values):
            targets[(str(model), str(dataset))] = float(np.median(values))
    return targets


#: Columns of :func:`time_to_target` (one row per trial).
TTT_COLUMNS = [
    *WORKLOAD, "optimizer", "optimizer_label", "tuning_index", "best_setting", "seed", "trial_id",
    "status", "metric_name", "metric_goal", "target", "target_source", "reached",
    "step", "samples_seen", "tokens_seen", "wall_time_s",
]  # fmt: skip


def time_to_target(
    steps: pd.DataFrame,
    runs: pd.DataFrame,
    targets: Mapping[tuple[str, str], float] | None = None,
    by: str = "optimizer",
) -> pd.DataFrame:
    """Per trial: when (step, samples, tokens, wall-clock seconds) ``eval_metric`` first reached
    the workload's target.

    Args:
        steps: the ``steps`` table (needs ``step`` and ``eval_metric``; ``wall_time_s``,
            ``samples_seen``, ``tokens_seen`` are reported when present).
        runs: the ``runs`` table (workload, optimizer, setting, status, metric goal).
        targets: ``{(model, dataset): value}``; workloads not listed get
            :func:`default_targets` (median over optimizers of the best setting's mean final
            validation metric).
        by: the column that names an optimizer (as in :func:`best_settings`).

    Returns:
        One row per trial (columns ``TTT_COLUMNS``): ``reached`` is False and the costs NaN when
        the target was never reached (or the workload has no target); ``target_source`` is
        ``explicit`` or ``default``; ``best_setting`` marks the trials of each optimizer's best
        setting (the ones :func:`summarize_time_to_target` aggregates). ``attrs["targets"]``
        holds the targets used.
    """
    frame = prepare_runs(runs, by)
    if frame.empty:
        out = pd.DataFrame(columns=TTT_COLUMNS)
        out.attrs["targets"] = {}
        return out
    best = best_settings(runs, by)
    explicit = {(str(m), str(d)): float(v) for (m, d), v in (targets or {}).items()}
    used = {**default_targets(best), **explicit}

    meta = frame[
        ["_key", *WORKLOAD, "_opt", *SETTING, "_seed", "status", "metric_name", "metric_goal"]
    ].copy()
    if "trial_id" in frame.columns:
        meta["trial_id"] = frame["trial_id"].astype("object")
    else:
        meta["trial_id"] = frame["_key"]
    meta["target"] = [used.get((m, d), math.nan) for m, d in zip(meta["model"], meta["dataset"], strict=True)]
    meta["target_source"] = [
        "explicit" if (m, d) in explicit else ("default" if (m, d) in used else None)
        for m, d in zip(meta["model"], meta["dataset"], strict=True)
    ]
    picks = {(r.model, r.dataset, r.optimizer): (r.best_setting, r.tuning_index) for r in best.itertuples()}
    meta["best_setting"] = [
        picks.get((m, d, o)) == (lab, int(t))
        for m, d, o, lab, t in zip(
            meta["model"],
            meta["dataset"],
            meta["_opt"],
            meta["optimizer_label"],
            meta["tuning_index"],
            strict=True,
        )
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
    data = pd.DataFrame({"_key": keys})
    for col in ["eval_metric", *cost_cols]:
        data[col] = _numeric(steps, col)
    data = data[np.isfinite(data["eval_metric"]) & data["step"].notna()]
    # Join on the same key the runs side used (trial_path when both tables have it).
    lookup = meta[["_key", "target", "metric_goal"]]
    data = data.merge(lookup, on="_key", how="inner")
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

    One row per (model, dataset, optimizer): ``best_setting``, ``target``, ``metric_goal``,
    ``n_seeds``, ``n_reached``, ``frac_reached``; for each cost measure (``steps``, ``seconds``,
    ``samples``, ``tokens``) ``<m>_mean``, ``<m>_low``, ``<m>_high`` (mean and 95 % t-interval
    over the seeds that reached the target) and ``t_<m>``, the time the performance profile uses:
    the ``seed_stat`` over all seeds with a miss counting as ∞.
    """
    measures = list(MEASURES.values())
    columns = [
        *WORKLOAD,
        "optimizer",
        "best_setting",
        "metric_name",
        "metric_goal",
        "target",
        "n_seeds",
        "n_reached",
        "frac_reached",
        *[f"{m}_{s}" for m in measures for s in ("mean", "low", "high")],
        *[f"t_{m}" for m in measures],
    ]
    if ttt.empty:
        return pd.DataFrame(columns=columns)
    data = ttt[ttt["best_setting"].astype(bool)] if "best_setting" in ttt.columns else ttt
    rows = []
    for (model, dataset, opt), group in data.groupby([*WORKLOAD, "optimizer"], sort=True):
        reached = group["reached"].astype(bool)
        row: dict[str, object] = {
            "model": model, "dataset": dataset, "optimizer": opt,
            "best_setting": _first(group["optimizer_label"]), "metric_name": _first(group["metric_name"]),
            "metric_goal": _first(group["metric_goal"]), "target": _first(group["target"]),
            "n_seeds": len(group), "n_reached": int(reached.sum()),
            "frac_reached": float(reached.mean()) if len(group) else math.nan,
        }  # fmt: skip
        for col, name in MEASURES.items():
            values = pd.to_numeric(group[col], errors="coerce").astype(float)
            ci = t_interval(values[reached])
            row.update({f"{name}_mean": ci.mean, f"{name}_low": ci.low, f"{name}_high": ci.high})
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
    """``r_{s,w} = t_{s,w} / min_s t_{s,w}``: workloads (rows, a (model, dataset) MultiIndex) ×
    optimizers (columns). ∞ where an optimizer missed the target or was not run; a workload that
    no optimizer solved is ∞ for all.

    Args:
        ttt: :func:`time_to_target` rows or :func:`summarize_time_to_target` output.
        measure: ``seconds`` (wall-clock, AlgoPerf's choice), ``steps``, ``samples`` or
            ``tokens`` (hardware-independent alternatives).
    """
    if measure not in MEASURES.values():
        raise ValueError(f"measure must be one of {', '.join(MEASURES.values())}, not {measure!r}")
    summary = _summary(ttt, seed_stat)
    if summary.empty:
        return pd.DataFrame()
    # Only observed workloads: a pivot over model × dataset would invent the cross product.
    times = summary.groupby([*WORKLOAD, "optimizer"], sort=True)[f"t_{measure}"].first().unstack("optimizer")
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
    return ratios


def performance_profile(
    ttt: pd.DataFrame,
    taus: Iterable[float] | None = None,
    measure: str = "seconds",
    seed_stat: SeedStat = "median",
    tau_max: float = TAU_MAX,
) -> pd.DataFrame:
    """AlgoPerf performance profile: ``ρ_s(τ)``, the fraction of workloads on which optimizer
    ``s`` reached the target within ``τ`` times the fastest optimizer's time.

    Args:
        ttt: :func:`time_to_target` rows or :func:`summarize_time_to_target` output.
        taus: where to evaluate ρ (default: 1…``tau_max`` on a fine grid plus every ratio in that
            range, so the step function is exact).
        measure: the cost (see :func:`performance_ratios`).
        seed_stat: how seeds aggregate into ``t_{s,w}`` (median by default, see module docs).
        tau_max: the end of the default τ range and of the score.

    Returns:
        Long format: ``optimizer``, ``tau``, ``rho``. ``attrs``: ``ratios`` (the ratio matrix),
        ``scores`` (:func:`profile_scores`), ``tau_max``, ``measure``.
    """
    ratios = performance_ratios(ttt, measure, seed_stat)
    if ratios.empty:
        out = pd.DataFrame(columns=["optimizer", "tau", "rho"])
        out.attrs.update(
            ratios=ratios, scores=profile_scores(ratios, tau_max), tau_max=tau_max, measure=measure
        )
        return out
    if taus is None:
        finite = ratios.to_numpy()[np.isfinite(ratios.to_numpy())]
        grid = np.concatenate([np.linspace(1.0, tau_max, 121), finite[finite <= tau_max]])
        taus = np.unique(grid)
    tau = np.asarray(sorted(float(t) for t in taus), dtype=float)
    rows = []
    for opt in ratios.columns:
        r = ratios[opt].to_numpy(dtype=float)
        rho = (r[None, :] <= tau[:, None]).mean(axis=1)
        rows.append(pd.DataFrame({"optimizer": opt, "tau": tau, "rho": rho}))
    out = pd.concat(rows, ignore_index=True)
    out.attrs.update(ratios=ratios, scores=profile_scores(ratios, tau_max), tau_max=tau_max, measure=measure)
    return out


def profile_scores(ratios: pd.DataFrame, tau_max: float = TAU_MAX) -> pd.DataFrame:
    """Normalised area under each optimizer's profile on ``[1, tau_max]``:
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
def _interval_text(mean: float, low: float, high: float, significant: int = 3) -> str:
    """``0.952 [0.941, 0.963]``; just the mean with one seed; ``—`` when missing."""
    if mean is None or not np.isfinite(mean):
        return "—"
    text = format_number(mean, significant)
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return text
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{text} [{low:.{decimals}f}, {high:.{decimals}f}]"


def _grid(header: list[str], body: list[list[str]], style: str) -> str:
    if style == "markdown":
        body = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in body]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(line.rstrip() for line in lines)


def _space_text(space: object, varied: object) -> str:
    """The search space, else the settings that varied, compactly."""
    for text in (space, varied):
        if isinstance(text, str) and text.strip() not in ("", "{}", "null"):
            try:
                return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
            except ValueError:
                return text
    return "—"


def format_best_settings(best: pd.DataFrame, style: str = "markdown") -> str:
    """Render :func:`best_settings` (``style``: ``markdown`` or ``plain``)."""
    if best.empty:
        return "(no settings)"
    header = [
        "model",
        "dataset",
        "rank",
        "optimizer",
        "best setting (validation)",
        "settings tried",
        "val",
        "test (95% CI)",
        "ok/div/fail",
        "search space",
    ]
    body = []
    for r in best.itertuples(index=False):
        goal = {"max": "↑", "min": "↓"}.get(r.metric_goal, "")
        body.append([
            str(r.model), str(r.dataset), str(r.rank), str(r.optimizer), str(r.best_setting),
            f"{r.n_settings}" + (f" ({r.n_settings_lost} lost a seed)" if r.n_settings_lost else ""),
            f"{format_number(r.val_metric_mean)} {goal}".strip(),
            _interval_text(r.test_metric_mean, r.test_metric_low, r.test_metric_high),
            f"{r.n_completed}/{r.n_diverged}/{r.n_failed}", _space_text(r.search_space, r.settings_varied),
        ])  # fmt: skip
    return _grid(header, body, style)


def format_time_to_target(summary: pd.DataFrame, style: str = "markdown") -> str:
    """Render :func:`summarize_time_to_target`."""
    if summary.empty:
        return "(no time-to-target data)"
    header = [
        "model",
        "dataset",
        "target",
        "optimizer",
        "best setting",
        "reached",
        "steps (95% CI)",
        "seconds (95% CI)",
        "t (profile, s)",
    ]
    body = []
    for r in summary.itertuples(index=False):
        goal = {"max": "≥", "min": "≤"}.get(r.metric_goal, "")
        target = (
            f"{r.metric_name or 'metric'} {goal} {format_number(r.target, 4)}"
            if r.target == r.target
            else "—"
        )
        t = r.t_seconds
        body.append([
            str(r.model), str(r.dataset), target, str(r.optimizer), str(r.best_setting),
            f"{r.n_reached}/{r.n_seeds}",
            _interval_text(r.steps_mean, r.steps_low, r.steps_high),
            _interval_text(r.seconds_mean, r.seconds_low, r.seconds_high),
            "∞" if t is not None and math.isinf(t) else format_number(t),
        ])  # fmt: skip
    return _grid(header, body, style)


def format_scores(scores: pd.DataFrame, style: str = "markdown") -> str:
    if scores.empty:
        return "(no profile)"
    header = ["optimizer", "score", "workloads reached", "fastest on"]
    body = [
        [str(r.optimizer), f"{r.score:.3f}", f"{r.n_reached}/{r.n_workloads}", str(r.n_fastest)]
        for r in scores.itertuples(index=False)
    ]
    return _grid(header, body, style)


# ----------------------------------------------------------------------------- report section
@dataclass
class ComparisonSection:
    """The report's "Comparisons" section (built when more than one optimizer ran).

    Attributes:
        best: :func:`best_settings`.
        ttt: :func:`time_to_target` per trial (``attrs["targets"]`` holds the targets).
        ttt_summary: :func:`summarize_time_to_target`.
        profile: :func:`performance_profile` (``attrs["scores"]``, ``attrs["ratios"]``).
        plot_paths: the performance profile and best-setting curves written.
        markdown: lines of report.md.
        text: the terminal version (best settings and time to target).
    """

    best: pd.DataFrame
    ttt: pd.DataFrame
    ttt_summary: pd.DataFrame
    profile: pd.DataFrame
    plot_paths: list[Path] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)
    text: str = ""


def n_optimizers(runs: pd.DataFrame, by: str = "optimizer") -> int:
    frame = prepare_runs(runs, by)
    return 0 if frame.empty else int(frame["_opt"].nunique())


def comparison_section(
    runs: pd.DataFrame,
    steps: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    targets: Mapping[tuple[str, str], float] | None = None,
    by: str = "optimizer",
) -> ComparisonSection | None:
    """Tables, profile and curves comparing the optimizers' best settings; None with fewer than
    two optimizers. Plots go to ``<out_dir>/plots/`` and are linked relative to ``out_dir``."""
    if runs.empty or n_optimizers(runs, by) < 2:
        return None
    from analysis.comparison_plots import plot_best_setting_curves, plot_performance_profile

    out = Path(out_dir)
    best = best_settings(runs, by)
    ttt = time_to_target(steps, runs, targets, by)
    summary = summarize_time_to_target(ttt)
    profile = performance_profile(summary)
    scores = profile.attrs["scores"]
    plots: list[Path] = []
    ratios = profile.attrs["ratios"]
    solved = not ratios.empty and bool(np.isfinite(ratios.to_numpy()).any())
    profile_png = None
    if solved:  # with no target reached anywhere every ρ is 0: nothing worth a figure
        profile_png = plot_performance_profile(profile, out / "plots" / "performance_profile.png")
    if profile_png is not None:
        plots.append(profile_png)
    curves = plot_best_setting_curves(steps, runs, best, out / "plots", ttt.attrs.get("targets"), by=by)
    plots += curves

    def link(path: Path, alt: str) -> str:
        return f"![{alt}]({Path(os.path.relpath(path, out)).as_posix()})"

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
            + ". Steps and seconds: mean and 95 % interval over the best setting's seeds that reached "
            "the target; `t` (used by the profile) is the median over all its seeds, a seed that "
            "never reached the target counting as ∞."
        ),
        "",
    ]
    if not targets_used:
        md += ["No target: no optimizer has a completed validation metric.", ""]
    else:
        md += [format_time_to_target(summary, "markdown"), ""]
    md += [
        "### Performance profile",
        "",
        f"ρ(τ): fraction of workloads on which the optimizer reached the target within τ × the "
        f"fastest optimizer's wall-clock time (AlgoPerf). Score: normalised area under ρ on "
        f"τ ∈ [1, {profile.attrs['tau_max']:g}] (1 = fastest on every workload).",
        "",
        format_scores(scores, "markdown") if solved else "No optimizer reached a target: no profile.",
        "",
    ]
    if profile_png is not None:
        md += [link(profile_png, "performance profile"), ""]
    if curves:
        md += [
            "### Best-setting curves",
            "",
            "Validation metric of each optimizer's best setting: mean over seeds, shaded 95 % "
            "t-interval; dashed: the target.",
            "",
        ]
        md += [item for p in curves for item in (link(p, p.stem.rpartition("__")[2].replace("_", " ")), "")]
    text = "\n\n".join(
        [
            "best setting per optimizer (chosen on validation, test mean [95% CI]):",
            format_best_settings(best, "plain"),
            "time to target:",
            format_time_to_target(summary, "plain"),
        ]
    )
    return ComparisonSection(
        best=best, ttt=ttt, ttt_summary=summary, profile=profile, plot_paths=plots, markdown=md, text=text
    )
