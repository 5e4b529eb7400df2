"""The GPU end-to-end report (``gpu_e2e.md``) from the Parquet that ``scripts/gpu_e2e.sh`` writes.

Reads Parquet only (either layout, :mod:`analysis.dataset`); three sweeps share one results root:

- ``gpu-e2e-h200`` (configs/gpu/e2e_h200.yaml): a GPT-2-small-shaped model trained in bf16 by
  every optimizer, and two short AdamW trials ending with a curvature probe (mode full, mode
  kronecker);
- ``spectral-step-gpu`` (configs/profile/spectral_step_gpu.yaml): Spectral Newton's sharded and
  redundant step at P = 1;
- ``quickstart`` (configs/quickstart.yaml with ``resources.use_gpu=true``).

Tables:

1. per optimizer: median step time, tokens/s and MFU (model FLOPs/s per device over the
   datasheet dense peak at the training precision, ``runs.peak_flops_source`` names it), and the
   step time relative to Muon's. The paper (docs/science/spectral_newton.md, its §5) quotes
   about 1.8× for Spectral Newton against Muon at this size;
2. per probe mode and phase: seconds summed over the probed layers (the phases of one layer are
   disjoint and add up to its ``total``, :mod:`bench.probes.phase_timer`) and the peak memory;
3. the spectral step: seconds per distribution at each P (one GPU: P = 1 only, where sharded and
   redundant do the same work).

A fourth, short table lists the quickstart's trials. The published MFU reference for a 124M GPT-2
in bf16 is left as a marked placeholder until a cited number is filled in.

    python -m analysis.gpu_e2e RESULTS --out analysis/reports/gpu-h200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.dataset import load_table, locate
from analysis.tables import frame_grid

LM_SWEEP = "gpu-e2e-h200"
SPECTRAL_SWEEP = "spectral-step-gpu"
QUICKSTART_SWEEP = "quickstart"
#: Trials of the LM sweep whose label starts with this time the probe, not an optimizer.
PROBE_LABEL = "probe["
#: The baseline of the relative step time (the paper compares Spectral Newton with Muon).
BASELINE = "muon"
#: The probe's layer name for work shared by every layer (``bench.probes.curvature.SHARED``).
SHARED_LAYER = "*"
#: Where the published MFU reference goes once it is cited (never an invented number).
MFU_REFERENCE_MARK = "<!-- MFU-REFERENCE: pending -->"


def _of_sweep(frame: pd.DataFrame, sweep: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of one sweep (with ``columns``, every one of them, NaN where a file lacks it): a
    phase that failed on the GPU leaves an empty table, never a missing-column error."""
    rows = frame[frame["sweep_name"] == sweep] if "sweep_name" in frame else frame.iloc[0:0]
    return rows.reindex(columns=columns) if columns is not None else rows


def optimizer_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per optimizer trial of the LM sweep: step time, tokens/s, MFU, and
    ``step_time_vs_muon`` = median step time / Muon's median step time (NaN without a Muon row)."""
    lm = _of_sweep(runs, LM_SWEEP, ["optimizer_label", "status", "steps_completed", "num_parameters",
                                    "median_step_time_s", "median_tokens_per_s", "median_mfu", "peak_flops_source"])
    out = lm[~lm["optimizer_label"].astype(str).str.startswith(PROBE_LABEL)].copy()
    base = out.loc[out["optimizer_label"] == BASELINE, "median_step_time_s"]
    out["step_time_vs_muon"] = out["median_step_time_s"] / float(base.iloc[0]) if len(base) else float("nan")
    return out.sort_values("optimizer_label").reset_index(drop=True)


