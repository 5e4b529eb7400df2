"""Optimizer comparison table: one row per (sweep, model, dataset, optimizer_label) over seeds,
and the statistics every table of the analysis shares (Student-t intervals, metric ranges).

Statistics are over *completed* trials only: a diverged or failed trial's "final" metric is
whatever the run held when it stopped, and averaging it in would make the mean meaningless.
Those trials are counted instead (``n_diverged``, ``n_failed``) so an optimizer that often
diverges cannot look good by omission. Standard deviations are sample standard deviations
(``ddof=1``) across seeds, NaN with fewer than two completed seeds.

A *workload* is a (sweep, model, dataset): two sweeps of the same model and data ran under
different budgets, seeds and machines, so their trials are never pooled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.tables import format_mean_std, format_number, grid

WORKLOAD = ["sweep_name", "model", "dataset"]
GROUP = [*WORKLOAD, "optimizer_label"]

#: Metrics reported as mean and std over seeds.
MEAN_STD = ["final_eval_metric", "best_eval_metric", "test_metric"]
#: Metrics reported as a mean only (costs and losses, where the spread is rarely decisive).
MEAN_ONLY = ["final_train_loss", "wall_time_s", "median_step_time_s"]
STATUSES = ["completed", "diverged", "failed"]

#: Columns of :func:`optimizer_table`, in order.
TABLE_COLUMNS = [
    *GROUP,
    "metric_name",
    "metric_goal",
    "rank",
    "n_trials",
    "n_seeds",
    *[f"n_{s}" for s in STATUSES],
    *[f"{m}_{stat}" for m in MEAN_STD for stat in ("mean", "std")],
    *[f"{m}_mean" for m in MEAN_ONLY],
]


#: The values each metric (``runs.metric_name``) can take: an interval is clipped to them.
METRIC_RANGES = {"accuracy": (0.0, 1.0), "perplexity": (1.0, math.inf), "loss": (0.0, math.inf)}
#: The range of a cost (seconds, steps, samples, tokens).
NONNEGATIVE = (0.0, math.inf)
UNBOUNDED = (-math.inf, math.inf)


def metric_range(metric_name: object) -> tuple[float, float]:
    """The range of a metric named in ``runs.metric_name``; unbounded for an unknown name."""
    return METRIC_RANGES.get(str(metric_name), UNBOUNDED)


class Interval(NamedTuple):
    """A two-sided confidence interval for a mean; ``low``/``high`` are NaN when n < 2;
    ``clipped`` says a bound was moved to the range the quantity can take."""

    mean: float
    low: float
    high: float
    n: int
    clipped: bool = False


def t_interval(
    values: Iterable[float], confidence: float = 0.95, bounds: tuple[float, float] = UNBOUNDED
) -> Interval:
    """Student-t confidence interval for the mean of ``values`` (one value per seed).

    NaN values are ignored. With one value the mean is returned and the bounds are NaN (one seed
    says nothing about the spread); with none everything is NaN. ``bounds`` is the range of the
    quantity (:func:`metric_range`, :data:`NONNEGATIVE`): mean ± t·s/√n can reach past it with
    few seeds (two accuracies of 0.9 and 1.0 give an upper bound of 1.59), and an interval is a
    statement about where the mean can be, so the bounds are clipped and ``clipped`` set; reports
    say so below the table (:data:`analysis.tables.CLIPPED_NOTE`).
    """
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    # scipy is always installed (scikit-learn, a declared dependency, requires it); imported
    # lazily so loading the package stays cheap.
    from scipy import stats

    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    low, high = max(mean - half, bounds[0]), min(mean + half, bounds[1])
    return Interval(mean, low, high, n, clipped=(low, high) != (mean - half, mean + half))


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A measured column, all-NaN when a table lacks it (a hand-made table may omit what was not
    measured; the required columns are checked when files are read)."""
    if name in frame.columns:
        return pd.to_numeric(frame[name], errors="coerce").astype(float)
    return pd.Series(np.nan, index=frame.index, dtype=float)


