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
- :func:`beyond_edge`: with ``tuning.edge_check: k`` the sweep driver screens, for each
  finalist and each numeric axis at an edge, k values beyond it (steps of one typical gap: 1/n
  of a range's span, a list's outermost step), on the screening seed and outside the equal
  budget (``tuning_stage`` 3). The axis table then says whether the edge is **bracketed**
  (every value beyond scored worse on validation than the chosen one on that seed, by more than
  a reseed moves it), **flat beyond** (none better by more than that: going further cannot
  change the verdict by more than noise) or **better beyond** (widen the range and run again).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from analysis.summary import WORKLOAD
from analysis.tables import cell, grid

#: ``runs.tuning_stage`` of the screening, finalists and edge-check stages (``bench.config``).
SCREEN, FINAL, EDGE_CHECK = 1, 2, 3

#: :func:`axis_table`'s ``edge_check`` verdicts on an edge choice whose values beyond were
#: screened (:func:`_edge_check`); the first two settle the edge, the last asks for a wider range.
BRACKETED, FLAT_BEYOND, BETTER_BEYOND = "bracketed", "flat beyond", "better beyond"

#: Columns of :func:`axis_table`.
AXIS_COLUMNS = [
    *WORKLOAD, "optimizer", "axis", "searched", "n_tried", "tried_low", "tried_high", "coverage",
    "chosen_value", "edge", "edge_check", "beyond",
]  # fmt: skip


