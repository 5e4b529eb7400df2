"""The cost model's fits: kernel constants, device cost constants, the probe constant.

Reads the ``profile`` Parquet table only (``bench.profile`` writes it); never imports the
training code or torch (docs/ARCHITECTURE.md). The methods are the optimizers' own names —
Spectral Newton's routes ``svd``, ``gram``, ``solve``, ``polar`` and Muon's ``ns5`` — because the
profiler times exactly those code paths (``bench.profile.kernels``).

1. **Kernel fits.** Per (device, method, dtype): time ≈ a · flops + b, with a ≥ 0 (seconds per
   FLOP, the inverse of the sustained rate) and b ≥ 0 (fixed cost per call: launch, LAPACK
   set-up, Python), fitted on relative residuals (:mod:`analysis.relative_fit`).
2. **Held-out accuracy** (:func:`held_out_accuracy`): fit on a subset of shapes, report the
   median relative error on the others.
3. **Device cost constants** (:func:`fit_device_costs`): the kernel fits, the broadcast constants
   of the optimizer's communication (:mod:`analysis.comm_cost`) and their checks, the model
   catalogue (``op = shape`` rows) and the probe constant κ, as one JSON document,
   ``analysis/device_costs/<name>.json`` (``python -m analysis.cost_model fit RESULTS``).
   What one optimizer step costs at scale is priced from it by :mod:`analysis.step_cost`.
4. **Old method names.** Profile rows written before the optimizers' vocabulary
   (``methods_version`` absent: ``transform:gram``, ``damped_solve``, ...) are upgraded on
   reading (:func:`upgrade_method_names`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.comm_cost import comm_checks, fit_broadcast
from analysis.dataset import load_table, read_trial_file
from analysis.relative_fit import CostModelError, LinearFit, fit_line, fit_relative_nnls

#: Format version of the device-cost JSON (2: the optimizers' method names, broadcast constants).
COSTS_FORMAT = 2
#: Where the project keeps its device cost constants.
DEVICE_COSTS_DIR = Path(__file__).resolve().parent / "device_costs"
#: The methods, as the optimizers name them (``bench.profile.flops.METHODS``).
METHODS: tuple[str, ...] = ("svd", "gram", "solve", "polar", "ns5")
#: Methods of the profiler before ``methods_version`` 2 that are an optimizer's code path, and
#: their names now: the routes of ``spectral_transform`` and the quintic Newton–Schulz with
#: Muon's default coefficients. Every other old method (bare ``svd``, ``svd:<driver>``,
#: ``svd_lowrank``, ``gram_eigh``, ``damped_solve``, the ``matmul`` ceiling) is a kernel no
#: optimizer runs alone; upgrading drops those rows.
OLD_METHOD_NAMES: dict[str, str] = {
    "transform:svd": "svd", "transform:gram": "gram", "transform:solve": "solve", "transform:polar": "polar",
    "ns5": "ns5",
}  # fmt: skip


# ------------------------------------------------------------------------------------ fitting
def upgrade_method_names(df: pd.DataFrame) -> pd.DataFrame:
    """Kernel and catalogue rows with the old method names, renamed (:data:`OLD_METHOD_NAMES`)
    or dropped; rows with ``methods_version`` ≥ 2 and rows of other ops are kept as they are."""
    if df.empty or "op" not in df.columns or "method" not in df.columns:
        return df
    version = df["methods_version"] if "methods_version" in df.columns else pd.Series(np.nan, index=df.index)
    old = df["op"].isin(["kernel", "shape"]) & ~(version >= 2)
    keep = ~old | df["method"].isin(list(OLD_METHOD_NAMES))
    out = df[keep].copy()
    renamed = old[keep]
    out.loc[renamed, "method"] = out.loc[renamed, "method"].map(OLD_METHOD_NAMES)
    out.loc[renamed, "methods_version"] = 2
    return out.reset_index(drop=True)


def kernel_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The usable kernel measurements: op = kernel, status ok, positive time and FLOPs."""
    if df.empty or "op" not in df.columns:
        return pd.DataFrame()
    k = df[(df["op"] == "kernel") & (df["status"] == "ok")].copy()
    k = k[(k["seconds"] > 0) & (k["flops"] > 0)]
    k["device_key"] = _device_key(k)
    return k


