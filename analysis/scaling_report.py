"""What one step costs, from the ``profile`` table: optimizer steps, the distributed spectral step
and the probe overhead.

``specbench profile`` writes ``op=optimizer_step`` rows (`bench.profile.optimizer_step`: one per
optimizer and model), ``op=spectral_step`` rows (`bench.profile.spectral_step`: one per
distribution and P) and ``op=probe_overhead`` rows (`bench.profile.probe_overhead`: one per
probe setting). This module turns them into the report's tables and two figures — speedup vs
ranks, probe overhead vs width (and batch, K) — and states the issue's targets against them::

    python -m analysis.scaling_report RESULTS [--out DIR]

Reads only Parquet.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.dataset import load_table
from analysis.plots import figure, save
from analysis.tables import frame_grid

#: The probe's default batch (bench.probes.settings.ProbeSettings.batch_size; duplicated because
#: analysis does not import bench).
PROBE_DEFAULT_BATCH = 2048
#: Targets of the estimation-cost issue.
SPEEDUP_TARGET = 1.6  # sharded vs redundant at P = 2
OVERHEAD_TARGET = 0.05  # probe overhead at the configured interval (100 steps)


@dataclass
class ScalingReport:
    text: str
    step: pd.DataFrame
    overhead: pd.DataFrame
    plot_paths: list[Path] = field(default_factory=list)


def spectral_step_table(profile: pd.DataFrame) -> pd.DataFrame:
    """One row per (P, distribution): step time, compute, communication, bytes, imbalance,
    speedup over redundant at the same P, and the largest parameter deviation from redundant."""
    cols = ["ranks", "phase", "method", "shape_set", "seconds", "compute_seconds", "comm_seconds", "comm_seconds_min",
            "bytes", "load_imbalance", "speedup_vs_redundant", "max_abs_diff_vs_redundant", "max_abs_param", "device"]
    rows = _op_rows(profile, "spectral_step", cols).rename(columns={"phase": "distribution"})
    rows = _as_int(rows, ["ranks", "bytes"])
    return rows.sort_values(["ranks", "distribution"]).reset_index(drop=True)


def _op_rows(profile: pd.DataFrame, op: str, cols: list[str]) -> pd.DataFrame:
    """The ``op`` rows of the profile table, with those of ``cols`` that are present (an empty
    frame with every column when there are none)."""
    if profile.empty or "op" not in profile.columns or not (profile["op"] == op).any():
        return pd.DataFrame(columns=cols)
    rows = profile[profile["op"] == op]
    return rows[[c for c in cols if c in rows.columns]]


def _as_int(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Counts back to integers (the profile table mixes row kinds, so they arrive as floats)."""
    df = df.copy()
    for c in cols:
        if c in df.columns and df[c].notna().all():
            df[c] = df[c].round().astype("int64")
    return df


def optimizer_step_table(profile: pd.DataFrame) -> pd.DataFrame:
    """One row per optimizer and model: the median step, its ratio to the baseline (AdamW) and to
    the reference (Muon), both measured in the same job, and the amortised periodic parts."""
    cols = ["model", "label", "method", "matrices", "seconds", "ratio_to_baseline", "ratio_to_reference",
            "regular_step_s", "refresh_step_s", "period"]
    rows = _op_rows(profile, "optimizer_step", cols).rename(columns={"label": "optimizer"})
    return _as_int(rows, ["matrices"]).reset_index(drop=True)


def step_ratio_summary(steps: pd.DataFrame) -> pd.DataFrame:
    """Optimizers × models: each step relative to AdamW (every optimizer) and to Muon (the
    Spectral Newton methods), the two tables of the README."""
    if steps.empty:
        return pd.DataFrame()
    out = steps.pivot_table(index="optimizer", columns="model", values="ratio_to_baseline", sort=False)
    out.columns = [f"{m} / AdamW" for m in out.columns]
    if "ratio_to_reference" in steps.columns:
        ref = steps.pivot_table(index="optimizer", columns="model", values="ratio_to_reference", sort=False)
        ref.columns = [f"{m} / Muon" for m in ref.columns]
        out = out.join(ref)
    return out.reset_index()


