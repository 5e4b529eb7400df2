"""The estimation-cost report: time-vs-FLOPs plots, method ratios and the at-scale table.

    python -m analysis.cost_report RESULTS --name cpu-2core [--out DIR] [--profile-out JSON]
    python -m analysis.cost_report --cost --model llama-70b --ranks 1024 --device cpu-2core

``RESULTS`` is a results directory holding ``profile.parquet`` files (or one such file). The
report fits the cost model (:mod:`analysis.cost_model`), writes the device profile, log-log plots
of time vs FLOPs per method with the fitted line (matplotlib, Agg backend: no display needed),
the measured ratios of each method to the full SVD per shape, and the table "what it costs at
7B / 70B / 405B on N GPUs" together with the measured points each prediction rests on (how many
shapes, which FLOP range, and how far the model's largest matrix lies beyond it).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.cost_model import (
    DEVICE_PROFILE_DIR,
    PROBE_BATCH,
    PROBE_TOP_K,
    CostModelError,
    build_device_profile,
    fit_kernels,
    fit_probe_constant,
    held_out_accuracy,
    kernel_rows,
    load_device_profile,
    load_profile_rows,
    predict_probe_cost,
    predict_step_cost,
    save_device_profile,
)

DEFAULT_MODELS: tuple[str, ...] = ("llama-7b", "llama-70b", "llama-405b")
DEFAULT_RANKS: tuple[int, ...] = (8, 64, 512, 1024)
#: Methods of the at-scale table: the decompositions/updates a Spectral Newton step could use,
#: Muon's Newton–Schulz for reference, and the optimizer's own routes.
DEFAULT_METHODS: tuple[str, ...] = (
    "svd", "gram_eigh", "damped_solve", "ns5", "transform:gram", "transform:solve", "transform:polar",
    "transform:svd",
)  # fmt: skip
#: (numerator, denominator) pairs of the ratio table: how much cheaper than the full SVD.
RATIOS: tuple[tuple[str, str], ...] = (
    ("svd", "gram_eigh"), ("svd", "damped_solve"), ("svd", "ns5"),
    ("transform:svd", "transform:gram"), ("transform:svd", "transform:solve"), ("transform:svd", "transform:polar"),
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
    df: pd.DataFrame, out_dir: str | os.PathLike[str], methods: Sequence[str] | None = None
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
    profile: Mapping[str, Any],
    models: Sequence[str] = DEFAULT_MODELS,
    ranks: Sequence[int] = DEFAULT_RANKS,
    methods: Sequence[str] = DEFAULT_METHODS,
    dtype: str = "fp32",
    sharded: bool = True,
) -> pd.DataFrame:
    """One row per (model, method, ranks): predicted compute, all-gather and total per step."""
    rows = []
    for model in models:
        for method in methods:
            if f"{method}|{dtype}" not in profile.get("kernels", {}):
                continue
            for p in ranks:
                try:
                    pred = predict_step_cost(model, p, profile, method, sharded=sharded, dtype=dtype)
                except CostModelError:
                    continue
                rows.append(pred)
    return pd.DataFrame(rows)


def format_cost_table(table: pd.DataFrame) -> str:
    """Markdown: per model, methods × ranks, cell = total (compute + all-gather)."""
    if table.empty:
        return "(no predictions: the device profile lacks the methods or the model catalogue)"
    out = []
    ranks = sorted(table["ranks"].unique())
    for model, g in table.groupby("model", sort=False):
        first = g.iloc[0]
        out.append(f"**{model}**: {first['matrices']} spectral matrices, {first['elements'] / 1e9:.2f} B parameters; "
                   f"all-gather of bf16 updates {fmt_bytes(first['allgather_bytes'] or 0) if first['sharded'] else '–'}"
                   f" per step at N > 1 ({first['collective_source']})")
        out.append("")
        out.append("| method | serial (1 device) | " + " | ".join(f"N = {p}: compute + all-gather = total" for p in ranks)
                   + " | largest matrix vs measured |")
        out.append("|---|---|" + "---|" * len(ranks) + "---|")
        for method, gm in g.groupby("method", sort=False):
            by_p = {int(r["ranks"]): r for _, r in gm.iterrows()}
            cells = []
            for p in ranks:
                r = by_p.get(int(p))
                cells.append("–" if r is None else
                             f"{fmt_seconds(r['compute_s'])} + {fmt_seconds(r['allgather_s'])} = "
                             f"**{fmt_seconds(r['total_s'])}**")
            r0 = gm.iloc[0]
            out.append(f"| {method} | {fmt_seconds(r0['serial_compute_s'])} | " + " | ".join(cells)
                       + f" | ×{r0['extrapolation']:.0f} FLOPs |")
        out.append("")
    return "\n".join(out)


def format_probe_table(profile: Mapping[str, Any], models: Sequence[str] = DEFAULT_MODELS,
                       train_batch: int = 1024, interval: int = 100) -> str:
    """Markdown: one curvature probe (defaults K = 20, batch 2048) of each model, in training steps
    of a ``train_batch``-sample step, from the profile's κ; the measured points behind κ."""
    fit = profile.get("probe_model")
    if not fit:
        return "(no probe constant: fit with --probe-results pointing at a probe-overhead profile)"
    lines = [f"κ = {fit['kappa']:.2f} (median of {fit['points']} measured points, range {fit['kappa_min']:.2f}–"
             f"{fit['kappa_max']:.2f}; leave-one-out median error {fit['loo_median_rel_err']:.0%}), "
             f"in {fit['model']}. Probed layers L = the model's spectral matrices; training batch "
             f"{train_batch} samples.", "",
             f"| model | L | one probe (training steps) | overhead at interval {interval} | interval for 5 % | interval for 1 % |",
             "|---|---|---|---|---|---|"]
    for model in models:
        try:
            layers = predict_step_cost(model, 1, profile, next(iter(_kernel_methods(profile))))["matrices"]
        except (CostModelError, StopIteration):
            continue
        pred = predict_probe_cost(profile, layers, PROBE_TOP_K, PROBE_BATCH, train_batch, interval)
        lines.append(f"| {model} | {layers} | {pred['probe_in_steps']:,.0f} | {pred['overhead_at_interval']:.0%} | "
                     f"{pred['interval_for_5pct']:,.0f} | {pred['interval_for_1pct']:,.0f} |")
    return "\n".join(lines)


