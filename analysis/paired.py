"""Paired per-seed comparisons of optimizers, and intervals that stay inside a metric's range.

Pairing (docs/science/decisions.md, "fair comparisons"): seed index ``i`` gives every optimizer
of a sweep the same initial weights and the same data order (``bench.seeds``: the trial seed
depends on the sweep seed and the seed index only), so the per-seed difference
``d_i = x_A(i) − x_B(i)`` of two optimizers' test metrics cancels the variation that the seed
itself causes. The paired Student-t test takes ``t = d̄ / (s_d / √n)`` with ``n − 1`` degrees of
freedom (scipy's ``ttest_rel``) and the interval ``d̄ ± t_{0.975, n−1}·s_d/√n`` for the mean
difference. Only seeds both optimizers completed are paired (a lost seed is reported by the
best-setting table, not hidden in a mean).

Each optimizer is compared with the workload's top-ranked one (``rank`` 1 of
:func:`analysis.comparison.best_settings`); the k − 1 p-values of a workload are Holm-adjusted,
so "significant at 5 %" holds for the family.

Range-respecting intervals (:func:`range_interval`): a t-interval computed on a scale where the
metric is unbounded and mapped back, ``log(x − lo)`` for ``[lo, ∞)`` (perplexity ≥ 1, loss ≥ 0)
and ``logit((x − lo)/(hi − lo))`` for ``[lo, hi]`` (accuracy), so no bound can leave the range;
a value on a bound (an accuracy of exactly 1) has no image there, and the interval then falls
back to the clipped arithmetic one (:func:`analysis.summary.t_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from analysis.summary import WORKLOAD, Interval, metric_range, t_interval
from analysis.tables import format_interval, format_number, grid

#: Columns of :func:`paired_table`.
PAIRED_COLUMNS = [
    *WORKLOAD, "optimizer", "reference", "metric_name", "n_pairs", "mean_diff", "diff_low", "diff_high",
    "t_stat", "p_value", "p_holm",
]  # fmt: skip


def paired_test(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> dict[str, float]:
    """Paired Student-t test of ``a − b`` (equal-length sequences, NaN pairs dropped).

    Returns ``n``, ``mean_diff``, the interval ``diff_low``/``diff_high`` at ``confidence``,
    ``t_stat`` and the two-sided ``p_value``; statistics are NaN with fewer than two pairs or
    zero spread of the differences (no test is possible).
    """
    x, y = np.asarray(list(a), float), np.asarray(list(b), float)
    keep = ~(np.isnan(x) | np.isnan(y))
    d = x[keep] - y[keep]
    n = int(d.size)
    out = {"n": n, "mean_diff": float(d.mean()) if n else math.nan, "diff_low": math.nan, "diff_high": math.nan,
           "t_stat": math.nan, "p_value": math.nan}
    if n < 2 or np.allclose(d, d[0], rtol=1e-12, atol=0.0):  # no spread: no test is possible
        return out
    from scipy import stats  # a dependency of scikit-learn, itself declared

    res = stats.ttest_rel(x[keep], y[keep])
    ci = res.confidence_interval(confidence)
    out.update(diff_low=float(ci.low), diff_high=float(ci.high), t_stat=float(res.statistic),
               p_value=float(res.pvalue))
    return out


def paired_by_seed(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """:func:`paired_test` of ``a − b`` over the seed indices both hold (series indexed by seed)."""
    both = pd.concat([a, b], axis=1, join="inner")
    return paired_test(both.iloc[:, 0], both.iloc[:, 1])


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN entries stay NaN, not counted)."""
    p = list(p_values)
    order = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    m, out, running = len(order), [math.nan] * len(p), 0.0
    for rank, (v, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * v))
        out[i] = running
    return out


def paired_table(runs: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Every optimizer's chosen setting against the workload's top-ranked one, paired by seed.

    ``runs`` is the comparison's ``runs`` (prepared by :func:`analysis.comparison.prepare_runs`:
    ``_opt``, ``_test``, ``_seed``); ``best`` is :func:`analysis.comparison.best_settings`.
    """
    rows = []
    for (sweep, model, dataset), group in best.groupby(WORKLOAD, sort=True):
        top = group.sort_values("rank").iloc[0]
        mine = runs[(runs["sweep_name"] == sweep) & (runs["model"] == model) & (runs["dataset"] == dataset)]
        ref = _per_seed(mine, top)
        block = []
        for _, r in group.iterrows():
            if r["optimizer"] == top["optimizer"]:
                continue
            test = paired_by_seed(_per_seed(mine, r), ref)
            block.append({"sweep_name": sweep, "model": model, "dataset": dataset, "optimizer": r["optimizer"],
                          "reference": top["optimizer"], "metric_name": r["metric_name"], "n_pairs": test["n"],
                          **{k: test[k] for k in ("mean_diff", "diff_low", "diff_high", "t_stat", "p_value")}})
        for row, adj in zip(block, holm([b["p_value"] for b in block]), strict=True):
            rows.append({**row, "p_holm": adj})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _per_seed(runs: pd.DataFrame, best_row: pd.Series) -> pd.Series:
    """Test metric per seed index of a best-settings row's chosen setting (completed seeds)."""
    chosen = runs[(runs["_opt"] == best_row["optimizer"]) & (runs["optimizer_label"] == best_row["best_setting"])
                  & (runs["tuning_index"] == best_row["tuning_index"]) & (runs["status"] == "completed")]
    return chosen.groupby("_seed")["_test"].mean()


