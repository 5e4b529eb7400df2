"""Figures shared by every report: the figure helper, one colour per optimizer entry, legend
labels, and the training curves per workload (one line per setting, min–max band over seeds).

Figures are drawn on ``matplotlib.figure.Figure`` with an explicit Agg canvas rather than
through ``pyplot``: no display is needed, nothing global (the user's backend, open figures) is
touched, and figures are freed as soon as they are saved, which matters for large sweeps.

Colours: a report computes :func:`entry_colors` once over all its runs and hands the same map to
every figure, so an optimizer entry has one colour in every plot of the report; settings of one
entry share its colour and differ by line style. Every line drawn for an entry is tagged with
:func:`tag_entry` (its ``gid``), which lets a test read the colours back from the figures.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.clock import TRAIN_WALL, TRAIN_WALL_LABEL, train_wall_time
from analysis.dataset import TRIAL_PATH
from analysis.summary import WORKLOAD

#: Curves drawn per workload: (y column, x column, file stem, y label, x label); a y label of
#: None means "eval <metric_name>". Log y is used for losses and for metrics where lower is
#: better (perplexity spans orders of magnitude), never for accuracy-like ones.
CURVES = [
    ("train_loss", "step", "train_loss_vs_step", "train loss", "step"),
    ("train_loss", TRAIN_WALL, "train_loss_vs_wall", "train loss", TRAIN_WALL_LABEL),
    ("eval_metric", "step", "eval_metric_vs_step", None, "step"),
]
#: Line styles telling apart the settings of one entry (which share the entry's colour).
LINE_STYLES = ["-", "--", "-.", ":"]
#: Prefix of the ``gid`` that :func:`tag_entry` puts on a line.
ENTRY_GID = "entry:"


def figure(width: float = 7.5, height: float = 4.8) -> Any:
    """A ``Figure`` on an Agg canvas (imported here: matplotlib costs a noticeable fraction of a
    second, and the CLI imports analysis for commands that never draw)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG (creating the directory); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def entry_colors(entries: Iterable[object]) -> dict[str, str]:
    """One colour per optimizer entry (sorted names → tab10, tab20 beyond ten entries, cycling
    beyond twenty), as hex strings."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    names = sorted({str(e) for e in entries})
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    return {name: to_hex(palette[i % len(palette)]) for i, name in enumerate(names)}


def setting_legend(entry: str, setting: str) -> str:
    """The legend text of one setting of an entry: the setting's label when it already names the
    entry (``adamw(lr=0.001)``, or ``muon`` for a setting that is the entry itself), else
    ``entry: setting`` — never the entry twice."""
    return setting if setting.startswith(entry) else f"{entry}: {setting}"


def tag_entry(artist: Any, entry: str) -> None:
    """Mark a line as drawn for ``entry`` (its ``gid``)."""
    artist.set_gid(f"{ENTRY_GID}{entry}")


def _slug(text: object) -> str:
    """A file-name-safe version of a name (``timm:resnet18`` -> ``timm-resnet18``)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", str(text)).strip("-") or "unnamed"


def workload_prefix(*names: object) -> str:
    """File-name prefix of a workload's plots: ``<sweep>__<model>__<dataset>`` (slugged)."""
    return "__".join(_slug(n) for n in names)


def workload_title(sweep: object, model: object, dataset: object) -> str:
    """``model on dataset (sweep <name>)``."""
    return f"{model} on {dataset} (sweep {sweep})"


