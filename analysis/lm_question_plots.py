"""Figures of the language-model question report (:mod:`analysis.lm_question`).

Drawn with :mod:`analysis.plots`' helpers and the report's one colour per optimizer entry. Loss
curves show each optimizer entry's best setting: the mean over its completed seeds with a shaded
95 % Student-t interval (:func:`analysis.comparison_plots.seed_interval_band`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.clock import TRAIN_WALL, TRAIN_WALL_LABEL, train_wall_time
from analysis.comparison_plots import seed_interval_band
from analysis.dataset import TRIAL_PATH
from analysis.plots import entry_colors, figure, save, setting_legend, tag_entry, workload_prefix
from analysis.summary import metric_range

#: Loss-curve figures: (x column, file stem part, x label).
LOSS_AXES = [
    ("tokens_seen", "tokens", "training tokens"),
    (TRAIN_WALL, "wall", TRAIN_WALL_LABEL),
]


def plot_loss_curves_lm(runs: pd.DataFrame, steps: pd.DataFrame, table: pd.DataFrame, out_dir: Path,
                        sweep: str, colors: Mapping[str, str] | None = None) -> list[Path]:
    """Validation loss vs tokens and vs training wall-clock (probe pauses excluded) of each
    entry's best setting (``table``: :func:`analysis.lm_question.optimizer_table` rows of this
    sweep). Returns the PNGs written."""
    if steps.empty or table.empty or "eval_loss" not in steps.columns:
        return []
    colors = colors if colors is not None else entry_colors(table["optimizer"])
    steps = steps.assign(**{TRAIN_WALL: train_wall_time(steps, TRIAL_PATH)})
    written: list[Path] = []
    for model, rows in table.groupby("model", sort=True):
        for x, stem, xlabel in LOSS_AXES:
            fig = figure()
            ax = fig.add_subplot()
            drawn = False
            for r in rows.itertuples():
                trials = runs[(runs["optimizer_entry"] == r.optimizer) & (runs["optimizer_label"] == r.best_setting)
                              & (runs["status"] == "completed") & (runs["model"] == model)][TRIAL_PATH]
                band = seed_interval_band(steps[steps[TRIAL_PATH].isin(trials)], TRIAL_PATH, x, "eval_loss",
                                          bounds=metric_range("loss"))
                if band.empty:
                    continue
                color = colors[r.optimizer]
                (line,) = ax.plot(band["x"], band["mean"], "-o", ms=3, color=color,
                                  label=setting_legend(r.optimizer, r.best_setting))
                tag_entry(line, r.optimizer)
                ok = np.isfinite(band["low"].astype(float))
                if ok.any():
                    ax.fill_between(band["x"][ok], band["low"][ok].astype(float), band["high"][ok].astype(float),
                                    color=color, alpha=0.18, lw=0)
                drawn = True
            if not drawn:
                continue
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation loss (nats/token)")
            ax.set_title(f"{model} (sweep {sweep}): best setting per optimizer entry\n(mean, 95 % interval over seeds)",
                         fontsize="medium")
            ax.grid(True, alpha=0.3)
            ax.legend(title="best setting", fontsize="x-small", title_fontsize="x-small")
            written.append(save(fig, out_dir / f"lm_loss_vs_{stem}__{workload_prefix(sweep, model)}.png"))
    return written


#: Markers telling models apart in the α map (colours are the optimizer entries').
MODEL_MARKERS = ["o", "s", "^", "v", "P", "X"]


def plot_alpha_map(table: pd.DataFrame, out_dir: Path, colors: Mapping[str, str] | None = None) -> list[Path]:
    """Median α per layer type (interquartile bar) for every (model, trained with) — colour: the
    entry it was trained with, marker: the model — with the paper's Table 2 values as black
    diamonds and its other run's MLP α ≈ 2 as grey ones."""
    if table.empty:
        return []
    colors = colors if colors is not None else entry_colors(table["trained_with"])
    groups = list(table.groupby(["model", "trained_with"], sort=True))
    models = sorted(table["model"].unique())
    types = list(dict.fromkeys(table["layer_type"]))
    fig = figure()
    ax = fig.add_subplot()
    width = 0.8 / max(len(groups), 1)
    for i, ((model, entry), rows) in enumerate(groups):
        pos = {t: j for j, t in enumerate(types)}
        x = np.array([pos[t] for t in rows["layer_type"]]) + (i - (len(groups) - 1) / 2) * width
        med = rows["alpha_median"].to_numpy(float)
        err = np.vstack([med - rows["alpha_q25"].to_numpy(float), rows["alpha_q75"].to_numpy(float) - med])
        marker = MODEL_MARKERS[models.index(model) % len(MODEL_MARKERS)]
        bars = ax.errorbar(x, med, yerr=np.clip(err, 0, None), fmt=marker, ms=5, capsize=3,
                           color=colors.get(str(entry), "0.4"), label=f"{model}, trained with {entry}")
        tag_entry(bars.lines[0], str(entry))
    idx = np.arange(len(types))
    t2 = [table.loc[table["layer_type"] == t, "paper_table2"].iloc[0] for t in types]
    other = [table.loc[table["layer_type"] == t, "paper_other_run"].iloc[0] for t in types]
    ax.plot(idx, t2, "kD", ms=6, label="paper Table 2", fillstyle="none")
    ax.plot(idx, other, "D", color="0.5", ms=6, label="paper other run (MLP ≈ 2)", fillstyle="none")
    ax.set_xticks(idx, types, rotation=30, ha="right")
    ax.set_ylabel("α  (h_k ∝ σ_k^α), median and IQR over layers")
    ax.set_title("α by layer type vs the paper's GPT-2 runs", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    return [save(fig, out_dir / "lm_alpha_map.png")]