def format_paired(table: pd.DataFrame, style: str = "markdown") -> str:
    """The paired table for a report."""
    headers = ["sweep", "model", "dataset", "optimizer", "vs", "pairs", "mean diff [95% CI]", "t", "p", "p (Holm)"]
    body = [
        [r.sweep_name, r.model, r.dataset, r.optimizer, r.reference, str(r.n_pairs),
         format_interval(r.mean_diff, r.diff_low, r.diff_high),
         format_number(r.t_stat), format_number(r.p_value), format_number(r.p_holm)]
        for r in table.itertuples()
    ]  # fmt: skip
    return grid(headers, body, style)


#: Family-wise level of the separation verdict (Holm-adjusted p-values).
ALPHA = 0.05
#: A bounded metric is "at its ceiling" when every entry's mean test value lies within this
#: fraction of the metric's range from the better bound (accuracy ≥ 0.95 for accuracy in [0, 1]).
CEILING_FRACTION = 0.05


def separation_lines(paired: pd.DataFrame, best: pd.DataFrame) -> list[str]:
    """The report's verdict, by fixed rules, on whether a workload separates its optimizers.

    Per workload: the entries whose test metric differs from the top-ranked one's at family-wise
    level :data:`ALPHA` (Holm-adjusted paired t-test, :func:`paired_table`); when none does, the
    best-setting ranking is not evidence of an order. For a metric bounded on its better side
    (accuracy ≤ 1) the distance of the entries' means from that bound is stated, and the workload
    is called *at its ceiling* when every mean lies within :data:`CEILING_FRACTION` of the range
    from it: there is too little headroom left for the final metric to order the optimizers, and
    time to target is the measure that can still differ. ``best`` is
    :func:`analysis.comparison.best_settings`."""
    lines: list[str] = []
    several = best["sweep_name"].nunique() > 1
    for (sweep, model, dataset), group in best.groupby(WORKLOAD, sort=True):
        if len(group) < 2:  # one entry (an α-map sweep): nothing to separate
            continue
        group = group.sort_values("rank")
        top, metric = group.iloc[0], str(group.iloc[0]["metric_name"])
        mine = (paired[(paired["sweep_name"] == sweep) & (paired["model"] == model) & (paired["dataset"] == dataset)]
                if not paired.empty else paired)
        tested = mine[mine["p_holm"].notna()] if not mine.empty else mine
        apart = tested[tested["p_holm"] < ALPHA] if not tested.empty else tested
        text = f"**{model} on {dataset}**{f' (sweep `{sweep}`)' if several else ''}: "
        if tested.empty:
            text += "no paired test was possible (fewer than two shared seeds, or no spread)."
        elif apart.empty:
            text += (f"**not separated**: no entry's test {metric} differs from the top-ranked "
                     f"{top['optimizer']}'s at {ALPHA:.0%} (Holm, {len(tested)} test{'s' * (len(tested) > 1)}); "
                     "the ranking above "
                     "is not evidence of an order.")
        else:
            names = ", ".join(f"{r.optimizer} (p = {format_number(r.p_holm)})" for r in apart.itertuples())
            text += (f"{len(apart)} of {len(tested)} entries differ from the top-ranked {top['optimizer']} at "
                     f"{ALPHA:.0%} (Holm): {names}.")
        lo, hi = metric_range(metric)
        means = pd.to_numeric(group["test_metric_mean"], errors="coerce").dropna()
        goal = str(top["metric_goal"])
        bound = hi if goal == "max" else lo
        if not means.empty and math.isfinite(lo) and math.isfinite(hi):
            gap = (bound - means).abs()
            text += (f" Distance of the entries' mean test {metric} from its bound {format_number(bound)}: "
                     f"{format_number(gap.min())}–{format_number(gap.max())}")
            if bool((gap <= CEILING_FRACTION * (hi - lo)).all()):
                text += (f"; every entry is within {CEILING_FRACTION:.0%} of the range of it: **at its ceiling**, "
                         "the final metric cannot order these optimizers (time to target still can).")
            else:
                text += "."
        lines += [text, ""]
    return lines


def range_interval(values: Iterable[float], metric_name: object, confidence: float = 0.95) -> Interval:
    """A t-interval for the mean of ``values`` that lies inside the metric's range by
    construction (see the module doc); ``mean`` is the arithmetic mean either way."""
    x = np.asarray(list(values), float)
    x = x[~np.isnan(x)]
    lo, hi = metric_range(metric_name)
    plain = t_interval(x, confidence, (lo, hi))
    inside = bool(np.all((x > lo) & (x < hi)))
    if x.size < 2 or not inside or (math.isinf(lo) and math.isinf(hi)):
        return plain
    if math.isinf(hi):
        fwd, back = (lambda v: np.log(v - lo)), (lambda u: lo + math.exp(u))
    elif math.isinf(lo):
        fwd, back = (lambda v: -np.log(hi - v)), (lambda u: hi - math.exp(-u))
    else:
        span = hi - lo
        fwd = lambda v: np.log((v - lo) / (hi - v))  # noqa: E731 - a one-line transform pair
        back = lambda u: lo + span / (1.0 + math.exp(-u))  # noqa: E731
    on_scale = t_interval(fwd(x), confidence)
    return Interval(plain.mean, back(on_scale.low), back(on_scale.high), plain.n, clipped=False)