def _kernel_methods(profile: Mapping[str, Any]) -> list[str]:
    return [key.split("|")[0] for key in profile.get("kernels", {}) if key.endswith("|fp32")]


def format_fit_points(profile: Mapping[str, Any], methods: Sequence[str] | None = None) -> str:
    """Markdown: the measured points every fit rests on."""
    lines = ["| method | dtype | points | measured FLOP range | sustained rate 1/a | fixed cost b | "
             "fit median rel. err | held-out median rel. err |", "|---|---|---|---|---|---|---|---|"]
    for key, fit in sorted(profile.get("kernels", {}).items()):
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
    profile_path: Path
    plot_paths: list[Path] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)


def build_cost_report(
    results: str | os.PathLike[str],
    name: str,
    out_dir: str | os.PathLike[str] | None = None,
    profile_out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    ratio_sets: Sequence[str] = ("gpt2-small", "resnet18"),
    probe_results: str | os.PathLike[str] | None = None,
) -> CostReport:
    """Fit, save the device profile, plot, and write ``cost_report.md`` into ``out_dir``."""
    df = load_profile_rows(results)
    profile = build_device_profile(df, name, device, sources=[str(Path(results).resolve())])
    if probe_results is not None:
        # The probe constant comes from a separate probe-overhead job on the same device.
        profile["probe_model"] = fit_probe_constant(load_profile_rows(probe_results))
        profile["sources"].append(str(Path(probe_results).resolve()))
    out = Path(out_dir) if out_dir is not None else Path(results) / "cost_report"
    if out.suffix == ".parquet":
        out = out.parent / "cost_report"
    out.mkdir(parents=True, exist_ok=True)
    profile_path = save_device_profile(profile, profile_out or out / f"{name}.json")
    sel = df if device is None else df[df.get("device_name") == device]
    plots = plot_time_vs_flops(sel, out)
    acc = held_out_accuracy(sel)
    parts = [
        f"# Estimation cost on {profile['device_name']} ({profile['device']}, "
        f"{profile.get('threads')} threads, torch {profile.get('torch_version')})",
        "",
        f"Fit: {profile['fit']}. Held-out median relative error (every 3rd shape by FLOPs held out): "
        f"**{profile['heldout_median_rel_err']:.1%}**.",
        "",
        "## Ratios to the full SVD (measured, same run)",
    ]
    for s in ratio_sets:
        parts += ["", f"### {s}", "", format_ratios(method_ratios(sel, s))]
    parts += ["", "## Fits and the points they rest on", "", format_fit_points(profile), ""]
    if not acc.empty:
        parts += ["Held-out accuracy per fit:", "",
                  "| method | dtype | fit shapes | held out | median rel. err | max rel. err |",
                  "|---|---|---|---|---|---|"]
        parts += [f"| {r.method} | {r.dtype} | {r.n_fit} | {r.n_held_out} | {r.median_rel_err:.1%} | "
                  f"{r.max_rel_err:.1%} |" for r in acc.itertuples(index=False)]
        parts.append("")
    parts += ["## What it costs at scale (per optimizer step, sharded: LPT over N ranks + all-gather)", "",
              format_cost_table(cost_table(profile)), "",
              "## What one curvature probe costs at scale (K = 20 directions, probe batch 2048)", "",
              format_probe_table(profile), ""]
    text = "\n".join(parts)
    report_path = out / "cost_report.md"
    report_path.write_text(text)
    return CostReport(text, report_path, profile_path, plots, profile)


