"""What the tuning budget explored: stages, coverage of each search axis, and edge choices.

A comparison under equal budgets is only as good as its search (docs/science/decisions.md,
"fair comparisons"): a setting chosen at the edge of what was searched says the optimum may lie
outside it, and an axis the budget barely touched says the verdict may rest on one missed
setting. This module reads the ``runs`` table only.

- :func:`final_rows`: the rows a comparison uses. In a two-stage sweep (``tuning_stage`` 1
  screening on one seed, 2 finalists on fresh seeds) an entry's screening rows are left out once
  it has finalists: its seed was the one the finalists were selected on, so its results are
  biased upward (the winner's curse).
- :func:`axis_table`: per optimizer and searched axis, the values tried (both stages), the
  fraction of the axis they cover — for a ``low``/``high`` axis the span of the tried values over
  the searched span (in log space for a log axis), for a ``values`` axis the fraction of values
  tried — and the chosen setting's value with an **edge** flag when it sits at an end of the
  searched range (see :func:`_edge`: a listed extreme, or the extreme tried value within the
  outer 1/n of a range; never a hard end of the setting's domain). Unordered axes
  (``normalize: none | frobenius``) have no edge.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from analysis.summary import WORKLOAD
from analysis.tables import cell, grid

#: ``runs.tuning_stage`` of the screening and finalists stages (``bench.config``).
SCREEN, FINAL = 1, 2

#: Columns of :func:`axis_table`.
AXIS_COLUMNS = [
    *WORKLOAD, "optimizer", "axis", "searched", "n_tried", "tried_low", "tried_high", "coverage",
    "chosen_value", "edge",
]  # fmt: skip


def final_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` without the screening rows of the optimizer entries that have finalists rows
    (an entry whose stage 2 has not run yet keeps its screening rows: its only results)."""
    if runs.empty or "tuning_stage" not in runs.columns:
        return runs
    stage = runs["tuning_stage"].astype(int)
    key = runs[[*WORKLOAD, "optimizer_entry"]].astype(str).agg("\0".join, axis=1)
    with_final = set(key[stage == FINAL])
    return runs[~((stage == SCREEN) & key.isin(with_final))]


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _searched(dim: dict[str, Any]) -> str:
    if "values" in dim:
        return "{" + ", ".join(json.dumps(v) for v in dim["values"]) + "}"
    return f"[{dim['low']:g}, {dim['high']:g}]" + (" log" if dim.get("log") else "")


def _coverage(dim: dict[str, Any], tried: list[Any]) -> float:
    if "values" in dim:
        listed = [json.dumps(v) for v in dim["values"]]
        return len({json.dumps(v) for v in tried} & set(listed)) / len(listed)
    nums = [float(v) for v in tried if _numeric(v)]
    if len(nums) < 2:
        return 0.0
    lo, hi = float(dim["low"]), float(dim["high"])
    f = math.log if dim.get("log") else float
    return (f(max(nums)) - f(min(nums))) / (f(hi) - f(lo))


def _edge(dim: dict[str, Any], tried: list[Any], chosen: Any) -> bool | None:
    """Whether ``chosen`` sits at an end of its searched range, so that the optimum may lie
    beyond it (None: an unordered axis, or too few values to say).

    - A ``values`` axis: the smallest or largest listed value.
    - A ``low``/``high`` axis: the smallest (largest) value tried *and* within the outer 1/n of
      the searched span on that side (log span on a log axis), n the number of distinct values
      tried: n quasi-random points leave gaps of about 1/n, so the next point out would fall
      beyond the range. A best value that is merely the largest tried, far inside the range, is
      not at its edge: that gap lies inside what was searched (coverage and the sensitivity
      plots show it).
    - Never at a hard end of the setting's domain, recorded with the search space from the
      settings model (``domain_min``/``domain_max``: weight decay 0, preconditioning every step):
      nothing beyond it can be searched. A chosen 0 at the low end of an axis of non-negative
      values counts as one too (results recorded before the domains were).
    """
    if not _numeric(chosen):
        return None
    if "values" in dim:
        pool = list(dim["values"])
        if not all(_numeric(v) for v in pool) or len(set(pool)) < 2:
            return None
        low_end, high_end = chosen == min(pool), chosen == max(pool)
    else:
        pool = sorted({float(v) for v in tried if _numeric(v)})
        if len(pool) < 2:
            return None
        f = math.log if dim.get("log") else float
        where = (f(chosen) - f(float(dim["low"]))) / (f(float(dim["high"])) - f(float(dim["low"])))
        low_end = chosen == pool[0] and where <= 1 / len(pool)
        high_end = chosen == pool[-1] and where >= 1 - 1 / len(pool)
    hard_low = chosen == dim.get("domain_min") or (chosen == 0 and min(pool) == 0)
    hard_high = chosen == dim.get("domain_max")
    return bool((low_end and not hard_low) or (high_end and not hard_high))


def axis_table(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, optimizer, searched axis); see the module doc. ``runs`` holds every
    stage (prepared: ``_opt``); ``best`` is :func:`analysis.comparison.best_settings` of the
    final rows."""
    rows = []
    for r in best.itertuples():
        space = json.loads(r.search_space or "{}")
        if not space:
            continue
        mine = runs[(runs["sweep_name"] == r.sweep_name) & (runs["model"] == r.model)
                    & (runs["dataset"] == r.dataset) & (runs["_opt"] == r.optimizer)]
        settings = {int(t): json.loads(s) for t, s in zip(mine["tuning_index"], mine["optimizer_settings"], strict=True)}
        chosen = settings.get(int(r.tuning_index), {})
        for axis, dim in sorted(space.items()):
            tried = [s.get(axis) for s in settings.values()]
            nums = [float(v) for v in tried if _numeric(v)]
            rows.append({
                "sweep_name": r.sweep_name, "model": r.model, "dataset": r.dataset, "optimizer": r.optimizer,
                "axis": axis, "searched": _searched(dim), "n_tried": len({json.dumps(v) for v in tried}),
                "tried_low": min(nums) if nums else math.nan, "tried_high": max(nums) if nums else math.nan,
                "coverage": _coverage(dim, tried), "chosen_value": chosen.get(axis),
                "edge": _edge(dim, tried, chosen.get(axis)),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=AXIS_COLUMNS)


def format_axis_table(table: pd.DataFrame, style: str = "markdown") -> str:
    """The axis table for a report; an edge choice reads ``EDGE``."""
    headers = ["sweep", "model", "optimizer", "axis", "searched", "tried", "tried range", "coverage", "chosen", "edge"]
    body = [
        [r.sweep_name, r.model, r.optimizer, r.axis, r.searched, str(r.n_tried),
         f"{cell(r.tried_low)}–{cell(r.tried_high)}" if not math.isnan(r.tried_low) else "—",
         f"{100 * r.coverage:.0f} %", json.dumps(r.chosen_value), {True: "EDGE", False: "no"}.get(r.edge, "—")]
        for r in table.itertuples()
    ]  # fmt: skip
    return grid(headers, body, style)


def stage_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (sweep, optimizer): settings and trials of each stage (0 one stage, 1, 2)."""
    frame = runs.assign(tuning_stage=runs["tuning_stage"].astype(int))
    out = frame.groupby(["sweep_name", "_opt", "tuning_stage"]).agg(
        settings=("tuning_index", "nunique"), trials=("trial_id", "count"), seeds=("seed_index", "nunique")
    )
    return out.reset_index().rename(columns={"_opt": "optimizer"})
