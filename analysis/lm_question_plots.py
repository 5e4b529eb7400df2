"""Figures of the language-model question report (:mod:`analysis.lm_question`).

Drawn like the other report figures: ``matplotlib.figure.Figure`` on an Agg canvas, no pyplot
state. Loss curves show each optimizer entry's best setting: the mean over its completed seeds
with a shaded 95 % Student-t interval (:func:`analysis.comparison_plots.seed_interval_band`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.comparison import prepare_runs
from analysis.comparison_plots import _colors, _figure, seed_interval_band

#: Loss-curve figures: (x column, file stem part, x label).
LOSS_AXES = [
    ("tokens_seen", "tokens", "training tokens"),
    ("wall_time_s", "wall", "wall-clock time (s)"),
]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def plot_loss_curves_lm(runs: pd.DataFrame, steps: pd.DataFrame, table: pd.DataFrame, out_dir: Path,
                        sweep: str) -> list[Path]:
    """Validation loss vs tokens and vs wall-clock of each entry's best setting (``table``:
    :func:`analysis.lm_question.optimizer_table` rows of this sweep). Returns the PNGs written."""
    if steps.empty or table.empty or "eval_loss" not in steps.columns:
        return []
    frame = prepare_runs(runs)
    written: list[Path] = []
    for model, rows in table.groupby("model", sort=True):
        colors = _colors(list(rows["optimizer"]))
        for x, stem, xlabel in LOSS_AXES:
            if x not in steps.columns:
                continue
            fig, ax = _figure()
            drawn = False
            for r in rows.itertuples():
                ids = frame[(frame["_opt"] == r.optimizer) & (frame["optimizer_label"] == r.best_setting)
                            & (frame["status"] == "completed") & (frame["model"] == model)]["trial_id"]
                band = seed_interval_band(steps[steps["trial_id"].isin(ids)], "trial_id", x, "eval_loss")
                if band.empty:
                    continue
                color = colors[r.optimizer]
                ax.plot(band["x"], band["mean"], "-o", ms=3, color=color, label=f"{r.optimizer} ({r.best_setting})")
                ok = np.isfinite(band["low"].astype(float))
                if ok.any():
                    ax.fill_between(band["x"][ok], band["low"][ok].astype(float), band["high"][ok].astype(float),
                                    color=color, alpha=0.18, lw=0)
                drawn = True
            if not drawn:
                continue
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation loss (nats/token)")
            ax.set_title(f"{model}: best setting per optimizer (mean, 95 % interval over seeds)", fontsize="medium")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="x-small")
            path = out_dir / f"lm_loss_vs_{stem}_{_slug(sweep)}_{_slug(model)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=120)
            written.append(path)
    return written


def plot_alpha_map(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Median α per layer type (interquartile bar) for every (model, trained with), with the
    paper's Table 2 values as black diamonds and its other run's MLP α ≈ 2 as grey ones."""
    if table.empty:
        return []
    groups = list(table.groupby(["model", "trained_with"], sort=True))
    types = list(dict.fromkeys(table["layer_type"]))
    fig, ax = _figure()
    width = 0.8 / max(len(groups), 1)
    for i, ((model, entry), rows) in enumerate(groups):
        pos = {t: j for j, t in enumerate(types)}
        x = np.array([pos[t] for t in rows["layer_type"]]) + (i - (len(groups) - 1) / 2) * width
        med = rows["alpha_median"].to_numpy(float)
        err = np.vstack([med - rows["alpha_q25"].to_numpy(float), rows["alpha_q75"].to_numpy(float) - med])
        ax.errorbar(x, med, yerr=np.clip(err, 0, None), fmt="o", ms=5, capsize=3, label=f"{model} ({entry})")
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
    path = out_dir / "lm_alpha_map.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return [path]