# -------------------------------------------------------------------------------- cost command
def format_breakdown(pred: Mapping[str, Any]) -> str:
    """The human-readable breakdown of one :func:`~analysis.cost_model.predict_step_cost`."""
    lo, hi = pred["measured_flops_range"]
    held = pred.get("fit_heldout_median_rel_err")
    lines = [
        f"{pred['model']} on {pred['ranks']} × {pred['device_name']} ({pred['device_profile']}), method "
        f"{pred['method']} ({pred['dtype']}), {'sharded (LPT)' if pred['sharded'] else 'replicated'}",
        f"  spectral matrices        {pred['matrices']} ({pred['elements'] / 1e9:.2f} B parameters, "
        f"{pred['flops_total'] / 1e12:.1f} TFLOP per step in total)",
        f"  serial compute           {fmt_seconds(pred['serial_compute_s'])} (one device doing every matrix)",
        f"  per-rank compute (max)   {fmt_seconds(pred['compute_s'])} (mean {fmt_seconds(pred['mean_rank_compute_s'])},"
        f" imbalance ×{pred['imbalance']:.2f})",
        f"  all-gather of updates    {fmt_seconds(pred['allgather_s'])} ({fmt_bytes(pred['allgather_bytes'])}; "
        f"{pred['collective_source']})",
        f"  total per step           {fmt_seconds(pred['total_s'])} (compute + all-gather, no overlap)",
        f"  fit                      t = {pred['fit_a']:.3e}·flops + {fmt_seconds(pred['fit_b'])} from "
        f"{pred['fit_points']} measured shapes, {lo:.2e}–{hi:.2e} FLOPs; median rel. err "
        f"{pred['fit_median_rel_err']:.1%}"
        + (f", held-out {held:.1%}" if held is not None and math.isfinite(held) else ""),
        f"  extrapolation            largest matrix is ×{pred['extrapolation']:.1f} the largest measured FLOPs",
    ]
    return "\n".join(lines)


