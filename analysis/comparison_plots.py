"""Figures of optimizer comparisons: the performance profile and the best setting's curves.

Drawn with :mod:`analysis.plots`' helpers: an Agg ``Figure``, no ``pyplot`` state, and the
report's one colour per optimizer entry.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.clock import TRAIN_WALL, TRAIN_WALL_LABEL, train_wall_time
from analysis.comparison import ENTRY, prepare_runs, steps_key
from analysis.plots import (
    entry_colors,
    figure,
    log_y,
    save,
    setting_legend,
    tag_entry,
    workload_prefix,
    workload_title,
)
from analysis.summary import UNBOUNDED, WORKLOAD, metric_range

#: Best-setting curves per workload: (x column, file stem, x label).
CURVES = [
    ("step", "best_eval_metric_vs_step", "step"),
    (TRAIN_WALL, "best_eval_metric_vs_wall", TRAIN_WALL_LABEL),
]
#: The performance profile's x axis: what τ is.
TAU_LABEL = "τ = time to target ÷ fastest optimizer's time to target (ratio)"


def plot_performance_profile(
    perf: pd.DataFrame,
    path: str | os.PathLike[str],
    colors: Mapping[str, str] | None = None,
    sweep: str | None = None,
) -> Path | None:
    """Step plot of ρ_s(τ) per optimizer (one sweep's :func:`analysis.comparison.performance_profile`),
    its score in the legend. Returns the PNG written, or None when there is nothing to draw (no
    ranked workload, or no optimizer reached a target: every ρ is 0)."""
    ratios = perf.attrs.get("ratios", pd.DataFrame())
    if perf.empty or ratios.empty or not np.isfinite(ratios.to_numpy()).any():
        return None
    tau_max = float(perf.attrs["tau_max"])
    scores = perf.attrs["scores"]
    score_of = dict(zip(scores["optimizer"], scores["score"], strict=True))
    measure = perf.attrs["measure"]
    colors = colors if colors is not None else entry_colors(perf["optimizer"])
    fig = figure()
    ax = fig.add_subplot()
    styles = ["-", "--", "-.", ":"]  # profiles often coincide; dashes keep each one visible
    for i, (opt, group) in enumerate(perf.groupby("optimizer", sort=True)):
        group = group.sort_values("tau")
        tau = np.concatenate([group["tau"].to_numpy(float), [tau_max]])
        rho = np.concatenate([group["rho"].to_numpy(float), [group["rho"].iloc[-1]]])
        keep = tau <= tau_max
        (line,) = ax.step(tau[keep], rho[keep], where="post", color=colors[str(opt)], ls=styles[i % 4], lw=1.8,
                          label=f"{opt} (score {score_of[opt]:.3f})")
        tag_entry(line, str(opt))
    ax.set_xlim(1.0, tau_max)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(TAU_LABEL if measure == "seconds" else f"{TAU_LABEL}, in {measure}")
    ax.set_ylabel("fraction of workloads ρ(τ)")
    n = len(ratios)
    ax.set_title(f"Performance profile{f' of sweep {sweep}' if sweep else ''} ({n} workload{'s' * (n != 1)})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return save(fig, path)


def seed_interval_band(
    frame: pd.DataFrame, key: str, x: str, y: str, confidence: float = 0.95,
    bounds: tuple[float, float] = UNBOUNDED,
) -> pd.DataFrame:
    """Align seeds by step: mean of ``y`` with a Student-t interval over seeds at each step,
    clipped to ``bounds`` (the range ``y`` can take).

    ``x`` is averaged across seeds at each step (so wall-clock curves are aligned by step too).
    Bounds are NaN where fewer than two seeds have a value.

    Returns:
        DataFrame indexed by step with ``x``, ``mean``, ``low``, ``high``, ``n``.
    """
    from scipy import stats

    cols = list(dict.fromkeys([key, "step", x, y]))
    data = frame[cols].copy()
    for c in {x, y, "step"}:
        data[c] = pd.to_numeric(data[c], errors="coerce").astype(float)
    data = data[np.isfinite(data[y]) & np.isfinite(data[x])]
    if data.empty:
        return pd.DataFrame(columns=["x", "mean", "low", "high", "n"])
    values = [y] if x == "step" else [x, y]
    per_trial = data.groupby([key, "step"], sort=False)[values].mean().reset_index()
    by_step = per_trial.groupby("step", sort=True)
    mean, std, n = by_step[y].mean(), by_step[y].std(ddof=1), by_step[y].count()
    half = pd.Series(np.nan, index=mean.index)
    ok = n > 1
    half[ok] = stats.t.ppf(0.5 + confidence / 2, df=n[ok] - 1) * std[ok] / np.sqrt(n[ok])
    low, high = (mean - half).clip(lower=bounds[0]), (mean + half).clip(upper=bounds[1])
    out = pd.DataFrame({"mean": mean, "low": low, "high": high, "n": n})
    out.insert(0, "x", out.index.to_numpy(dtype=float) if x == "step" else by_step[x].mean())
    return out


def plot_best_setting_curves(
    steps: pd.DataFrame,
    runs: pd.DataFrame,
    best: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    targets: Mapping[tuple[str, str, str], float] | None = None,
    by: str = ENTRY,
    colors: Mapping[str, str] | None = None,
) -> list[Path]:
    """Per workload, the validation metric vs step and vs training wall-clock (probe pauses
    excluded) of each optimizer's best setting (:func:`analysis.comparison.best_settings`): mean
    over its completed seeds with a shaded 95 % t-interval, the target (keyed by (sweep, model,
    dataset)) as a dashed line. Returns the PNGs written."""
    if steps.empty or runs.empty or best.empty or not {"step", "eval_metric"} <= set(steps.columns):
        return []
    frame = prepare_runs(runs, by)
    keys = steps_key(steps, frame)
    if keys is None:
        return []
    picks = {(*w, o): (lab, int(t)) for *w, o, lab, t in
             best[[*WORKLOAD, "optimizer", "best_setting", "tuning_index"]].itertuples(index=False)}
    chosen = frame[[
        picks.get((*w, o)) == (lab, int(t)) and s == "completed"
        for *w, o, lab, t, s in frame[[*WORKLOAD, "_opt", "optimizer_label", "tuning_index", "status"]].itertuples(index=False)
    ]]  # fmt: skip
    if chosen.empty:
        return []
    meta = chosen[["_key", *WORKLOAD, "_opt", "optimizer_label", "metric_name", "metric_goal"]]
    data = steps.drop(columns=[c for c in meta.columns if c in steps.columns]).assign(_key=keys.to_numpy())
    data[TRAIN_WALL] = train_wall_time(data, "_key") if "wall_time_s" in data.columns else np.nan
    data = data.merge(meta, on="_key", how="inner")
    if data.empty:
        return []
    colors = colors if colors is not None else entry_colors(best["optimizer"])
    written: list[Path] = []
    for (sweep, model, dataset), workload in data.groupby(WORKLOAD, sort=True):
        metric = str(workload["metric_name"].iloc[0])
        bounds = metric_range(metric)
        target = (targets or {}).get((sweep, model, dataset))
        for x, stem, xlabel in CURVES:
            fig, ax, drawn = None, None, 0
            for opt, group in workload.groupby("_opt", sort=True):
                band = seed_interval_band(group, "_key", x, "eval_metric", bounds=bounds)
                if band.empty:
                    continue
                if fig is None:
                    fig = figure()
                    ax = fig.add_subplot()
                color = colors[str(opt)]
                n = int(group["_key"].nunique())
                marker = "o" if len(band) == 1 else None
                (line,) = ax.plot(band["x"], band["mean"], color=color, marker=marker, lw=1.6,
                                  label=f"{setting_legend(str(opt), str(group['optimizer_label'].iloc[0]))} (n={n})")
                tag_entry(line, str(opt))
                if band["low"].notna().any():
                    ax.fill_between(band["x"], band["low"], band["high"], color=color, alpha=0.2, lw=0)
                drawn += 1
            if not drawn:
                continue
            if target is not None and not math.isnan(target):
                ax.axhline(target, color="0.3", ls="--", lw=1.0, label=f"target {target:.4g}")
            if workload["metric_goal"].iloc[0] == "min" and float(workload["eval_metric"].min()) > 0:
                log_y(ax)
            ax.set_title(f"{workload_title(sweep, model, dataset)}:\nbest setting, eval {metric} vs "
                         f"{xlabel.split(' (')[0]}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"eval {metric}")
            ax.grid(True, alpha=0.3)
            ax.legend(title="best setting (mean, 95% CI over seeds)", fontsize="small", title_fontsize="small")
            written.append(save(fig, Path(out_dir) / f"{workload_prefix(sweep, model, dataset)}__{stem}.png"))
    return written
