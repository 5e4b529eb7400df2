"""Training curves per workload: one line per optimizer (mean over seeds, min–max band).

Figures are drawn on ``matplotlib.figure.Figure`` with an explicit Agg canvas rather than
through ``pyplot``: no display is needed, nothing global (the user's backend, open figures) is
touched, and figures are freed as soon as they are saved, which matters for large sweeps.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.dataset import TRIAL_PATH

WORKLOAD = ["model", "dataset"]
#: Curves drawn per workload: (y column, x column, file stem, y label, x label); a y label of
#: None means "eval <metric_name>". Log y is used for losses (they span orders of magnitude) and
#: perplexity (LOG_METRICS), never for accuracy.
CURVES = [
    ("train_loss", "step", "train_loss_vs_step", "train loss", "step"),
    ("train_loss", "wall_time_s", "train_loss_vs_wall", "train loss", "wall-clock time (s)"),
    ("eval_metric", "step", "eval_metric_vs_step", None, "step"),
]
LOG_METRICS = {"perplexity"}


def _slug(text: object) -> str:
    """A file-name-safe version of a model or dataset spec (``timm:resnet18`` -> ``timm-resnet18``)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", str(text)).strip("-") or "unnamed"


def workload_prefix(model: object, dataset: object) -> str:
    """File-name prefix of a workload's plots: ``<model>__<dataset>`` (slugged)."""
    return f"{_slug(model)}__{_slug(dataset)}"


def _join_key(steps: pd.DataFrame, runs: pd.DataFrame) -> str:
    # trial_path (added by load_table) is unique across sweeps; trial_id may not be.
    return TRIAL_PATH if TRIAL_PATH in steps.columns and TRIAL_PATH in runs.columns else "trial_id"


def seed_band(frame: pd.DataFrame, key: str, x: str, y: str) -> pd.DataFrame:
    """Align the seeds of one optimizer by step and return mean / min / max of ``y`` per step.

    ``frame`` holds the steps rows of several trials (identified by ``key``). Rows where ``y``
    is missing or not finite (e.g. steps without an evaluation, a loss that overflowed) are
    dropped; a step logged twice by one trial (a resumed run) counts once, as its mean. The
    returned ``x`` column is the mean of ``x`` across seeds at each step, so wall-clock curves
    are aligned by step as well.

    Returns:
        DataFrame indexed by step with columns ``x``, ``mean``, ``min``, ``max``, ``n`` (seeds
        present at that step).
    """
    cols = list(dict.fromkeys([key, "step", x, y]))
    data = frame[cols].copy()
    data[y] = pd.to_numeric(data[y], errors="coerce").astype(float)
    data[x] = pd.to_numeric(data[x], errors="coerce").astype(float)
    data = data[np.isfinite(data[y]) & np.isfinite(data[x])]
    if data.empty:
        return pd.DataFrame(columns=["x", "mean", "min", "max", "n"])
    values = [y] if x == "step" else [x, y]  # step is a group key, not a value, when x is step
    per_trial = data.groupby([key, "step"], sort=False)[values].mean().reset_index()
    by_step = per_trial.groupby("step", sort=True)
    out = pd.DataFrame(
        {
            "mean": by_step[y].mean(),
            "min": by_step[y].min(),
            "max": by_step[y].max(),
            "n": by_step[key].nunique(),
        }
    )
    out.insert(0, "x", out.index.to_numpy(dtype=float) if x == "step" else by_step[x].mean())
    return out