def probe_table(profile: pd.DataFrame) -> pd.DataFrame:
    """Seconds of each probe phase per mode, from the LM sweep's ``op = curvature_probe`` rows.

    A per-layer phase (grad_svd, hvp, factor_accumulation, eigh) is summed over the probed layers
    (``layers`` counts them; the layers' own ``total`` rows are that sum and are left out); a
    shared phase (layer ``*``: order, grad_pass, hvp_graph, factor_pass, allreduce) is taken as is,
    and the shared ``total`` is the whole probe's wall time (``whole probe``). Peak memory is the
    phase's largest (CUDA: absolute peak allocated while it ran)."""
    rows = _of_sweep(profile, LM_SWEEP, ["op", "probe_mode", "layer", "phase", "seconds", "peak_memory_bytes"])
    rows = rows[rows["op"] == "curvature_probe"]
    if rows.empty:
        return pd.DataFrame(columns=["probe_mode", "phase", "layers", "seconds", "peak_memory_gib"])
    shared = rows["layer"] == SHARED_LAYER
    rows = rows[shared | (rows["phase"] != "total")].copy()
    rows["phase"] = rows["phase"].where(~shared | (rows["phase"] != "total"), "whole probe")
    rows["layers"] = rows["layer"].where(~shared)
    out = rows.groupby(["probe_mode", "phase"], sort=False).agg(
        layers=("layers", "nunique"), seconds=("seconds", "sum"), peak_memory_bytes=("peak_memory_bytes", "max"),
    ).reset_index()
    out["peak_memory_gib"] = out.pop("peak_memory_bytes") / 2**30
    return out


def spectral_table(profile: pd.DataFrame) -> pd.DataFrame:
    """The ``op = spectral_step`` rows: seconds per distribution and P, with device and speedup."""
    cols = ["op", "device_name", "ranks", "phase", "method", "count", "seconds", "compute_seconds", "comm_seconds",
            "speedup_vs_redundant"]
    rows = _of_sweep(profile, SPECTRAL_SWEEP, cols)
    rows = rows[rows["op"] == "spectral_step"].drop(columns="op")
    return rows.rename(columns={"phase": "distribution", "count": "matrices"}).reset_index(drop=True)


def quickstart_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The quickstart's trials: status, steps, final evaluation metric, wall time."""
    cols = ["optimizer_label", "seed_index", "status", "steps_completed", "final_eval_metric", "median_step_time_s",
            "wall_time_s"]
    return _of_sweep(runs, QUICKSTART_SWEEP, cols).sort_values(["optimizer_label", "seed_index"]).reset_index(drop=True)


def render(results: str | Path) -> str:
    """The report's Markdown."""
    res = locate(results)
    runs, profile = load_table(res, "runs"), load_table(res, "profile")
    opt, probe, spec, quick = optimizer_table(runs), probe_table(profile), spectral_table(profile), quickstart_table(runs)
    device = ", ".join(sorted(set(spec.get("device_name", pd.Series(dtype=str)).dropna()))) or "unknown device"
    return "\n".join([
        "# GPU end to end (issue 17)", "",
        f"Measured on: {device}. Made by `scripts/gpu_e2e.sh`; rebuilt from the Parquet with "
        "`python -m analysis.gpu_e2e <data> --out <dir>`.", "",
        "## 1. Optimizers: GPT-2-small shape, bf16, one GPU", "",
        "Median over the logged steps (warm-up steps excluded). MFU = model FLOPs/s over the device's dense "
        "peak at the training precision (`peak_flops_source`). `step_time_vs_muon` = step time / Muon's; the "
        "paper quotes about 1.8× for Spectral Newton.", "",
        frame_grid(opt, digits=3, integers=["steps_completed", "num_parameters"]), "",
        f"Published MFU reference for a 124M GPT-2 in bf16 on a comparable GPU: {MFU_REFERENCE_MARK} "
        "(to be filled in with a cited source; none is assumed here).", "",
        "## 2. Curvature probe at this size: seconds per mode and phase", "",
        "Per-layer phases summed over the probed layers (`layers`); shared phases once; `whole probe` is the "
        "probe's wall time.", "",
        frame_grid(probe, digits=3, integers=["layers"]), "",
        "## 3. Spectral Newton step, sharded vs redundant", "",
        "One GPU is one rank, so only P = 1 is measured (sharded and redundant then do the same work); "
        "P > 1 needs several GPUs and `specbench profile`.", "",
        frame_grid(spec, digits=3, integers=["ranks", "matrices"]), "",
        "## Quickstart on the GPU", "",
        frame_grid(quick, digits=3, integers=["seed_index", "steps_completed"]), "",
    ])


def report(results: str | Path, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/gpu_e2e.md``; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_e2e.md"
    path.write_text(render(results))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.gpu_e2e", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results root (or consolidated directory) holding the three sweeps")
    parser.add_argument("--out", required=True, help="report directory")
    args = parser.parse_args(argv)
    if not Path(args.results).exists():
        print(f"specbench: error: results path {args.results} does not exist", file=sys.stderr)
        return 2
    print(report(args.results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
