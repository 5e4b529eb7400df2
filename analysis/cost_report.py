"""The cost report: time-vs-FLOPs plots, method ratios, communication checks, the at-scale table.

Built by ``python -m launchers.cost fit RESULTS --name NAME`` (the launcher hands in the
optimizer's own sharding planner, :data:`analysis.step_cost.Planner`; analysis never imports
the optimizer). ``RESULTS`` is a results directory holding ``profile.parquet`` files (or one
such file). The report fits the cost model (:mod:`analysis.cost_model`), writes the device cost
constants, log-log plots of time vs FLOPs per method with the fitted line (matplotlib, Agg
backend: no display needed), the measured ratios between the optimizers' routes per shape, the
broadcast constants with their held-out checks, and the table "what one step costs at 7B / 70B
/ 405B on N devices" together with the measured points each prediction rests on (how many
shapes, which FLOP range, and how far the model's largest matrix lies beyond it).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.comm_cost import ALGORITHMS
from analysis.cost_model import (
    METHODS,
    PROBE_BATCH,
    PROBE_TOP_K,
    CostModelError,
    fit_from_paths,
    fit_kernels,
    held_out_accuracy,
    kernel_rows,
    load_device_costs,
    load_profile_rows,
    predict_probe_cost,
    save_device_costs,
)
from analysis.step_cost import Planner, predict_step_cost

DEFAULT_MODELS: tuple[str, ...] = ("llama-7b", "llama-70b", "llama-405b")
#: The models the probe modes are priced at (issue 14).
PROBE_MODELS: tuple[str, ...] = ("gpt2-small", "llama-7b", "llama-70b")
DEFAULT_RANKS: tuple[int, ...] = (8, 64, 512, 1024)
#: (numerator, denominator) pairs of the ratio table: how much cheaper than the full SVD each
#: route is, and each route's cost relative to Muon's Newton–Schulz.
RATIOS: tuple[tuple[str, str], ...] = (
    ("svd", "gram"), ("svd", "solve"), ("svd", "polar"), ("gram", "ns5"), ("solve", "ns5"), ("polar", "ns5"),
)  # fmt: skip


def fmt_seconds(s: float) -> str:
    """1.2 µs / 3.4 ms / 5.6 s / 7.8 min / 9.0 h."""
    if s is None or not math.isfinite(s):
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


# ------------------------------------------------------------------------------------- plots
def plot_time_vs_flops(
    df: pd.DataFrame, out_dir: str | Path, methods: Sequence[str] | None = None
) -> list[Path]:
    """Log-log time vs FLOPs, one figure per (device, dtype), one colour per method, with each
    method's fitted line a·flops + b over its measured range (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = kernel_rows(df)
    if k.empty:
        return []
    fits = fit_kernels(df)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for (dev, dtype), g in k.groupby(["device_key", "dtype"], sort=True):
        fig, ax = plt.subplots(figsize=(8, 6))
        cmap = plt.get_cmap("tab20")
        for i, (method, gm) in enumerate(g.groupby("method", sort=True)):
            if methods is not None and method not in methods:
                continue
            colour = cmap(i % 20)
            ax.scatter(gm["flops"], gm["seconds"], s=18, color=colour, label=method)
            fit = fits.get((str(dev), str(method), str(dtype)))
            if fit is not None and fit.x_max > fit.x_min:
                xs = np.geomspace(fit.x_min, fit.x_max, 50)
                ax.plot(xs, fit.predict(xs), "--", color=colour, linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FLOPs per call (closed form, bench.profile.flops)")
        ax.set_ylabel("median time per call [s]")
        ax.set_title(f"{dev} — {dtype}: time vs FLOPs (dashed: a·flops + b fit)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{dev}_{dtype}")
        path = out / f"time_vs_flops_{safe}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------ ratios
def method_ratios(df: pd.DataFrame, shape_set: str, pairs: Sequence[tuple[str, str]] = RATIOS) -> pd.DataFrame:
    """Measured time ratios num/den per shape of ``shape_set`` (from the ``labels`` column), and
    the whole-model ratio Σ count·t_num / Σ count·t_den (counts from the catalogue)."""
    k = kernel_rows(df)
    if k.empty or "labels" not in k.columns:
        return pd.DataFrame()
    k = k[k["labels"].fillna("").str.contains(f"{shape_set}/", regex=False)]
    if k.empty:
        return pd.DataFrame()
    counts = _set_counts(df, shape_set)
    rows = []
    for dtype, g in k.groupby("dtype"):
        t = g.groupby(["shape", "method"])["seconds"].median().unstack()
        for num, den in pairs:
            if num not in t.columns or den not in t.columns:
                continue
            for shape, r in t.iterrows():
                rows.append({"dtype": dtype, "ratio": f"{num} / {den}", "shape": shape,
                             "count": counts.get(shape, math.nan), "num_s": r[num], "den_s": r[den],
                             "ratio_value": r[num] / r[den]})
            both = t[[num, den]].dropna()
            w = pd.Series([counts.get(s, 1) for s in both.index], index=both.index)
            rows.append({"dtype": dtype, "ratio": f"{num} / {den}", "shape": "whole model", "count": int(w.sum()),
                         "num_s": float((both[num] * w).sum()), "den_s": float((both[den] * w).sum()),
                         "ratio_value": float((both[num] * w).sum() / (both[den] * w).sum())})
    return pd.DataFrame(rows)


def _set_counts(df: pd.DataFrame, shape_set: str) -> dict[str, int]:
    """Orientation-free shape → number of matrices in the model, from the catalogue rows."""
    s = df[(df["op"] == "shape") & (df["model"] == shape_set)] if "model" in df.columns else pd.DataFrame()
    counts: dict[str, int] = {}
    seen = set()
    for r in s.itertuples(index=False):
        if (r.shape_name, r.shape_m, r.shape_n) in seen:
            continue
        seen.add((r.shape_name, r.shape_m, r.shape_n))
        # A measured row carries the orientation of the first model shape it stood for, and every
        # method works on the tall form: a shape counts under both orientations (once if square).
        for key in {f"{r.shape_m}x{r.shape_n}", f"{r.shape_n}x{r.shape_m}"}:
            counts[key] = counts.get(key, 0) + int(r.count)
    return counts


def format_ratios(ratios: pd.DataFrame) -> str:
    if ratios.empty:
        return "(no ratios: the shapes or methods were not measured)"
    lines = ["| ratio | shape | count | numerator | denominator | ratio |", "|---|---|---|---|---|---|"]
    for r in ratios.itertuples(index=False):
        count = "" if pd.isna(r.count) else int(r.count)
        lines.append(f"| {r.ratio} ({r.dtype}) | {r.shape} | {count} | {fmt_seconds(r.num_s)} | "
                     f"{fmt_seconds(r.den_s)} | **{r.ratio_value:.1f}×** |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- scale table
def cost_table(
    costs: Mapping[str, Any],
    planner: Planner,
    models: Sequence[str] = DEFAULT_MODELS,
    ranks: Sequence[int] = DEFAULT_RANKS,
    methods: Sequence[str] = METHODS,
    dtype: str = "fp32",
) -> pd.DataFrame:
    """One row per (model, method, ranks): predicted compute, sync and total per step (sharded)."""
    rows = []
    for model in models:
        for method in methods:
            if f"{method}|{dtype}" not in costs.get("kernels", {}):
                continue
            for p in ranks:
                try:
                    rows.append(predict_step_cost(model, p, costs, method, planner, dtype=dtype))
                except CostModelError:
                    continue
    return pd.DataFrame(rows)


def format_cost_table(table: pd.DataFrame) -> str:
    """Markdown: per model, methods × ranks, cell = compute + sync = total."""
    if table.empty:
        return "(no predictions: the device cost constants lack the methods or the model catalogue)"
    out = []
    ranks = sorted(table["ranks"].unique())
    for model, g in table.groupby("model", sort=False):
        first = g.sort_values("ranks").iloc[-1]
        out.append(f"**{model}**: {first['matrices']} matrices, {first['elements'] / 1e9:.2f} B parameters; the "
                   f"owners' new values go out in {first['buckets']} bucketed broadcasts, "
                   f"{fmt_bytes(first['sync_bytes'])} per step ({first['comm_source']})")
        out.append("")
        out.append("| method | serial (1 device) | " + " | ".join(f"N = {p}: compute + sync = total" for p in ranks)
                   + " | largest matrix vs measured |")
        out.append("|---|---|" + "---|" * len(ranks) + "---|")
        for method, gm in g.groupby("method", sort=False):
            by_p = {int(r["ranks"]): r for _, r in gm.iterrows()}
            cells = []
            for p in ranks:
                r = by_p.get(int(p))
                cells.append("–" if r is None else
                             f"{fmt_seconds(r['compute_s'])} + {fmt_seconds(r['sync_s'])} = "
                             f"**{fmt_seconds(r['total_s'])}**")
            r0 = gm.iloc[0]
            out.append(f"| {method} | {fmt_seconds(r0['serial_compute_s'])} | " + " | ".join(cells)
                       + f" | ×{r0['extrapolation']:.0f} FLOPs |")
        out.append("")
    return "\n".join(out)


def format_probe_table(costs: Mapping[str, Any], models: Sequence[str] = PROBE_MODELS,
                       train_batch: int = 1024, interval: int = 100) -> str:
    """Markdown: one curvature probe of each model in each probe mode with a fitted constant
    (mode full: K = 20, batch 2048; kronecker: batch 2048; online: the training step's own), in
    training steps of a ``train_batch``-sample step, from that mode's κ; the points behind κ and
    its leave-one-out error."""
    fits = costs.get("probe_models") or ({"full": costs["probe_model"]} if costs.get("probe_model") else {})
    if not fits:
        return "(no probe constant: fit with --probe-results pointing at probe-overhead results)"
    lines = []
    for mode, fit in fits.items():
        loo = fit.get("loo_median_rel_err")
        lines += [f"Mode **{mode}**: κ = {fit['kappa']:.3g} (median of {fit['points']} measured points, range "
                  f"{fit['kappa_min']:.3g}–{fit['kappa_max']:.3g}; leave-one-out median error "
                  f"{'–' if loo is None else f'{loo:.0%}'}), in {fit['model']}.", ""]
    lines += [f"Probed layers L = the model's matrices; training batch {train_batch} samples.", "",
              f"| model | L | mode | one probe (training steps) | overhead at interval {interval} | interval for 5 % | "
              "interval for 1 % |", "|---|---|---|---|---|---|---|"]
    for model in models:
        shapes = costs.get("models", {}).get(model)
        if not shapes:
            continue
        layers = sum(int(s["count"]) for s in shapes)
        for mode in fits:
            pred = predict_probe_cost(costs, layers, PROBE_TOP_K, PROBE_BATCH, train_batch, interval, mode)
            lines.append(f"| {model} | {layers} | {mode} | {pred['probe_in_steps']:,.3g} | "
                         f"{pred['overhead_at_interval']:.2%} | {pred['interval_for_5pct']:,.0f} | "
                         f"{pred['interval_for_1pct']:,.0f} |")
    return "\n".join(lines)


def format_comm(costs: Mapping[str, Any]) -> str:
    """Markdown: the broadcast constants, their held-out error per P and the model-sync checks."""
    fit = costs.get("broadcast")
    if not fit:
        return ("(no collective rows: at scale the sync is priced with assumed NCCL constants; measure with a "
                "`collectives:` section)")
    r2 = {alg: "⌈log₂ P⌉" if alg == "binomial_tree" else "P − 1" for alg in ALGORITHMS.values()}[fit["algorithm"]]
    s2 = "⌈log₂ P⌉" if fit["algorithm"] == "binomial_tree" else "1"
    lines = [f"One bucket of B bytes on P ranks ({fit['backend']}, {fit['algorithm'].replace('_', ' ')}): "
             f"t(P, B) = {r2}·ℓ + {s2}·B/bw with ℓ = **{fit['latency_s'] * 1e6:.0f} µs** and bw = "
             f"**{1 / fit['seconds_per_byte'] / 1e9:.2f} GB/s**, fitted on {fit['n']} single-bucket syncs at "
             f"P = {', '.join(str(p) for p in fit['ranks'])} (median error {fit['median_rel_err']:.1%}, largest "
             f"{fit['max_rel_err']:.1%}). A step's sync is the sum over its buckets.", ""]
    held = fit.get("heldout_by_ranks") or {}
    if held:
        lines += ["Held out by P (fit on the other P, predict this one): "
                  + ", ".join(f"P = {p}: median error **{e:.1%}**" for p, e in held.items()) + ".", ""]
    checks = costs.get("comm_checks") or []
    if checks:
        lines += ["Whole syncs with the optimizer's bucket plan, predicted bucket by bucket (never fitted on): "
                  "`owner_sync` after a barrier (communication alone); inside a sharded `spectral_step` the "
                  "fastest and slowest rank's sync bracket the transfer.", "",
                  "| run | measured | P | buckets | bytes | measured | predicted | error / inside the bracket |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in checks:
            if c["kind"] == "owner_sync":
                measured, verdict = fmt_seconds(c["measured_s"]), f"{c['rel_err']:.1%}"
            else:
                measured = f"{fmt_seconds(c['measured_s'])} – {fmt_seconds(c['measured_high_s'])}"
                verdict = "inside" if c["in_bracket"] else "outside"
            lines.append(f"| {c.get('run') or '–'} | {c['kind']} | {c['ranks']} | {c['buckets']} | {fmt_bytes(c['bytes'])} | {measured} | "
                         f"{fmt_seconds(c['predicted_s'])} | {verdict} |")
    return "\n".join(lines)


def format_fit_points(costs: Mapping[str, Any], methods: Sequence[str] | None = None) -> str:
    """Markdown: the measured points every fit rests on."""
    lines = ["| method | dtype | points | measured FLOP range | sustained rate 1/a | fixed cost b | "
             "fit median rel. err | held-out median rel. err |", "|---|---|---|---|---|---|---|---|"]
    for key, fit in sorted(costs.get("kernels", {}).items()):
        method, dtype = key.split("|")
        if methods is not None and method not in methods:
            continue
        held = fit.get("heldout_median_rel_err")
        rate = 1 / fit["a"] / 1e9 if fit["a"] else math.inf
        lines.append(f"| {method} | {dtype} | {fit['n']} | {fit['x_min']:.2e} – {fit['x_max']:.2e} | "
                     f"{rate:.1f} GFLOP/s | {fmt_seconds(fit['b'])} | {fit['median_rel_err']:.1%} | "
                     f"{'–' if held is None or not math.isfinite(held) else f'{held:.1%}'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ report
@dataclass
class CostReport:
    text: str
    report_path: Path
    costs_path: Path
    plot_paths: list[Path] = field(default_factory=list)
    costs: dict[str, Any] = field(default_factory=dict)


def build_cost_report(
    results: str | Path,
    name: str,
    planner: Planner,
    out_dir: str | Path | None = None,
    costs_out: str | Path | None = None,
    device: str | None = None,
    ratio_sets: Sequence[str] = ("gpt2-small", "resnet18"),
    comm_results: str | Path | None = None,
    probe_results: str | Path | Sequence[str | Path] | None = None,
) -> CostReport:
    """Fit, save the device cost constants, plot, and write ``cost_report.md`` into ``out_dir``."""
    df = load_profile_rows(results)
    costs = fit_from_paths(results, name, device, comm_results, probe_results)
    out = Path(out_dir) if out_dir is not None else Path(results) / "cost_report"
    if out.suffix == ".parquet":
        out = out.parent / "cost_report"
    out.mkdir(parents=True, exist_ok=True)
    costs_path = save_device_costs(costs, costs_out or out / f"{name}.json")
    sel = df if device is None else df[df.get("device_name") == device]
    plots = plot_time_vs_flops(sel, out)
    acc = held_out_accuracy(sel)
    parts = [
        f"# Estimation cost on {costs['device_name']} ({costs['device']}, "
        f"{costs.get('threads')} threads, torch {costs.get('torch_version')})",
        "",
        f"Fit: {costs['fit']}. Held-out median relative error (every 3rd shape by FLOPs held out): "
        f"**{costs['heldout_median_rel_err']:.1%}**.",
        "",
        "## Ratios between the optimizers' routes (measured, same run)",
    ]
    for s in ratio_sets:
        parts += ["", f"### {s}", "", format_ratios(method_ratios(sel, s))]
    parts += ["", "## Fits and the points they rest on", "", format_fit_points(costs), ""]
    if not acc.empty:
        parts += ["Held-out accuracy per fit:", "",
                  "| method | dtype | fit shapes | held out | median rel. err | max rel. err |",
                  "|---|---|---|---|---|---|"]
        parts += [f"| {r.method} | {r.dtype} | {r.n_fit} | {r.n_held_out} | {r.median_rel_err:.1%} | "
                  f"{r.max_rel_err:.1%} |" for r in acc.itertuples(index=False)]
        parts.append("")
    parts += ["## Communication: the owner sharding's bucketed broadcasts", "", format_comm(costs), "",
              "## What one step costs at scale (sharded: the optimizer's LPT owners, compute + bucketed sync)", "",
              format_cost_table(cost_table(costs, planner)), "",
              "## What one curvature probe costs at scale, per probe mode (K = 20 directions, probe batch 2048)", "",
              format_probe_table(costs), ""]
    text = "\n".join(parts)
    report_path = out / "cost_report.md"
    report_path.write_text(text)
    return CostReport(text, report_path, costs_path, plots, costs)


# -------------------------------------------------------------------------------- cost command
def format_breakdown(pred: Mapping[str, Any]) -> str:
    """The human-readable breakdown of one :func:`~analysis.step_cost.predict_step_cost`."""
    lo, hi = pred["measured_flops_range"]
    held = pred.get("fit_heldout_median_rel_err")
    lines = [
        f"{pred['model']} on {pred['ranks']} × {pred['device_name']} ({pred['device_costs']}), method "
        f"{pred['method']} ({pred['dtype']}), {'sharded (LPT owners)' if pred['sharded'] else 'replicated'}",
        f"  matrices                 {pred['matrices']} ({pred['elements'] / 1e9:.2f} B parameters, "
        f"{pred['flops_total'] / 1e12:.1f} TFLOP per step in total)",
        f"  serial compute           {fmt_seconds(pred['serial_compute_s'])} (one device doing every matrix)",
        f"  per-rank compute (max)   {fmt_seconds(pred['compute_s'])} (mean {fmt_seconds(pred['mean_rank_compute_s'])},"
        f" imbalance ×{pred['imbalance']:.2f}; owners assigned on {pred['assignment_ranks']} ranks)",
        f"  sync of new values       {fmt_seconds(pred['sync_s'])} ({pred['buckets']} bucketed broadcasts, "
        f"{fmt_bytes(pred['sync_bytes'])}; {pred['comm_source']})",
        f"  total per step           {fmt_seconds(pred['total_s'])} (compute + sync, no overlap)",
        f"  fit                      t = {pred['fit_a']:.3e}·flops + {fmt_seconds(pred['fit_b'])} from "
        f"{pred['fit_points']} measured shapes, {lo:.2e}–{hi:.2e} FLOPs; median rel. err "
        f"{pred['fit_median_rel_err']:.1%}"
        + (f", held-out {held:.1%}" if held is not None and math.isfinite(held) else ""),
        f"  extrapolation            largest matrix is ×{pred['extrapolation']:.1f} the largest measured FLOPs",
    ]
    return "\n".join(lines)


def format_probe_breakdown(probe: Mapping[str, Any] | None, mode: str = "full") -> str:
    """The probe lines of the ``cost`` breakdown (or why there are none)."""
    if probe is None:
        return (f"  curvature probe          no constant for probe mode {mode} in these device cost constants "
                "(see README: cost model)")
    lo, hi = probe["kappa_range"]
    loo = probe.get("loo_median_rel_err")
    what = {"full": f"K = {probe['top_k']} on L = {probe['layers']} layers, batch {probe['probe_batch']}",
            "kronecker": f"batch {probe['probe_batch']}",
            "online": "the training step's own rows"}[probe["mode"]]
    return "\n".join([
        f"  curvature probe ({probe['mode']}) {what} vs a {probe['train_batch']}-sample training step: "
        f"κ·{probe['units']} = {probe['probe_in_steps']:,.4g} training steps per probe (κ = {probe['kappa']:.3g}, "
        f"measured {lo:.3g}–{hi:.3g} on {probe['kappa_points']} points, leave-one-out median error "
        f"{'–' if loo is None else f'{loo:.0%}'})",
        f"  probe overhead           {probe['overhead_at_interval']:.2%} at an interval of {probe['interval']} steps; "
        f"5 % at {probe['interval_for_5pct']:,.0f}, 1 % at {probe['interval_for_1pct']:,.0f} steps",
    ])


def cost_cli(
    model: str,
    ranks: int,
    device_costs: str | Path,
    planner: Planner,
    method: str = "solve",
    dtype: str = "fp32",
    sharded: bool = True,
    probe_top_k: int = PROBE_TOP_K,
    probe_batch: int = PROBE_BATCH,
    train_batch: int = 1024,
    probe_interval: int = 100,
    probe_mode: str = "full",
) -> int:
    """Print the breakdown for ``specbench cost --model M --ranks N --device NAME [--method]``
    (the optimizer step, then one curvature probe in training steps); returns the exit status
    (2 on a usage problem, with one message on stderr)."""
    try:
        if min(ranks, probe_top_k, probe_batch, train_batch, probe_interval) < 1:
            raise ValueError("--ranks, --probe-k, --probe-batch, --train-batch and --probe-interval must be at least 1")
        costs = load_device_costs(device_costs)
        pred = predict_step_cost(model, ranks, costs, method, planner, sharded=sharded, dtype=dtype)
    except (CostModelError, ValueError) as exc:
        print(f"specbench: error: {exc}", file=sys.stderr)
        return 2
    probe = predict_probe_cost(costs, pred["matrices"], probe_top_k, probe_batch, train_batch, probe_interval,
                               probe_mode)
    print(format_breakdown(pred))
    print(format_probe_breakdown(probe, probe_mode))
    return 0