def _plain_log_formatter() -> object:
    """A log-axis formatter that labels the same ticks as matplotlib's but as plain numbers."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            # The parent decides *which* ticks get a label (density); we only change the text.
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(labelOnlyBase=False)


def _draw(
    curves: dict[str, tuple[pd.DataFrame, int]],
    colors: dict[str, object],
    title: str,
    xlabel: str,
    ylabel: str,
    log_y_allowed: bool,
    path: Path,
) -> None:
    # Imported here: matplotlib costs a noticeable fraction of a second, and the CLI imports
    # analysis for commands that never draw.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lowest = np.inf
    for label, (band, n_seeds) in curves.items():
        color = colors[label]
        marker = "o" if len(band) == 1 else None  # a lone point would be invisible as a line
        ax.plot(band["x"], band["mean"], color=color, marker=marker, lw=1.6, label=f"{label} (n={n_seeds})")
        if n_seeds > 1:
            ax.fill_between(band["x"], band["min"], band["max"], color=color, alpha=0.2, lw=0)
        lowest = min(lowest, float(band["min"].min()))
    if log_y_allowed and lowest > 0:
        ax.set_yscale("log")
        # Plain numbers ("0.3") instead of the default 3×10⁻¹: easier to read off a loss.
        ax.yaxis.set_major_formatter(_plain_log_formatter())
        ax.yaxis.set_minor_formatter(_plain_log_formatter())
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="optimizer (mean, min–max over seeds)", fontsize="small", title_fontsize="small")
    fig.savefig(path, dpi=120)


def plot_loss_curves(
    steps: pd.DataFrame,
    runs: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    statuses: Sequence[str] = ("completed",),
) -> list[Path]:
    """Write, per workload (model, dataset), train loss vs step, train loss vs wall-clock and
    eval metric vs step as PNGs in ``out_dir``.

    Each optimizer_label is one line: the mean over its seeds, aligned by step, with a shaded
    min–max band. Only trials whose ``runs`` status is in ``statuses`` are drawn (default:
    completed), because a diverged seed's exploding loss would swamp the mean; the report
    lists the other trials explicitly. Loss axes are logarithmic when every value is positive.
    A plot with nothing to draw (e.g. no evaluation logged) is skipped.

    Args:
        steps: the ``steps`` table (``load_table(path, "steps")``).
        runs: the ``runs`` table, supplying labels, workload and metric name per trial.
        out_dir: created if needed.
        statuses: runs statuses whose trials are plotted.

    Returns:
        The paths of the PNGs written, in workload order.
    """
    need_runs = {"optimizer_label", *WORKLOAD}
    if steps.empty or runs.empty or not need_runs <= set(runs.columns) or "step" not in steps:
        return []
    key = _join_key(steps, runs)
    meta = runs
    if "status" in runs.columns:
        meta = runs[runs["status"].isin(list(statuses))]
    meta_cols = [key, *WORKLOAD, "optimizer_label"]
    if "metric_name" in meta.columns:
        meta_cols.append("metric_name")
    meta = meta[meta_cols].drop_duplicates(key, keep="last")
    # Steps may carry their own copies of these columns in future schemas; the runs row wins.
    steps = steps.drop(columns=[c for c in meta_cols if c != key and c in steps.columns])
    data = steps.merge(meta, on=key, how="inner")
    if data.empty:
        return []

    # One color per optimizer across every figure, so a reader can compare plots at a glance.
    labels = sorted(runs["optimizer_label"].dropna().astype(str).unique())
    palette = [f"C{i % 10}" for i in range(len(labels))]
    colors = dict(zip(labels, palette, strict=True))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (model, dataset), workload in data.groupby(WORKLOAD, sort=True):
        metric = workload["metric_name"].dropna().iloc[0] if "metric_name" in workload else None
        metric = str(metric) if metric is not None and not pd.isna(metric) else "eval metric"
        for y, x, stem, ylabel, xlabel in CURVES:
            if y not in workload.columns or x not in workload.columns:
                continue
            curves = {}
            for label, group in workload.groupby("optimizer_label", sort=True):
                band = seed_band(group, key, x, y)
                if not band.empty:
                    curves[str(label)] = (band, int(group[key].nunique()))
            if not curves:
                continue
            ylab = ylabel or f"eval {metric}"
            log_ok = y == "train_loss" or metric in LOG_METRICS
            path = out / f"{workload_prefix(model, dataset)}__{stem}.png"
            title = f"{model} on {dataset}: {ylab} vs {xlabel.split(' (')[0]}"
            _draw(curves, colors, title, xlabel, ylab, log_ok, path)
            written.append(path)
    return written
