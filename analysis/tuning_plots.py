"""Sensitivity figures: each optimizer's validation metric against each hyperparameter it tuned.

One figure per (workload, optimizer) with one panel per searched axis (:mod:`analysis.tuning`):
every setting tried is a point (its mean over completed seeds of the selection metric, the best
validation metric); hollow points are screening-stage results (one seed), filled points
finalists (fresh seeds) or one-stage settings, orange crosses edge checks (values beyond a
finalist's edge, on the screening seed, outside the budget), and a star marks the chosen
setting. A verdict that rests on one lucky or one missed setting shows up as an isolated point
or a curve still falling at an edge of the panel. Log axes are drawn in log scale, categorical axes as evenly
spaced labelled positions; perplexity is drawn on a log scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.plots import figure, log_y, save, workload_prefix, workload_title
from analysis.tuning import EDGE_CHECK, SCREEN


def plot_sensitivity(runs: pd.DataFrame, best: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The figures, written under ``out_dir`` as ``tuning__<workload>__<optimizer>.png``.

    ``runs``: every stage, prepared (``_opt``, ``_val``); ``best``: the best-settings table."""
    paths = []
    for r in best.itertuples():
        space = json.loads(r.search_space or "{}")
        if not space:
            continue
        mine = runs[(runs["sweep_name"] == r.sweep_name) & (runs["model"] == r.model)
                    & (runs["dataset"] == r.dataset) & (runs["_opt"] == r.optimizer)
                    & (runs["status"] == "completed")]
        if mine.empty:
            continue
        axes_names = sorted(space)
        fig = figure(width=3.4 * len(axes_names) + 0.6, height=3.4)
        axs = fig.subplots(1, len(axes_names), squeeze=False)[0]
        points = mine.groupby(["tuning_index", "tuning_stage"]).agg(
            val=("_val", "mean"), settings=("optimizer_settings", "first")).reset_index()
        for ax, axis in zip(axs, axes_names, strict=True):
            dim = space[axis]
            values = [json.loads(s).get(axis) for s in points["settings"]]
            if "values" in dim:
                order = [json.dumps(v) for v in dim["values"]]
                xs = [order.index(json.dumps(v)) for v in values]
                ax.set_xticks(range(len(order)), order, rotation=30)
            else:
                xs = values
                if dim.get("log"):
                    ax.set_xscale("log")
            stage = points["tuning_stage"].astype(int).to_numpy()
            for kind, label in (("screen", "screening (1 seed)"), ("final", "finalists / all seeds"),
                                ("edge", "edge check (screening seed)")):
                sel = [i for i in range(len(xs)) if _kind(stage[i]) == kind and xs[i] is not None]
                if not sel and kind == "edge":
                    continue
                ax.scatter([xs[i] for i in sel], points["val"].iloc[sel], s=28 if kind != "edge" else 40,
                           color="tab:blue" if kind != "edge" else "tab:orange",
                           facecolors="none" if kind == "screen" else None,
                           marker="x" if kind == "edge" else "o", label=label)
            chosen = [i for i, t in enumerate(points["tuning_index"]) if int(t) == int(r.tuning_index)]
            ax.scatter([xs[i] for i in chosen], points["val"].iloc[chosen], marker="*", s=160,
                       color="tab:red", zorder=3, label="chosen")
            ax.set_xlabel(axis)
            if r.metric_name == "perplexity":
                log_y(ax)
        axs[0].set_ylabel(f"validation {r.metric_name} (best over the run)")
        axs[-1].legend(fontsize=7)
        fig.suptitle(f"{r.optimizer}: {workload_title(r.sweep_name, r.model, r.dataset)}", fontsize=9)
        stem = f"tuning__{workload_prefix(r.sweep_name, r.model, r.dataset)}__{workload_prefix(r.optimizer)}"
        paths.append(save(fig, out_dir / f"{stem}.png"))
    return paths


def _kind(stage: int) -> str:
    return "screen" if stage == SCREEN else "edge" if stage == EDGE_CHECK else "final"
