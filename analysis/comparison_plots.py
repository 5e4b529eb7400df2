"""Figures of optimizer comparisons: the performance profile and the best setting's curves.

Drawn like :mod:`analysis.plots`: on ``matplotlib.figure.Figure`` with an Agg canvas, no
``pyplot`` state, figures freed as soon as they are saved.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.comparison import WORKLOAD, prepare_runs, steps_key
from analysis.plots import LOG_METRICS, workload_prefix

#: Best-setting curves per workload: (x column, file stem, x label).
CURVES = [
    ("step", "best_eval_metric_vs_step", "step"),
    ("wall_time_s", "best_eval_metric_vs_wall", "wall-clock time (s)"),
]


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _colors(names: list[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(sorted(names))}


def plot_performance_profile(profile: pd.DataFrame, path: str | os.PathLike[str]) -> Path | None:
    """Step plot of ρ_s(τ) per optimizer (from :func:`analysis.comparison.performance_profile`),
    its score in the legend. Returns the PNG written, or None when there is nothing to draw."""
    if profile.empty:
        return None
    tau_max = float(profile.attrs.get("tau_max", profile["tau"].max()))
    scores = profile.attrs.get("scores")
    score_of = dict(zip(scores["optimizer"], scores["score"], strict=True)) if scores is not None else {}
    measure = profile.attrs.get("measure", "seconds")
    fig, ax = _figure()
    colors = _colors(list(profile["optimizer"].astype(str).unique()))
    styles = ["-", "--", "-.", ":"]  # profiles often coincide; dashes keep each one visible
    for i, (opt, group) in enumerate(profile.groupby("optimizer", sort=True)):
        group = group.sort_values("tau")
        tau = np.concatenate([group["tau"].to_numpy(float), [tau_max]])
        rho = np.concatenate([group["rho"].to_numpy(float), [group["rho"].iloc[-1]]])
        keep = tau <= tau_max
        label = f"{opt} (score {score_of[opt]:.3f})" if opt in score_of else str(opt)
        ax.step(
            tau[keep], rho[keep], where="post", color=colors[str(opt)], ls=styles[i % 4], lw=1.8, label=label
        )
    ax.set_xlim(1.0, tau_max)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"τ (time to target / fastest optimizer's, {measure})")
    ax.set_ylabel("fraction of workloads ρ(τ)")
    n_workloads = len(profile.attrs["ratios"]) if "ratios" in profile.attrs else None
    title = "Performance profile" + (
        f" ({n_workloads} workload{'s' * (n_workloads != 1)})" if n_workloads else ""
    )
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def seed_interval_band(
    frame: pd.DataFrame, key: str, x: str, y: str, confidence: float = 0.95
) -> pd.DataFrame:
    """Align seeds by step: mean of ``y`` with a Student-t interval over seeds at each step.

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
    out = pd.DataFrame({"mean": mean, "low": mean - half, "high": mean + half, "n": n})
    out.insert(0, "x", out.index.to_numpy(dtype=float) if x == "step" else by_step[x].mean())
    return out


def plot_best_setting_curves(
    steps: pd.DataFrame,
    runs: pd.DataFrame,
    best: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    targets: Mapping[tuple[str, str], float] | None = None,
    by: str = "optimizer",
) -> list[Path]:
    """Per workload, the validation metric vs step and vs wall-clock of each optimizer's best
    setting (:func:`analysis.comparison.best_settings`): mean over its completed seeds with a
    shaded 95 % t-interval, the target as a dashed line. Returns the PNGs written."""
    if steps.empty or runs.empty or best.empty or not {"step", "eval_metric"} <= set(steps.columns):
        return []
    frame = prepare_runs(runs, by)
    keys = steps_key(steps, frame)
    if keys is None:
        return []
    picks = {
        (r.model, r.dataset, r.optimizer): (r.best_setting, int(r.tuning_index)) for r in best.itertuples()
    }
    chosen = frame[
        [
            picks.get((m, d, o)) == (lab, int(t)) and s == "completed"
            for m, d, o, lab, t, s in zip(
                frame["model"],
                frame["dataset"],
                frame["_opt"],
                frame["optimizer_label"],
                frame["tuning_index"],
                frame["status"],
                strict=True,
            )
        ]
    ]
    if chosen.empty:
        return []
    meta = chosen[["_key", *WORKLOAD, "_opt", "optimizer_label", "metric_name", "metric_goal"]]
    data = steps.drop(
        columns=[
            c for c in (*WORKLOAD, "optimizer_label", "metric_name", "metric_goal") if c in steps.columns
        ]
    )
    data = data.assign(_key=keys).merge(meta, on="_key", how="inner")
    if data.empty:
        return []
    colors = _colors(list(best["optimizer"].astype(str).unique()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (model, dataset), workload in data.groupby(WORKLOAD, sort=True):
        metric = workload["metric_name"].dropna()
        metric = str(metric.iloc[0]) if len(metric) else "metric"
        target = (targets or {}).get((model, dataset))
        for x, stem, xlabel in CURVES:
            if x not in workload.columns:
                continue
            fig, ax = None, None
            drawn = 0
            for opt, group in workload.groupby("_opt", sort=True):
                band = seed_interval_band(group, "_key", x, "eval_metric")
                if band.empty:
                    continue
                if fig is None:
                    fig, ax = _figure()
                color = colors.get(str(opt), "C0")
                n = int(group["_key"].nunique())
                marker = "o" if len(band) == 1 else None
                ax.plot(
                    band["x"],
                    band["mean"],
                    color=color,
                    marker=marker,
                    lw=1.6,
                    label=f"{opt}: {group['optimizer_label'].iloc[0]} (n={n})",
                )
                if band["low"].notna().any():
                    ax.fill_between(band["x"], band["low"], band["high"], color=color, alpha=0.2, lw=0)
                drawn += 1
            if not drawn:
                continue
            if target is not None and not math.isnan(target):
                ax.axhline(target, color="0.3", ls="--", lw=1.0, label=f"target {target:.4g}")
            if metric in LOG_METRICS and float(workload["eval_metric"].min()) > 0:
                ax.set_yscale("log")
            ax.set_title(f"{model} on {dataset}: best setting, eval {metric} vs {xlabel.split(' (')[0]}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"eval {metric}")
            ax.grid(True, alpha=0.3)
            ax.legend(
                title="optimizer: best setting (mean, 95% CI)", fontsize="small", title_fontsize="small"
            )
            path = out / f"{workload_prefix(model, dataset)}__{stem}.png"
            fig.savefig(path, dpi=120)
            written.append(path)
    return written