def probe_overhead_table(profile: pd.DataFrame) -> pd.DataFrame:
    """The ``op=probe_overhead`` rows: what was varied, the point, probe and step seconds, the
    ratio, overhead at the interval, the intervals for 5 % and 1 %, and the phase split."""
    cols = ["phase", "shape_m", "batch", "k", "count", "seconds", "step_seconds", "probe_to_step", "interval",
            "overhead_at_interval", "interval_for_5pct", "interval_for_1pct", "hvp_seconds", "grad_svd_seconds",
            "factors_seconds", "eigh_seconds"]
    out = _op_rows(profile, "probe_overhead", cols).rename(
        columns={"phase": "varied", "shape_m": "width", "batch": "probe_batch", "k": "top_k", "count": "layers"})
    return _as_int(out, ["width", "probe_batch", "top_k", "layers", "interval"]).reset_index(drop=True)


def extrapolate_to_batch(overhead: pd.DataFrame, batch: int = PROBE_DEFAULT_BATCH) -> dict[str, float] | None:
    """Probe seconds at ``batch`` from a least-squares line through the default point and the
    probe-batch axis (probe time is linear in the batch: every phase is a sum over samples), and
    the overhead and 1 % interval that follow with the default point's step time. None with
    fewer than two batch points, or when ``batch`` was measured."""
    pts = overhead[overhead["varied"].isin(["default", "probe_batch"])]
    if len(pts) < 2 or (pts["probe_batch"] == batch).any():
        return None
    slope, intercept = np.polyfit(pts["probe_batch"].astype(float), pts["seconds"].astype(float), 1)
    default = overhead[overhead["varied"] == "default"].iloc[0]
    seconds = float(slope * batch + intercept)
    step = float(default["step_seconds"])
    return {"batch": batch, "seconds": seconds, "overhead_at_interval": seconds / (default["interval"] * step),
            "interval_for_1pct": seconds / (0.01 * step), "interval_for_5pct": seconds / (0.05 * step),
            "points": len(pts)}


FACTOR_COLUMNS = {"width": "width", "probe_batch": "probe_batch", "top_k": "top_k"}


def growth_exponents(overhead: pd.DataFrame) -> pd.DataFrame:
    """How probe time grows with each factor: the least-squares slope of log(probe seconds) on
    log(factor) along that factor's axis (the default point included), i.e. the exponent p of
    time ∝ factor^p with the other two factors held at their defaults. The closed form of the
    HVP phase predicts p = 1 for the probe batch and for K; for width it lies between 1 (per-token
    work of the probe's fixed-size parts) and 2 (the d×d matmuls)."""
    default = overhead[overhead["varied"] == "default"]
    rows = []
    for factor, col in FACTOR_COLUMNS.items():
        pts = pd.concat([default, overhead[overhead["varied"] == factor]])
        if pts[col].nunique() < 2:
            continue
        x, y = np.log(pts[col].astype(float)), np.log(pts["seconds"].astype(float))
        slope = float(np.polyfit(x, y, 1)[0])
        rows.append({"factor": factor, "values": ", ".join(str(int(v)) for v in sorted(pts[col])),
                     "points": len(pts), "exponent": slope})
    return pd.DataFrame(rows, columns=["factor", "values", "points", "exponent"])


def plot_speedup(step: pd.DataFrame, out: Path) -> Path | None:
    """Sharded speedup over redundant vs P, with the ideal line y = P."""
    sharded = step[step["distribution"] == "sharded"]
    if sharded.empty:
        return None
    fig = figure()
    ax = fig.add_subplot()
    ax.plot(sharded["ranks"], sharded["speedup_vs_redundant"], "o-", label="sharded / redundant (measured)")
    ranks = np.array(sorted(sharded["ranks"].unique()), dtype=float)
    ax.plot(ranks, ranks, "--", color="0.5", label="ideal (= P)")
    ax.set_xlabel("ranks P")
    ax.set_ylabel("speedup of the spectral step")
    ax.set_xticks(ranks)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, out / "spectral_step_speedup.png")