def _device_key(df: pd.DataFrame) -> pd.Series:
    """Device identity for grouping: the device model name, else the device type."""
    name = df["device_name"] if "device_name" in df.columns else pd.Series([None] * len(df), index=df.index)
    return name.fillna(df.get("device", "unknown")).astype(str)


def fit_kernels(df: pd.DataFrame) -> dict[tuple[str, str, str], LinearFit]:
    """Fit time ≈ a·flops + b per (device, method, dtype) on every ok kernel row."""
    k = kernel_rows(df)
    fits: dict[tuple[str, str, str], LinearFit] = {}
    for (dev, method, dtype), g in k.groupby(["device_key", "method", "dtype"], sort=True):
        fits[(str(dev), str(method), str(dtype))] = fit_line(g["flops"].to_numpy(float), g["seconds"].to_numpy(float),
                                                             g["shape"].astype(str).tolist())
    return fits


def held_out_accuracy(df: pd.DataFrame, every: int = 3) -> pd.DataFrame:
    """Median relative error of each (device, method, dtype) fit on shapes it did not see.

    Shapes are sorted by FLOPs and every ``every``-th one (starting from the second) is held out,
    so the smallest and the largest stay in the fit: this measures interpolation between
    measured shapes, which is how the fit is used for models whose shapes were measured. Groups
    with fewer than 3 fitting shapes are skipped. Columns: device, method, dtype, n_fit,
    n_held_out, median_rel_err, max_rel_err.
    """
    k = kernel_rows(df)
    out = []
    for (dev, method, dtype), g in k.groupby(["device_key", "method", "dtype"], sort=True):
        g = g.sort_values("flops")
        shapes = list(dict.fromkeys(g["shape"]))
        held = set(shapes[1::every]) - {shapes[-1]}
        fit_part, test_part = g[~g["shape"].isin(held)], g[g["shape"].isin(held)]
        if fit_part["shape"].nunique() < 3 or test_part.empty:
            continue
        a, b = fit_relative_nnls(fit_part["flops"], fit_part["seconds"])
        rel = (a * test_part["flops"] + b - test_part["seconds"]).abs() / test_part["seconds"]
        out.append({"device": dev, "method": method, "dtype": dtype, "n_fit": len(fit_part),
                    "n_held_out": len(test_part), "median_rel_err": float(rel.median()),
                    "max_rel_err": float(rel.max()), "errors": rel.tolist()})
    return pd.DataFrame(out)


def overall_held_out_error(acc: pd.DataFrame) -> float:
    """Median relative error over every held-out point of every fit."""
    if acc.empty:
        return math.nan
    return float(np.median([e for errs in acc["errors"] for e in errs]))