def optimizer_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Summarise the ``runs`` table per (sweep, model, dataset, optimizer_label).

    Columns (see ``TABLE_COLUMNS``): the group keys; ``metric_name`` and ``metric_goal`` of the
    workload; ``rank`` within the workload (1 = best); ``n_trials`` (rows), ``n_seeds``
    (distinct seeds), ``n_completed`` / ``n_diverged`` / ``n_failed``; ``<m>_mean`` and
    ``<m>_std`` for final_eval_metric, best_eval_metric, test_metric; ``<m>_mean`` for
    final_train_loss, wall_time_s, median_step_time_s. Statistics use completed trials only.

    Rows are sorted by workload, then best first by ``final_eval_metric_mean`` according to
    ``metric_goal`` (``max``: higher is better, ``min``: lower is better); groups without a
    completed trial come last.
    """
    if runs.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    rows = []
    for key, group in runs.groupby(GROUP, sort=True):
        row: dict[str, object] = dict(zip(GROUP, key, strict=True))
        row["metric_name"] = group["metric_name"].iloc[0]
        row["metric_goal"] = group["metric_goal"].iloc[0]
        row["n_trials"] = len(group)
        row["n_seeds"] = int(group["seed_index"].nunique())
        for s in STATUSES:
            row[f"n_{s}"] = int((group["status"] == s).sum())
        done = group[group["status"] == "completed"]
        for m in MEAN_STD:
            values = _column(done, m).dropna()
            row[f"{m}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        for m in MEAN_ONLY:
            values = _column(done, m).dropna()
            row[f"{m}_mean"] = float(values.mean()) if len(values) else math.nan
        rows.append(row)

    table = pd.DataFrame(rows)
    # Sort key: the metric with its sign flipped for "max" goals, so ascending means better.
    sign = np.where(table["metric_goal"] == "max", -1.0, 1.0)
    table["_key"] = sign * table["final_eval_metric_mean"]
    table = table.sort_values([*WORKLOAD, "_key"], na_position="last", kind="stable")
    table["rank"] = table.groupby(WORKLOAD).cumcount() + 1
    return table.drop(columns="_key")[TABLE_COLUMNS].reset_index(drop=True)


# --- formatting --------------------------------------------------------------------------------


def format_table(table: pd.DataFrame, style: str = "markdown") -> str:
    """Render an :func:`optimizer_table` result for a Markdown file or a terminal
    (:func:`analysis.tables.grid` styles).

    Metrics read ``mean ± std`` over completed seeds (std omitted with one seed, ``—`` when
    nothing completed); ``ok/div/fail`` counts trials per status. The sweep column appears when
    the table holds more than one sweep.
    """
    if table.empty:
        return "(no finished trials)"
    sweeps = table["sweep_name"].nunique() > 1
    header = [
        *(["sweep"] if sweeps else []), "model", "dataset", "optimizer", "seeds", "ok/div/fail", "metric",
        "final eval", "best eval", "test", "train loss", "wall s", "step s",
    ]  # fmt: skip
    body = []
    for r in table.itertuples(index=False):
        goal = {"max": " ↑", "min": " ↓"}.get(r.metric_goal, "")
        body.append(
            [
                *([str(r.sweep_name)] if sweeps else []),
                str(r.model),
                str(r.dataset),
                str(r.optimizer_label),
                str(r.n_seeds),
                f"{r.n_completed}/{r.n_diverged}/{r.n_failed}",
                f"{r.metric_name}{goal}",
                format_mean_std(r.final_eval_metric_mean, r.final_eval_metric_std),
                format_mean_std(r.best_eval_metric_mean, r.best_eval_metric_std),
                format_mean_std(r.test_metric_mean, r.test_metric_std),
                format_number(r.final_train_loss_mean),
                format_number(r.wall_time_s_mean),
                format_number(r.median_step_time_s_mean),
            ]
        )
    # Text columns left-aligned, numbers right-aligned, as a reader scans them.
    first_number = header.index("seeds")
    right = {i for i in range(first_number, len(header)) if header[i] != "metric"}
    return grid(header, body, style, right)