def format_probe_breakdown(probe: Mapping[str, Any] | None) -> str:
    """The probe lines of the ``cost`` breakdown (or why there are none)."""
    if probe is None:
        return "  curvature probe          no probe constant in this device profile (see README: cost model)"
    lo, hi = probe["kappa_range"]
    return "\n".join([
        f"  curvature probe          K = {probe['top_k']} on L = {probe['layers']} layers, batch {probe['probe_batch']} "
        f"vs a {probe['train_batch']}-sample training step: κ·K·L·B_probe/B_train = "
        f"{probe['probe_in_steps']:,.0f} training steps per probe (κ = {probe['kappa']:.2f}, measured "
        f"{lo:.2f}–{hi:.2f} on {probe['kappa_points']} points)",
        f"  probe overhead           {probe['overhead_at_interval']:.0%} at an interval of {probe['interval']} steps; "
        f"5 % at {probe['interval_for_5pct']:,.0f}, 1 % at {probe['interval_for_1pct']:,.0f} steps",
    ])


def cost_cli(
    model: str,
    ranks: int,
    device_profile_path: str | os.PathLike[str],
    method: str = "damped_solve",
    dtype: str = "fp32",
    sharded: bool = True,
    probe_top_k: int = PROBE_TOP_K,
    probe_batch: int = PROBE_BATCH,
    train_batch: int = 1024,
    probe_interval: int = 100,
) -> int:
    """Print the breakdown for ``specbench cost --model M --ranks N --device PROFILE [--method]``
    (the optimizer step, then one curvature probe in training steps); returns the exit status
    (2 on a usage problem, with the message on stderr)."""
    try:
        if min(probe_top_k, probe_batch, train_batch, probe_interval) < 1:
            raise ValueError("--probe-k, --probe-batch, --train-batch and --probe-interval must be at least 1")
        profile = load_device_profile(device_profile_path)
        pred = predict_step_cost(model, ranks, profile, method, sharded=sharded, dtype=dtype)
    except (CostModelError, FileNotFoundError, ValueError) as exc:
        print(f"specbench: error: {exc}", file=sys.stderr)
        return 2
    probe = predict_probe_cost(profile, pred["matrices"], probe_top_k, probe_batch, train_batch, probe_interval)
    print(format_breakdown(pred))
    print(format_probe_breakdown(probe))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m analysis.cost_report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", help="results directory or profile.parquet (report mode)")
    parser.add_argument("--name", help="device profile name (report mode)")
    parser.add_argument("--out", help="report directory (default: <results>/cost_report)")
    parser.add_argument("--profile-out", help=f"device-profile JSON (default: <out>/<name>.json; "
                        f"the project keeps them in {DEVICE_PROFILE_DIR})")
    parser.add_argument("--device-name", help="device model when the results hold several")
    parser.add_argument("--probe-results", help="profile results with probe_overhead rows (fits the probe constant κ)")
    parser.add_argument("--cost", action="store_true", help="print one prediction instead of a report")
    parser.add_argument("--model", default="llama-70b")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--device", help="device profile (name or JSON path) for --cost")
    parser.add_argument("--method", default="damped_solve")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--replicated", action="store_true", help="every rank transforms every matrix")
    args = parser.parse_args(argv)
    if args.cost:
        if not args.device:
            parser.error("--cost needs --device")
        return cost_cli(args.model, args.ranks, args.device, args.method, args.dtype, not args.replicated)
    if not args.results or not args.name:
        parser.error("a report needs RESULTS and --name")
    try:
        rep = build_cost_report(args.results, args.name, args.out, args.profile_out, args.device_name,
                                probe_results=args.probe_results)
    except (CostModelError, FileNotFoundError) as exc:
        print(f"specbench: error: {exc}", file=sys.stderr)
        return 2
    print(rep.text)
    print(f"\nreport: {rep.report_path}; device profile: {rep.profile_path}; {len(rep.plot_paths)} plot(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