# ------------------------------------------------------------------------- device cost constants
def load_profile_rows(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The profile table from a results directory (``load_table``) or one ``profile.parquet``,
    with old method names upgraded."""
    p = Path(path)
    if p.is_file():
        return upgrade_method_names(read_trial_file(p).to_pandas())
    return upgrade_method_names(load_table(p, "profile"))


def model_catalog(df: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Model → its spectral matrices {name, layer_type, m, n, count, flops: {method: FLOPs}}
    from the ``op = shape`` rows, in catalogue order."""
    if df.empty or "op" not in df.columns:
        return {}
    s = df[df["op"] == "shape"]
    out: dict[str, list[dict[str, Any]]] = {}
    for model, g in s.groupby("model", sort=True):
        shapes: dict[tuple[str, int, int], dict[str, Any]] = {}
        for r in g.itertuples(index=False):
            key = (r.shape_name, int(r.shape_m), int(r.shape_n))
            entry = shapes.setdefault(key, {"name": r.shape_name, "layer_type": r.layer_type, "m": int(r.shape_m),
                                            "n": int(r.shape_n), "count": int(r.count), "flops": {}})
            entry["flops"][r.method] = float(r.flops)
        out[str(model)] = list(shapes.values())
    return out


def fit_device_costs(
    df: pd.DataFrame, name: str, device: str | None = None, sources: Iterable[str] = (),
    comm: pd.DataFrame | None = None, probe: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Fit everything for one device and return the device-cost document (JSON-ready).

    ``df``: kernel and catalogue rows; ``comm``: collective and spectral-step rows measured on
    the same kind of device (default: those in ``df``); ``probe``: probe-overhead rows (default:
    those in ``df``). ``device`` selects a device (model name) when ``df`` holds several; with
    one it is taken. Raises :class:`CostModelError` when there is nothing to fit.
    """
    k = kernel_rows(df)
    if k.empty:
        raise CostModelError("the profile table has no usable kernel rows (op=kernel, status=ok)")
    devices = sorted(k["device_key"].unique())
    if device is None:
        if len(devices) > 1:
            raise CostModelError(f"several devices in the data ({', '.join(devices)}): choose one")
        device = devices[0]
    if device not in devices:
        raise CostModelError(f"no kernel rows for device {device!r} (have: {', '.join(devices)})")
    sel = df[_device_key(df) == device] if "device_name" in df.columns else df
    acc = held_out_accuracy(sel)
    kernels = {}
    for (_, method, dtype), fit in fit_kernels(sel).items():
        row = acc[(acc["method"] == method) & (acc["dtype"] == dtype)] if not acc.empty else acc
        if not row.empty:
            fit.heldout_median_rel_err = float(row["median_rel_err"].iloc[0])
        kernels[f"{method}|{dtype}"] = asdict(fit)
    comm = df if comm is None else comm
    broadcast = fit_broadcast(comm)
    checks = comm_checks(comm, broadcast) if broadcast else pd.DataFrame()
    first = k[k["device_key"] == device].iloc[0]
    return {
        "format": COSTS_FORMAT,
        "name": name,
        "device": str(first.get("device", "")),
        "device_name": device,
        "threads": int(first["threads"]) if pd.notna(first.get("threads")) else None,
        "torch_version": str(first.get("torch_version", "")),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": list(sources),
        "fit": "time ≈ a·flops + b, a,b ≥ 0, least squares on relative residuals (weights 1/t²)",
        "heldout_median_rel_err": overall_held_out_error(acc),
        "kernels": kernels,
        "broadcast": broadcast,
        "comm_checks": checks.to_dict("records"),
        "models": model_catalog(sel if "op" in sel.columns and (sel["op"] == "shape").any() else df),
        "probe": probe_overhead(sel),
        "probe_model": fit_probe_constant(df if probe is None else probe),
        "probe_models": fit_probe_constants(df if probe is None else probe),
    }


def save_device_costs(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the JSON atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def _jsonable(value: Any) -> Any:
    """NaN/inf → null (JSON has neither), numpy scalars → Python."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def load_device_costs(path_or_name: str | os.PathLike[str]) -> dict[str, Any]:
    """Device cost constants by path, or by name from :data:`DEVICE_COSTS_DIR`.

    Every problem (no such file, not JSON, not a device-cost document, an older or newer
    format) is a :class:`CostModelError` naming the file."""
    p = Path(path_or_name)
    if not p.is_file():
        cand = DEVICE_COSTS_DIR / f"{path_or_name}.json"
        if not cand.is_file():
            known = ", ".join(sorted(x.stem for x in DEVICE_COSTS_DIR.glob("*.json"))) or "none"
            raise CostModelError(f"no device cost constants {str(path_or_name)!r} (a JSON path, or one of: {known})")
        p = cand
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CostModelError(f"{p} is not a device-cost JSON file ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kernels"), dict):
        raise CostModelError(f"{p} is not a device-cost document (no 'kernels' mapping)")
    if doc.get("format") != COSTS_FORMAT:
        raise CostModelError(f"{p} has format {doc.get('format')}; this reader knows {COSTS_FORMAT} (refit it: "
                             "python -m analysis.cost_model fit RESULTS --name NAME)")
    return doc


def kernel_fit(costs: Mapping[str, Any], method: str, dtype: str = "fp32") -> dict[str, Any]:
    """The fitted constants of ``method``/``dtype`` in a device-cost document."""
    key = f"{method}|{dtype}"
    if key not in costs["kernels"]:
        have = ", ".join(sorted(costs["kernels"]))
        raise CostModelError(f"device cost constants {costs.get('name')!r} have no fit for {key} (have: {have})")
    return costs["kernels"][key]


# ------------------------------------------------------------------------- probe cost at scale
def probe_overhead(df: pd.DataFrame, step_time_s: float | None = None) -> dict[str, Any] | None:
    """Cost of the curvature probe from its ``op = curvature_probe`` rows, when there are any.

    Placeholder until probe runs at scale exist: it reports the median over probes (trial, step)
    of the probe's total wall time (shared row, layer ``*``, phase ``total``), the median seconds
    per phase summed over layers, and — given the training step time — the probe's cost in
    training steps. None when the table has no probe rows.
    """
    if df.empty or "op" not in df.columns:
        return None
    p = df[df["op"] == "curvature_probe"]
    if p.empty:
        return None
    keys = [c for c in ("trial_path", "trial_id", "step") if c in p.columns]
    totals = p[(p["layer"] == "*") & (p["phase"] == "total")]
    total = float(totals.groupby(keys, dropna=False)["seconds"].sum().median()) if not totals.empty else math.nan
    layer_rows = p[(p["layer"] != "*") & (p["phase"] != "total")]
    phases = {}
    if not layer_rows.empty:
        per = layer_rows.groupby([*keys, "phase"], dropna=False)["seconds"].sum().reset_index()
        phases = {str(ph): float(g["seconds"].median()) for ph, g in per.groupby("phase")}
    out: dict[str, Any] = {"probes": int(totals.groupby(keys, dropna=False).ngroups) if not totals.empty else 0,
                           "probe_seconds": total, "phase_seconds": phases}
    if step_time_s:
        out["probe_in_steps"] = total / step_time_s
    return out


#: The probe's own defaults (bench/probes/settings.py): top-K directions, probe batch (samples).
PROBE_TOP_K = 20
PROBE_BATCH = 2048


#: The probe modes (bench/probes/settings.py) and the unit each one's cost scales with, relative
#: to a training step: full — K·L·B_probe/B_train (one exact HVP per direction, layer and probe
#: sample); kronecker — B_probe/B_train (two forward/backward passes over the probe batch, the
#: rows' sketches and projections); online — 1 (the work on one training step's own rows).
PROBE_UNITS: dict[str, str] = {
    "full": "K · L · B_probe / B_train", "kronecker": "B_probe / B_train", "online": "1",
}


def _probe_units(rows: pd.DataFrame, mode: str) -> pd.Series:
    per_batch = rows["batch"].astype(float) / rows["train_batch"].astype(float)
    if mode == "full":
        return rows["k"].astype(float) * rows["count"].astype(float) * per_batch
    if mode == "kronecker":
        return per_batch
    return pd.Series(1.0, index=rows.index)


def fit_probe_constant(df: pd.DataFrame, mode: str = "full") -> dict[str, Any] | None:
    """κ of one probe mode's cost model, from ``op = probe_overhead`` rows of that mode (one probe
    and the training step timed in the same job, bench/profile/probe_overhead.py; rows without a
    mode are ``full``; mode full uses the rows of its default HVP method):

        probe seconds / training-step seconds ≈ κ · units,   units = :data:`PROBE_UNITS`[mode]

    In mode full every one of the K directions of each of the L probed layers costs one exact
    Hessian-vector product over the probe batch, so κ is the cost of one HVP per sample in
    training-step-per-sample units; in mode kronecker κ is the probe's passes over the batch in
    training steps per training batch; in mode online κ is a number of training steps. Returns
    the median κ, its range, the number of points and the leave-one-out median relative error of
    predicted probe time (each point predicted from the median of the others); None without rows
    of the mode.
    """
    needed = ["seconds", "step_seconds", "k", "count", "batch", "train_batch"]
    if df.empty or "op" not in df.columns or any(c not in df.columns for c in needed):
        return None
    rows = df[(df["op"] == "probe_overhead") & (df.get("status", "ok") == "ok")].dropna(subset=needed)
    modes = rows["probe_mode"].fillna("full") if "probe_mode" in rows.columns else pd.Series("full", index=rows.index)
    rows = rows[modes == mode]
    if mode == "full" and "hvp_method" in rows.columns:
        rows = rows[rows["hvp_method"].fillna("auto").isin(["", "auto"])]
    if rows.empty:
        return None
    if mode == "online" and "probe_batch" in rows.columns:
        rows = rows.assign(batch=rows["probe_batch"])
    kappa = (rows["seconds"].astype(float) / rows["step_seconds"].astype(float) / _probe_units(rows, mode)).to_numpy()
    errors = []
    for i in range(len(kappa)):
        others = np.delete(kappa, i)
        if len(others):
            errors.append(abs(float(np.median(others)) - kappa[i]) / kappa[i])
    return {
        "kappa": float(np.median(kappa)), "kappa_min": float(kappa.min()), "kappa_max": float(kappa.max()),
        "points": int(len(kappa)),
        "loo_median_rel_err": float(np.median(errors)) if errors else None,
        "model": f"probe_s / step_s ≈ κ · {PROBE_UNITS[mode]}", "mode": mode,
    }


def fit_probe_constants(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """:func:`fit_probe_constant` of every mode that has rows."""
    return {m: fit for m in PROBE_UNITS if (fit := fit_probe_constant(df, m)) is not None}


def predict_probe_cost(
    costs: Mapping[str, Any], layers: int, top_k: int = PROBE_TOP_K, probe_batch: int = PROBE_BATCH,
    train_batch: int = 1024, interval: int = 100, mode: str = "full",
) -> dict[str, Any] | None:
    """One probe's cost in training steps in ``mode`` for a model with ``layers`` probed
    matrices, from the device cost constants' κ of that mode (:func:`fit_probe_constant`); None
    when they have none."""
    fits = costs.get("probe_models") or ({"full": costs["probe_model"]} if costs.get("probe_model") else {})
    fit = fits.get(mode)
    if not fit or not fit.get("kappa"):
        return None
    units = {"full": top_k * layers * probe_batch / train_batch, "kronecker": probe_batch / train_batch,
             "online": 1.0}[mode]
    steps = float(fit["kappa"]) * units
    return {
        "mode": mode, "kappa": float(fit["kappa"]), "kappa_range": (fit.get("kappa_min"), fit.get("kappa_max")),
        "kappa_points": fit.get("points"), "loo_median_rel_err": fit.get("loo_median_rel_err"),
        "units": PROBE_UNITS[mode], "layers": layers, "top_k": top_k, "probe_batch": probe_batch,
        "train_batch": train_batch, "interval": interval, "probe_in_steps": steps,
        "overhead_at_interval": steps / interval, "interval_for_5pct": steps / 0.05, "interval_for_1pct": steps / 0.01,
    }


# ------------------------------------------------------------------------------------ command
def main(argv: list[str] | None = None) -> int:
    """``python -m analysis.cost_model fit RESULTS --name NAME [--out JSON] [--device DEV]
    [--comm-results DIR] [--probe-results DIR]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m analysis.cost_model", description="fit device cost constants")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fit", help="fit the cost model on profile rows and write the device-cost JSON")
    add_fit_arguments(p)
    p.add_argument("--out", help=f"JSON path (default: {DEVICE_COSTS_DIR}/<name>.json)")
    args = parser.parse_args(argv)
    try:
        doc = fit_from_paths(args.results, args.name, args.device, args.comm_results, args.probe_results)
    except (CostModelError, FileNotFoundError) as exc:
        print(f"cost_model: error: {exc}", file=sys.stderr)
        return 2
    out = save_device_costs(doc, args.out or DEVICE_COSTS_DIR / f"{args.name}.json")
    print(f"device cost constants '{args.name}' ({doc['device_name']}): {len(doc['kernels'])} kernel fits, "
          f"held-out median relative error {doc['heldout_median_rel_err']:.1%} → {out}")
    return 0


def add_fit_arguments(p: Any) -> None:
    """The inputs of a fit (``results``, ``--name``, ``--device``, ``--comm-results``,
    ``--probe-results``), shared by this command and ``python -m launchers.cost fit``."""
    p.add_argument("results", help="a results directory (…/<name>) or one profile.parquet file with the kernel rows")
    p.add_argument("--name", required=True, help="name of the device cost constants (e.g. cpu-2core)")
    p.add_argument("--device", help="device model name when the data holds several")
    p.add_argument("--comm-results", help="profile results with collective / spectral_step rows (broadcast constants)")
    p.add_argument("--probe-results", nargs="+", help="profile results with probe_overhead rows (the probe "
                   "constants κ per mode); several paths are read as one table")


def fit_from_paths(
    results: str | os.PathLike[str], name: str, device: str | None = None,
    comm_results: str | os.PathLike[str] | None = None,
    probe_results: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> dict[str, Any]:
    """:func:`fit_device_costs` on the profile tables under these paths (sources recorded);
    ``probe_results`` may be several paths (e.g. one probe-overhead run per mode)."""
    probes = [probe_results] if isinstance(probe_results, (str, os.PathLike)) else list(probe_results or [])
    paths = [p for p in (results, comm_results) if p is not None] + probes
    return fit_device_costs(
        load_profile_rows(results), name, device, sources=[str(p) for p in paths],
        comm=load_profile_rows(comm_results) if comm_results is not None else None,
        probe=pd.concat([load_profile_rows(p) for p in probes], ignore_index=True) if probes else None,
    )


if __name__ == "__main__":
    raise SystemExit(main())