def plot_overhead(overhead: pd.DataFrame, out: Path) -> Path | None:
    """Probe/step ratio against each varied factor (log-log), one panel per factor."""
    factors = [("width", "width (d_model)"), ("probe_batch", "probe batch (samples)"), ("top_k", "K (directions per layer)")]
    default = overhead[overhead["varied"] == "default"]
    present = [(f, lbl) for f, lbl in factors if (overhead["varied"] == f).any()]
    if default.empty or not present:
        return None
    fig = figure(4 * len(present), 3.8)
    for i, (factor, label) in enumerate(present):
        ax = fig.add_subplot(1, len(present), i + 1)
        pts = pd.concat([default, overhead[overhead["varied"] == factor]]).sort_values(factor)
        ax.loglog(pts[factor], pts["probe_to_step"], "o-")
        ax.set_xlabel(label)
        ax.set_ylabel("probe time / training step time")
        ax.grid(True, which="both", alpha=0.3)
    return save(fig, out / "probe_overhead.png")


def build_scaling_report(results: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> ScalingReport:
    """Tables, figures and target statements; writes ``scaling_report.md`` into ``out_dir``."""
    profile = load_table(results, "profile")
    opt_steps = optimizer_step_table(profile)
    step = spectral_step_table(profile)
    overhead = probe_overhead_table(profile)
    out = Path(out_dir) if out_dir is not None else Path(results) / "scaling_report"
    plots = [p for p in (plot_speedup(step, out) if not step.empty else None,
                         plot_overhead(overhead, out) if not overhead.empty else None) if p is not None]
    parts = ["# Optimizer steps, distributed spectral step and probe overhead", ""]
    if not opt_steps.empty:
        parts += ["## One optimizer step (interleaved, same job; ratios to AdamW and to Muon)", "",
                  frame_grid(step_ratio_summary(opt_steps)), "", frame_grid(opt_steps), ""]
    if not step.empty:
        parts += ["## Spectral Newton step: owner-rank sharded vs redundant", "", frame_grid(step), ""]
        at2 = step[(step["ranks"] == 2) & (step["distribution"] == "sharded")]
        if len(at2):
            s = float(at2["speedup_vs_redundant"].iloc[0])
            dev = float(at2["max_abs_diff_vs_redundant"].iloc[0])
            verdict = "met" if s >= SPEEDUP_TARGET else "NOT met"
            parts += [f"Target ≥ {SPEEDUP_TARGET}× at P = 2: **{s:.2f}× ({verdict})**; parameters after the same "
                      f"steps differ from redundant by at most {dev:.2e}.", ""]
    if not overhead.empty:
        parts += ["## Curvature probe vs training step (built-in transformer)", "", frame_grid(overhead), ""]
        d = overhead[overhead["varied"] == "default"]
        if len(d):
            r = d.iloc[0]
            verdict = "met" if r.overhead_at_interval < OVERHEAD_TARGET else "NOT met"
            parts += [f"Default point (width {int(r.width)}, probe batch {int(r.probe_batch)}, K {int(r.top_k)}): "
                      f"overhead **{r.overhead_at_interval:.1%}** at interval {int(r.interval)} (target < "
                      f"{OVERHEAD_TARGET:.0%}: {verdict}); 5 % at an interval of {r.interval_for_5pct:.0f} steps, "
                      f"1 % at {r.interval_for_1pct:.0f} steps. HVPs are {r.hvp_seconds / r.seconds:.0%} of the probe.",
                      ""]
            growth = growth_exponents(overhead)
            if not growth.empty:
                parts += ["Growth of the probe time along each axis (others at the default; exponent p of "
                          "time ∝ factor^p, a least-squares slope in log-log):", "", frame_grid(growth), ""]
            ext = extrapolate_to_batch(overhead)
            if ext is not None:
                parts += [f"At the probe's default batch of {ext['batch']} (not measured here; a line through the "
                          f"{ext['points']} measured batch sizes, probe time being linear in the batch): "
                          f"{ext['seconds']:.0f} s per probe, **{ext['overhead_at_interval']:.1%}** at interval "
                          f"{int(r.interval)}, 5 % at {ext['interval_for_5pct']:.0f} steps, 1 % at "
                          f"{ext['interval_for_1pct']:.0f} steps.", ""]
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    text = "\n".join(parts) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling_report.md").write_text(text)
    return ScalingReport(text, step, overhead, plots)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m analysis.scaling_report", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a profile results directory")
    parser.add_argument("--out", help="report directory (default: <results>/scaling_report)")
    args = parser.parse_args(argv)
    if not Path(args.results).exists():
        print(f"specbench: error: results path {args.results} does not exist", file=sys.stderr)
        return 2
    rep = build_scaling_report(args.results, args.out)
    print(rep.text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