def final_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` without the screening rows of the optimizer entries that have finalists rows
    (an entry whose stage 2 has not run yet keeps its screening rows: its only results), and
    without edge-check rows, which are outside the equal budget and never compared."""
    if runs.empty or "tuning_stage" not in runs.columns:
        return runs
    stage = runs["tuning_stage"].astype(int)
    key = runs[[*WORKLOAD, "optimizer_entry"]].astype(str).agg("\0".join, axis=1)
    with_final = set(key[stage == FINAL])
    return runs[~((stage == SCREEN) & key.isin(with_final)) & within_budget(runs)]


def within_budget(runs: pd.DataFrame) -> pd.Series:
    """Which rows belong to the equal tuning budget (every stage but the edge checks)."""
    if "tuning_stage" not in runs.columns:
        return pd.Series(True, index=runs.index)
    return runs["tuning_stage"].astype(int) != EDGE_CHECK


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


def edge_side(dim: dict[str, Any], tried: list[Any], chosen: Any) -> str | None:
    """Which end of its searched range ``chosen`` sits at, so that the optimum may lie beyond it:
    ``"low"``, ``"high"``, ``""`` (neither) or None (an unordered axis, or too few values to say).

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
        where = _unit(dim, chosen)
        low_end = chosen == pool[0] and where <= 1 / len(pool)
        high_end = chosen == pool[-1] and where >= 1 - 1 / len(pool)
    hard_low = chosen == dim.get("domain_min") or (chosen == 0 and min(pool) == 0)
    hard_high = chosen == dim.get("domain_max")
    return "low" if low_end and not hard_low else "high" if high_end and not hard_high else ""


def _edge(dim: dict[str, Any], tried: list[Any], chosen: Any) -> bool | None:
    """Whether ``chosen`` sits at an end of its searched range (:func:`edge_side`)."""
    side = edge_side(dim, tried, chosen)
    return None if side is None else bool(side)


def _unit(dim: dict[str, Any], value: float) -> float:
    """``value``'s position in a ``low``/``high`` range as a fraction of its span (log span on a
    log axis): 0 at ``low``, 1 at ``high``, outside [0, 1] beyond them."""
    f = math.log if dim.get("log") else float
    return (f(float(value)) - f(float(dim["low"]))) / (f(float(dim["high"])) - f(float(dim["low"])))


def beyond_edge(dim: dict[str, Any], tried: list[Any], chosen: Any, k: int) -> list[float | int]:
    """Up to ``k`` values beyond ``chosen`` when it sits at an edge of its axis (:func:`edge_side`),
    stepping outward one typical gap at a time:

    - a ``low``/``high`` range: 1/n of the searched span (log span on a log axis), n the distinct
      values tried, the gap the sample leaves between its points, so the first value is where
      the next point out would have fallen had the range been wider;
    - a list of numbers: the step between the two outermost listed values on that side,
      continued: as a ratio when both are positive (weight decay 0.3, 1.0 → 3.33, 11.1; β₂ 0.9,
      0.8 → 0.711, 0.632), else as a difference. Lists of anything else get none.

    Rounded like the sampled points (4 significant digits; integers on an integer axis or a list
    of integers); a value past a hard end of the setting's domain is replaced by that end and
    the walk stops there. Bounds the domain does not record (an open end, β₂ < 1) are left to the
    caller, which validates each setting against the optimizer's settings model.
    """
    side = edge_side(dim, tried, chosen)
    if not side or k <= 0:
        return []
    lo_dom, hi_dom = dim.get("domain_min"), dim.get("domain_max")
    if "values" in dim:
        listed = sorted(float(v) for v in set(dim["values"]))
        a, b = (listed[-1], listed[-2]) if side == "high" else (listed[0], listed[1])
        integer = all(isinstance(v, int) for v in dim["values"])
        steps = [a * (a / b) ** j if a > 0 and b > 0 else a + j * (a - b) for j in range(1, k + 1)]
    else:
        n = len({float(v) for v in tried if _numeric(v)})
        sign = 1.0 if side == "high" else -1.0
        lo, hi = float(dim["low"]), float(dim["high"])
        integer = bool(dim.get("integer"))
        units = [_unit(dim, chosen) + sign * j / n for j in range(1, k + 1)]
        steps = [math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if dim.get("log") else lo + u * (hi - lo)
                 for u in units]
    out: list[float | int] = []
    for value in steps:
        if lo_dom is not None and value < lo_dom:
            value = lo_dom
        if hi_dom is not None and value > hi_dom:
            value = hi_dom
        value = int(round(value)) if integer else float(f"{value:.4g}")
        if value != chosen and value not in out:
            out.append(value)
        if value in (lo_dom, hi_dom):
            break  # nothing lies past the domain's end
    return out


def axis_table(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, optimizer, searched axis); see the module doc. ``runs`` holds every
    stage (prepared: ``_opt``, ``_val``); ``best`` is :func:`analysis.comparison.best_settings`
    of the final rows. Edge-check rows (stage 3) are not counted as tried: they only decide
    ``edge_check`` (:data:`BRACKETED`, :data:`FLAT_BEYOND` or :data:`BETTER_BEYOND`, None where no
    value beyond the edge was screened) and ``beyond`` (each value screened beyond, with its
    validation metric)."""
    rows = []
    for r in best.itertuples():
        space = json.loads(r.search_space or "{}")
        if not space:
            continue
        mine = runs[(runs["sweep_name"] == r.sweep_name) & (runs["model"] == r.model)
                    & (runs["dataset"] == r.dataset) & (runs["_opt"] == r.optimizer)]
        inside = within_budget(mine)
        budget, checks = mine[inside], mine[~inside]
        settings = {int(t): json.loads(s) for t, s in zip(budget["tuning_index"], budget["optimizer_settings"], strict=True)}
        chosen = settings.get(int(r.tuning_index), {})
        for axis, dim in sorted(space.items()):
            tried = [s.get(axis) for s in settings.values()]
            nums = [float(v) for v in tried if _numeric(v)]
            edge = _edge(dim, tried, chosen.get(axis))
            verdict, beyond = _edge_check(budget, checks, int(r.tuning_index), chosen, axis) if edge else (None, "")
            rows.append({
                "sweep_name": r.sweep_name, "model": r.model, "dataset": r.dataset, "optimizer": r.optimizer,
                "axis": axis, "searched": _searched(dim), "n_tried": len({json.dumps(v) for v in tried}),
                "tried_low": min(nums) if nums else math.nan, "tried_high": max(nums) if nums else math.nan,
                "coverage": _coverage(dim, tried), "chosen_value": chosen.get(axis),
                "edge": edge, "edge_check": verdict, "beyond": beyond,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=AXIS_COLUMNS)


def _edge_check(budget: pd.DataFrame, checks: pd.DataFrame, tuning_index: int, chosen: dict[str, Any],
                axis: str) -> tuple[str | None, str]:
    """The verdict on one edge choice from the edge-check rows that moved only ``axis`` away from
    the chosen setting: each is compared with the chosen setting's own screening trial (same
    seed index, so the same initial weights and data order), against the noise of one run: the
    standard deviation of the chosen setting's validation metric over its other seeds (its
    finalist seeds; 0 with fewer than two). A value beyond that diverged or failed is not better.

    - :data:`BETTER_BEYOND`: some value beyond beats the chosen one by more than that noise;
    - :data:`FLAT_BEYOND`: none does, but some comes within it (the axis is flat there: going
      further changes the metric by no more than a reseed does);
    - :data:`BRACKETED`: every value beyond is worse by more than the noise.
    """
    others = {k: v for k, v in chosen.items() if k != axis}
    mine = [(json.loads(s), v, st, si) for s, v, st, si in
            zip(checks["optimizer_settings"], checks["_val"], checks["status"], checks["seed_index"], strict=True)]
    mine = [m for m in mine if {k: v for k, v in m[0].items() if k != axis} == others and m[0].get(axis) != chosen.get(axis)]
    if not mine:
        return None, ""
    seed = int(mine[0][3])
    own = budget[(budget["tuning_index"] == tuning_index) & (budget["status"] == "completed")]
    base = own[own["seed_index"] == seed]["_val"]
    spread = own[own["seed_index"] != seed]["_val"].dropna()
    noise = float(spread.std(ddof=1)) if len(spread) >= 2 else 0.0
    goal = str(budget["metric_goal"].iloc[0]) if "metric_goal" in budget.columns and len(budget) else "max"
    sign = 1.0 if goal == "max" else -1.0
    ref = float(base.iloc[-1]) if len(base) else math.nan
    gains = [sign * (float(v) - ref) for _, v, st, _ in mine
             if st == "completed" and not math.isnan(float(v)) and not math.isnan(ref)]
    listed = "; ".join(f"{float(s.get(axis)):g}: " + (cell(float(v)) if st == "completed" else str(st))
                       for s, v, st, _ in sorted(mine, key=lambda m: float(m[0].get(axis))))
    if math.isnan(ref):
        return None, listed  # the chosen setting's own screening trial is missing: no verdict
    verdict = (BETTER_BEYOND if any(g > noise for g in gains)
               else FLAT_BEYOND if any(g >= -noise for g in gains) else BRACKETED)
    return verdict, f"{listed} (chosen: {cell(ref)}; seed sd {cell(noise)})"


def format_axis_table(table: pd.DataFrame, style: str = "markdown") -> str:
    """The axis table for a report; an edge choice reads ``EDGE``, followed by the verdict of its
    edge check when one ran (``EDGE, bracketed``, ``EDGE, flat beyond``, ``EDGE, better beyond``)
    and the validation metric of each value screened beyond it."""
    checked = "beyond" in table.columns and bool(table["beyond"].astype(bool).any())
    headers = ["sweep", "model", "optimizer", "axis", "searched", "tried", "tried range", "coverage", "chosen", "edge",
               *(["beyond the edge (validation, screening seed)"] if checked else [])]
    body = []
    for r in table.itertuples():
        edge = {True: "EDGE", False: "no"}.get(r.edge, "—")
        verdict = getattr(r, "edge_check", None)
        verdict = verdict if isinstance(verdict, str) else None  # a frame's None reads NaN
        body.append([
            r.sweep_name, r.model, r.optimizer, r.axis, r.searched, str(r.n_tried),
            f"{cell(r.tried_low)}–{cell(r.tried_high)}" if not math.isnan(r.tried_low) else "—",
            f"{100 * r.coverage:.0f} %", json.dumps(r.chosen_value), f"{edge}, {verdict}" if verdict else edge,
            *([r.beyond or ""] if checked else []),
        ])  # fmt: skip
    return grid(headers, body, style)


def stage_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (sweep, optimizer): settings and trials of each stage (0 one stage, 1, 2)."""
    frame = runs.assign(tuning_stage=runs["tuning_stage"].astype(int))
    out = frame.groupby(["sweep_name", "_opt", "tuning_stage"]).agg(
        settings=("tuning_index", "nunique"), trials=("trial_id", "count"), seeds=("seed_index", "nunique")
    )
    return out.reset_index().rename(columns={"_opt": "optimizer"})