def join_key(steps: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The column joining ``steps`` to ``runs``: ``trial_path`` (unique across sweeps) when both
    have it, else ``trial_id``."""
    return TRIAL_PATH if TRIAL_PATH in steps.columns and TRIAL_PATH in runs.columns else "trial_id"


def seed_band(frame: pd.DataFrame, key: str, x: str, y: str) -> pd.DataFrame:
    """Align the seeds of one setting by step and return mean / min / max of ``y`` per step.

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


def log_y(ax: Any) -> None:
    """A logarithmic y axis labelled with plain numbers ("0.3") instead of 3×10⁻¹."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_plain_log_formatter())
    ax.yaxis.set_minor_formatter(_plain_log_formatter())


def _draw(
    curves: list[tuple[str, str, pd.DataFrame, int]],
    colors: Mapping[str, str],
    title: str,
    xlabel: str,
    ylabel: str,
    log_y_allowed: bool,
    path: Path,
) -> None:
    """One figure: ``curves`` are (entry, setting label, band, seeds)."""
    fig = figure()
    ax = fig.add_subplot()
    lowest = np.inf
    style_of: dict[str, int] = {}
    for entry, label, band, n_seeds in curves:
        color = colors[entry]
        style = LINE_STYLES[style_of.setdefault(entry, 0) % len(LINE_STYLES)]
        style_of[entry] += 1
        marker = "o" if len(band) == 1 else None  # a lone point would be invisible as a line
        (line,) = ax.plot(band["x"], band["mean"], color=color, ls=style, marker=marker, lw=1.6,
                          label=f"{setting_legend(entry, label)} (n={n_seeds})")
        tag_entry(line, entry)
        if n_seeds > 1:
            ax.fill_between(band["x"], band["min"], band["max"], color=color, alpha=0.2, lw=0)
        lowest = min(lowest, float(band["min"].min()))
    if log_y_allowed and lowest > 0:
        log_y(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="setting (mean, min–max over seeds)", fontsize="small", title_fontsize="small")
    save(fig, path)


def plot_loss_curves(
    steps: pd.DataFrame,
    runs: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    colors: Mapping[str, str] | None = None,
    statuses: Sequence[str] = ("completed",),
) -> list[Path]:
    """Write, per workload (sweep, model, dataset), train loss vs step, train loss vs training
    wall-clock (probe pauses excluded, :mod:`analysis.clock`) and eval metric vs step as PNGs.

    Each setting (``optimizer_label``) is one line, in its entry's colour: the mean over its
    seeds, aligned by step, with a shaded min–max band. Only trials whose ``runs`` status is in
    ``statuses`` are drawn (default: completed), because a diverged seed's exploding loss would
    swamp the mean; the report lists the other trials explicitly. Loss axes are logarithmic when
    every value is positive. A plot with nothing to draw (e.g. no evaluation logged) is skipped.

    Args:
        steps: the ``steps`` table (``load_table(path, "steps")``).
        runs: the ``runs`` table, supplying entry, setting, workload and metric per trial.
        out_dir: created if needed.
        colors: entry → colour (default: :func:`entry_colors` of ``runs``).
        statuses: runs statuses whose trials are plotted.

    Returns:
        The paths of the PNGs written, in workload order.
    """
    if steps.empty or runs.empty:
        return []
    key = join_key(steps, runs)
    colors = colors if colors is not None else entry_colors(runs["optimizer_entry"])
    meta_cols = [key, *WORKLOAD, "optimizer_entry", "optimizer_label", "metric_name", "metric_goal"]
    meta = runs[runs["status"].isin(list(statuses))][meta_cols].drop_duplicates(key, keep="last")
    # Steps may carry their own copies of these columns (consolidated files): the runs row wins.
    steps = steps.drop(columns=[c for c in meta_cols if c != key and c in steps.columns])
    data = steps.merge(meta, on=key, how="inner")
    if data.empty:
        return []
    data[TRAIN_WALL] = train_wall_time(data, key)

    written: list[Path] = []
    for (sweep, model, dataset), workload in data.groupby(WORKLOAD, sort=True):
        metric = str(workload["metric_name"].iloc[0])
        lower_is_better = workload["metric_goal"].iloc[0] == "min"
        for y, x, stem, ylabel, xlabel in CURVES:
            if y not in workload.columns:
                continue
            curves = []
            for (entry, label), group in workload.groupby(["optimizer_entry", "optimizer_label"], sort=True):
                band = seed_band(group, key, x, y)
                if not band.empty:
                    curves.append((str(entry), str(label), band, int(group[key].nunique())))
            if not curves:
                continue
            ylab = ylabel or f"eval {metric}"
            log_ok = y == "train_loss" or lower_is_better
            path = Path(out_dir) / f"{workload_prefix(sweep, model, dataset)}__{stem}.png"
            title = f"{workload_title(sweep, model, dataset)}:\n{ylab} vs {xlabel.split(' (')[0]}"
            _draw(curves, colors, title, xlabel, ylab, log_ok, path)
            written.append(path)
    return written
