"""Optimizer comparison table: one row per (model, dataset, optimizer_label) over seeds.

Statistics are over *completed* trials only: a diverged or failed trial's "final" metric is
whatever the run held when it stopped, and averaging it in would make the mean meaningless.
Those trials are counted instead (``n_diverged``, ``n_failed``) so an optimizer that often
diverges cannot look good by omission. Standard deviations are sample standard deviations
(``ddof=1``) across seeds, NaN with fewer than two completed seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd

WORKLOAD = ["model", "dataset"]
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


class Interval(NamedTuple):
    """A two-sided confidence interval for a mean; ``low``/``high`` are NaN when n < 2."""

    mean: float
    low: float
    high: float
    n: int


def t_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Student-t confidence interval for the mean of ``values`` (one value per seed).

    NaN values are ignored. With one value the mean is returned and the bounds are NaN (one seed
    says nothing about the spread); with none everything is NaN.
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
    return Interval(mean, mean - half, mean + half, n)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, or all-NaN when an older/partial runs table lacks it."""
    if name in frame.columns:
        return pd.to_numeric(frame[name], errors="coerce").astype(float)
    return pd.Series(np.nan, index=frame.index, dtype=float)


def _first(values: pd.Series) -> object:
    present = values.dropna()
    return present.iloc[0] if len(present) else None


def optimizer_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Summarise the ``runs`` table per (model, dataset, optimizer_label).

    Columns (see ``TABLE_COLUMNS``): the group keys; ``metric_name`` and ``metric_goal`` of the
    workload; ``rank`` within the workload (1 = best); ``n_trials`` (rows), ``n_seeds``
    (distinct seeds), ``n_completed`` / ``n_diverged`` / ``n_failed``; ``<m>_mean`` and
    ``<m>_std`` for final_eval_metric, best_eval_metric, test_metric; ``<m>_mean`` for
    final_train_loss, wall_time_s, median_step_time_s. Statistics use completed trials only.

    Rows are sorted by workload, then best first by ``final_eval_metric_mean`` according to
    ``metric_goal`` (``max``: higher is better, ``min``: lower is better); groups without a
    completed trial come last.
    """
    if runs.empty or not set(GROUP) <= set(runs.columns):
        return pd.DataFrame(columns=TABLE_COLUMNS)

    runs = runs.reset_index(drop=True)  # status is looked up by group index below
    status = runs["status"].astype("object") if "status" in runs.columns else None
    rows = []
    # dropna=False: a trial with a missing key is still a trial and must show up somewhere.
    for key, group in runs.groupby(GROUP, dropna=False, sort=True):
        row: dict[str, object] = dict(zip(GROUP, key, strict=True))
        row["metric_name"] = _first(group["metric_name"]) if "metric_name" in group else None
        row["metric_goal"] = _first(group["metric_goal"]) if "metric_goal" in group else None
        row["n_trials"] = len(group)
        row["n_seeds"] = int(group["seed"].nunique()) if "seed" in group else len(group)
        group_status = status.loc[group.index] if status is not None else None
        for s in STATUSES:
            row[f"n_{s}"] = int((group_status == s).sum()) if group_status is not None else 0
        done = group[group_status == "completed"] if group_status is not None else group
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
    sign = np.where(table["metric_goal"].astype("object") == "max", -1.0, 1.0)
    table["_key"] = sign * table["final_eval_metric_mean"]
    table = table.sort_values([*WORKLOAD, "_key"], na_position="last", kind="stable")
    table["rank"] = table.groupby(WORKLOAD, dropna=False).cumcount() + 1
    return table.drop(columns="_key")[TABLE_COLUMNS].reset_index(drop=True)


# --- formatting --------------------------------------------------------------------------------


def _decimals(value: float, significant: int = 3) -> int:
    """Decimals that show ``significant`` digits of ``value`` (0.952 -> 3, 35.21 -> 1)."""
    if not math.isfinite(value) or value == 0:
        return significant
    return int(min(max(significant - 1 - math.floor(math.log10(abs(value))), 0), 8))


def format_number(value: float, significant: int = 3) -> str:
    """A number with ``significant`` digits; ``—`` for NaN/missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{_decimals(value, significant)}f}"


def format_mean_std(mean: float, std: float, significant: int = 3) -> str:
    """``"0.952 ± 0.004"``; the std uses the mean's decimals so columns line up."""
    if mean is None or math.isnan(mean):
        return "—"
    digits = _decimals(mean, significant)
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = [
        "model", "dataset", "optimizer", "seeds", "ok/div/fail", "metric",
        "final eval", "best eval", "test", "train loss", "wall s", "step s",
    ]  # fmt: skip
    body = []
    for r in table.itertuples(index=False):
        goal = {"max": " ↑", "min": " ↓"}.get(r.metric_goal, "")
        body.append(
            [
                str(r.model),
                str(r.dataset),
                str(r.optimizer_label),
                str(r.n_seeds),
                f"{r.n_completed}/{r.n_diverged}/{r.n_failed}",
                f"{r.metric_name or '?'}{goal}",
                format_mean_std(r.final_eval_metric_mean, r.final_eval_metric_std),
                format_mean_std(r.best_eval_metric_mean, r.best_eval_metric_std),
                format_mean_std(r.test_metric_mean, r.test_metric_std),
                format_number(r.final_train_loss_mean),
                format_number(r.wall_time_s_mean),
                format_number(r.median_step_time_s_mean),
            ]
        )
    return header, body


def format_table(table: pd.DataFrame, style: str = "markdown") -> str:
    """Render an :func:`optimizer_table` result for a terminal or a Markdown file.

    Args:
        table: the output of :func:`optimizer_table`.
        style: ``"markdown"`` (a padded pipe table, readable as plain text too) or ``"plain"``
            (fixed-width columns, no pipes).

    Metrics read ``mean ± std`` over completed seeds (std omitted with one seed, ``—`` when
    nothing completed); ``ok/div/fail`` counts trials per status.
    """
    if style not in ("markdown", "plain"):
        raise ValueError(f"style must be 'markdown' or 'plain', not {style!r}")
    if table.empty:
        return "(no finished trials)"
    header, body = _display_rows(table)
    if style == "markdown":  # a "|" inside a cell (e.g. in a label) would split the column
        body = [[c.replace("|", "\\|") for c in row] for row in body]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    # Text columns left-aligned, numbers right-aligned, as a reader scans them.
    right = [i >= 3 and i != 5 for i in range(len(header))]

    def cell(text: str, i: int) -> str:
        return text.rjust(widths[i]) if right[i] else text.ljust(widths[i])

    if style == "plain":
        lines = ["  ".join(cell(h, i) for i, h in enumerate(header))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(cell(c, i) for i, c in enumerate(row)) for row in body]
        return "\n".join(line.rstrip() for line in lines)

    def md_row(cells: list[str]) -> str:
        return "| " + " | ".join(cell(c, i) for i, c in enumerate(cells)) + " |"

    rule = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if right[i] else ("-" * (w + 2)) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([md_row(header), rule, *(md_row(row) for row in body)])
