"""Cost model of the spectral kernels and of the per-step work of Spectral Newton at scale.

Reads the ``profile`` Parquet table only (``bench.profile`` writes it); never imports the
training code or torch (docs/ARCHITECTURE.md). Four parts:

1. **Kernel fits.** Per (device, method, dtype): time ≈ a · flops + b, with a ≥ 0 (seconds per
   FLOP, the inverse of the sustained rate) and b ≥ 0 (fixed cost per call: launch, LAPACK
   set-up, Python). Relative error is what matters — the measured times span five decades, and
   an ordinary fit would be decided by the largest shapes alone — so the fit minimises the sum of
   squared *relative* residuals Σ ((a·f_i + b − t_i) / t_i)², i.e. least squares with weights
   1/t_i², under a, b ≥ 0 (exact two-variable NNLS: the unconstrained solution, else the better
   of the two one-variable boundary solutions).
2. **Collectives (α–β).** Per (device, op, ranks) from ``op = collective`` rows (bytes,
   seconds): time ≈ α + β · bytes, fitted the same way. For prediction at another rank count
   the fit is read as a ring: α = (p₀ − 1)·latency and β = (p₀ − 1)/(p₀ · busbw), so
   t(p, B) = (p − 1)·latency + (p − 1)/p · B / busbw (NCCL-tests' bus-bandwidth convention).
   Without such rows, :data:`DEFAULT_INTERCONNECT` (stated assumptions) is used and flagged.
3. **Whole-model step cost** (:func:`predict_step_cost`): each spectral matrix of the model
   (shape counts from the ``op = shape`` catalogue rows) costs a·flops + b; sharded, matrices are
   assigned to ranks by LPT (longest first onto the least-loaded rank), the step's spectral
   compute is the most loaded rank's, and the updates are then all-gathered (every rank needs
   every update): Σ count·m·n·update_bytes bytes. Compute and communication are added (no
   overlap assumed: an upper bound of the exposed time).
4. **Held-out accuracy** (:func:`held_out_accuracy`): fit on a subset of shapes, report the
   median relative error on the others.

A *device profile* is the JSON of the fitted constants plus the model catalogue and the measured
points, ``analysis/device_profiles/<name>.json``; ``python -m analysis.cost_model fit RESULTS``
writes one.
"""

from __future__ import annotations

import heapq
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.dataset import load_table, read_trial_file

#: Format version of the device-profile JSON.
PROFILE_FORMAT = 1
#: Where the project keeps its device profiles.
DEVICE_PROFILE_DIR = Path(__file__).resolve().parent / "device_profiles"

#: Interconnect assumed when a profile has no collective measurements (documented, flagged in
#: every prediction that uses it): an 8-GPU NVLink node (≈ 360 GB/s all-gather bus bandwidth,
#: what NCCL reaches on H100/H200 NVLink 4) and 400 Gb/s InfiniBand per GPU between nodes
#: (≈ 40 GB/s bus bandwidth), 10 µs per ring step.
DEFAULT_INTERCONNECT: dict[str, float] = {
    "gpus_per_node": 8,
    "intra_node_busbw_Bps": 360e9,
    "inter_node_busbw_Bps": 40e9,
    "latency_s": 10e-6,
}

#: Bytes per element of the all-gathered updates (bf16, as large-scale training communicates).
UPDATE_BYTES = 2


class CostModelError(ValueError):
    """The data cannot support the requested fit or prediction (message says why)."""


# ------------------------------------------------------------------------------------ fitting
@dataclass
class LinearFit:
    """time ≈ a · x + b fitted on relative error (x = FLOPs, or bytes for collectives)."""

    a: float
    b: float
    n: int
    x_min: float
    x_max: float
    median_rel_err: float
    max_rel_err: float
    heldout_median_rel_err: float = math.nan
    points: list[list[Any]] = field(default_factory=list)
    """Measured points [x, seconds, shape] the fit rests on."""

    def predict(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.a * x + self.b

    @property
    def rate(self) -> float:
        """Sustained rate 1/a (FLOP/s or bytes/s)."""
        return 1.0 / self.a if self.a > 0 else math.inf


def fit_relative_nnls(x: Sequence[float], t: Sequence[float]) -> tuple[float, float]:
    """(a, b) ≥ 0 minimising Σ ((a·x_i + b − t_i)/t_i)².

    Dividing each equation a·x_i + b = t_i by t_i gives the rows [x_i/t_i, 1/t_i]·[a, b] = 1:
    ordinary least squares on relative residuals. With two unknowns the non-negative solution is
    the unconstrained one when it is feasible, else the better boundary solution (a only or b
    only), each in closed form.
    """
    x = np.asarray(x, dtype=float)
    t = np.asarray(t, dtype=float)
    if len(x) == 0 or np.any(t <= 0):
        raise CostModelError("a fit needs at least one point and positive times")
    A = np.column_stack([x / t, 1.0 / t])
    y = np.ones_like(t)

    def loss(a: float, b: float) -> float:
        return float(np.sum((A @ np.array([a, b]) - y) ** 2))

    if len(x) >= 2 and np.ptp(x) > 0:
        sol, *_ = np.linalg.lstsq(A, y, rcond=None)
        if sol[0] >= 0 and sol[1] >= 0:
            return float(sol[0]), float(sol[1])
    candidates = []
    for col in (0, 1):
        c = A[:, col]
        coef = max(float(c @ y / (c @ c)), 0.0) if c @ c > 0 else 0.0
        candidates.append((coef, 0.0) if col == 0 else (0.0, coef))
    return min(candidates, key=lambda ab: loss(*ab))


def _fit(x: np.ndarray, t: np.ndarray, labels: Sequence[Any]) -> LinearFit:
    a, b = fit_relative_nnls(x, t)
    rel = np.abs((a * x + b) - t) / t
    order = np.argsort(x)
    return LinearFit(
        a=a, b=b, n=len(x), x_min=float(x.min()), x_max=float(x.max()),
        median_rel_err=float(np.median(rel)), max_rel_err=float(rel.max()),
        points=[[float(x[i]), float(t[i]), labels[i]] for i in order],
    )


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
        fits[(str(dev), str(method), str(dtype))] = _fit(g["flops"].to_numpy(float), g["seconds"].to_numpy(float),
                                                          g["shape"].astype(str).tolist())
    return fits


def fit_collectives(df: pd.DataFrame) -> dict[tuple[str, str, int], LinearFit]:
    """Fit time ≈ α + β·bytes per (device, op, ranks) on ``op = collective`` rows (α = b, β = a)."""
    if df.empty or "op" not in df.columns:
        return {}
    c = df[(df["op"] == "collective") & (df["status"].fillna("ok") == "ok")].copy()
    c = c[(c["seconds"] > 0) & (c["bytes"] > 0)] if not c.empty else c
    if c.empty:
        return {}
    c["device_key"] = _device_key(c)
    fits = {}
    for (dev, op, ranks), g in c.groupby(["device_key", "method", "ranks"], sort=True):
        x = g["bytes"].to_numpy(float)
        fits[(str(dev), str(op), int(ranks))] = _fit(x, g["seconds"].to_numpy(float), [int(v) for v in x])
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


# ------------------------------------------------------------------------------ device profile
def load_profile_rows(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The profile table from a results directory (``load_table``) or one ``profile.parquet``."""
    p = Path(path)
    if p.is_file():
        return read_trial_file(p).to_pandas()
    return load_table(p, "profile")


def model_catalog(df: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Model → its spectral matrices {name, layer_type, m, n, count, flops: {method: FLOPs}}
    from the ``op = shape`` rows."""
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


def build_device_profile(
    df: pd.DataFrame, name: str, device: str | None = None, sources: Iterable[str] = ()
) -> dict[str, Any]:
    """Fit everything for one device and return the device-profile document (JSON-ready).

    ``device`` selects a device (model name) when the table holds several; with one it is
    taken. Raises :class:`CostModelError` when there is nothing to fit.
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
    collectives = {f"{op}|{ranks}": asdict(fit) for (_, op, ranks), fit in fit_collectives(sel).items()}
    dev_rows = k[k["device_key"] == device]
    first = dev_rows.iloc[0]
    return {
        "format": PROFILE_FORMAT,
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
        "collectives": collectives,
        "models": model_catalog(sel if "op" in sel.columns and (sel["op"] == "shape").any() else df),
        "probe": probe_overhead(sel),
        "probe_model": fit_probe_constant(df),
    }


def save_device_profile(profile: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the JSON atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(profile), indent=1, sort_keys=True))
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


def load_device_profile(path_or_name: str | os.PathLike[str]) -> dict[str, Any]:
    """A device profile by path, or by name from :data:`DEVICE_PROFILE_DIR`."""
    p = Path(path_or_name)
    if not p.is_file():
        cand = DEVICE_PROFILE_DIR / f"{path_or_name}.json"
        if not cand.is_file():
            known = ", ".join(sorted(x.stem for x in DEVICE_PROFILE_DIR.glob("*.json"))) or "none"
            raise CostModelError(f"no device profile {path_or_name!r} (a JSON path, or one of: {known})")
        p = cand
    doc = json.loads(p.read_text())
    if doc.get("format", 0) > PROFILE_FORMAT:
        raise CostModelError(f"device profile {p} has format {doc['format']}; this reader knows {PROFILE_FORMAT}")
    return doc


# --------------------------------------------------------------------------------- prediction
def kernel_fit(profile: Mapping[str, Any], method: str, dtype: str = "fp32") -> dict[str, Any]:
    """The fitted constants of ``method``/``dtype`` in a device profile."""
    key = f"{method}|{dtype}"
    if key not in profile["kernels"]:
        have = ", ".join(sorted(profile["kernels"]))
        raise CostModelError(f"device profile {profile.get('name')!r} has no fit for {key} (have: {have})")
    return profile["kernels"][key]


def lpt_schedule(times: Sequence[float], ranks: int) -> list[float]:
    """Per-rank loads of the LPT schedule: longest job first onto the least-loaded rank
    (a 4/3-approximation of the optimal makespan)."""
    loads = [(0.0, r) for r in range(max(1, ranks))]
    heapq.heapify(loads)
    for t in sorted(times, reverse=True):
        load, r = heapq.heappop(loads)
        heapq.heappush(loads, (load + t, r))
    return sorted((load for load, _ in loads), reverse=True)


def allgather_seconds(
    total_bytes: float, ranks: int, profile: Mapping[str, Any] | None = None, op: str = "all_gather"
) -> tuple[float, str]:
    """Time of an all-gather whose *output* is ``total_bytes`` on ``ranks`` ranks, and where the
    constants came from (``measured …`` or ``assumed …``)."""
    p = int(ranks)
    if p <= 1 or total_bytes <= 0:
        return 0.0, "none (1 rank)"
    fits = {k: v for k, v in (profile or {}).get("collectives", {}).items() if k.split("|")[0] == op}
    usable = {int(k.split("|")[1]): v for k, v in fits.items() if int(k.split("|")[1]) > 1}
    if usable:
        # The measured world size closest to p (in log scale) carries the best link constants.
        p0 = min(usable, key=lambda r: abs(math.log(r) - math.log(p)))
        fit = usable[p0]
        latency = fit["b"] / (p0 - 1)
        busbw = (p0 - 1) / (p0 * fit["a"]) if fit["a"] > 0 else math.inf
        source = f"measured {op} α–β at {p0} ranks, ring-extrapolated"
    else:
        d = DEFAULT_INTERCONNECT
        latency = d["latency_s"]
        busbw = d["intra_node_busbw_Bps"] if p <= d["gpus_per_node"] else d["inter_node_busbw_Bps"]
        source = (f"assumed ring: {busbw / 1e9:.0f} GB/s bus bandwidth, {latency * 1e6:.0f} µs/step "
                  "(no collective rows in the profile)")
    return (p - 1) * latency + (p - 1) / p * total_bytes / busbw, source


def predict_step_cost(
    model_name: str,
    ranks: int,
    device_profile: Mapping[str, Any] | str | os.PathLike[str],
    method: str = "damped_solve",
    sharded: bool = True,
    dtype: str = "fp32",
    update_bytes: int = UPDATE_BYTES,
    shapes: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Predicted per-step cost of the spectral work of ``model_name`` on ``ranks`` devices.

    Every spectral matrix i (the model's catalogue, or ``shapes``) costs
    t_i = a·flops_i(method) + b. ``sharded``: matrices are spread over the ranks by LPT, each rank
    transforms its own, and the updates are all-gathered (Σ count·m·n·``update_bytes`` bytes);
    the step costs max-rank compute + all-gather. Not sharded: every rank transforms every matrix
    (Σ t_i), no extra communication. Returns the breakdown (seconds, bytes, FLOPs, where every
    constant came from, and how far the prediction extrapolates beyond the measured shapes).
    """
    profile = device_profile if isinstance(device_profile, Mapping) else load_device_profile(device_profile)
    if ranks < 1:
        raise CostModelError("ranks must be ≥ 1")
    if shapes is None:
        models = profile.get("models", {})
        if model_name not in models:
            raise CostModelError(f"model {model_name!r} is not in the device profile's catalogue "
                                 f"(have: {', '.join(sorted(models)) or 'none'})")
        shapes = models[model_name]
    fit = kernel_fit(profile, method, dtype)
    times: list[float] = []
    total_flops = 0.0
    max_flops = 0.0
    elements = 0
    for s in shapes:
        f = float(s["flops"][method]) if "flops" in s and method in s["flops"] else math.nan
        if not math.isfinite(f):
            raise CostModelError(f"the catalogue has no {method} FLOPs for {model_name} {s['m']}x{s['n']}")
        t = fit["a"] * f + fit["b"]
        times += [t] * int(s["count"])
        total_flops += f * s["count"]
        max_flops = max(max_flops, f)
        elements += int(s["m"]) * int(s["n"]) * int(s["count"])
    serial = float(sum(times))
    if sharded and ranks > 1:
        loads = lpt_schedule(times, ranks)
        compute, mean_load = loads[0], serial / ranks
        gather_bytes = float(elements * update_bytes)
        gather, comm_source = allgather_seconds(gather_bytes, ranks, profile)
    else:
        compute, mean_load, gather_bytes, gather, comm_source = serial, serial, 0.0, 0.0, "none (replicated)"
    return {
        "model": model_name, "ranks": ranks, "method": method, "dtype": dtype, "sharded": sharded,
        "device_profile": profile.get("name"), "device_name": profile.get("device_name"),
        "matrices": len(times), "elements": elements, "flops_total": total_flops,
        "serial_compute_s": serial, "compute_s": compute, "mean_rank_compute_s": mean_load,
        "imbalance": compute / mean_load if mean_load > 0 else math.nan,
        "allgather_bytes": gather_bytes, "allgather_s": gather, "collective_source": comm_source,
        "total_s": compute + gather,
        "fit_a": fit["a"], "fit_b": fit["b"], "fit_points": fit["n"],
        "measured_flops_range": (fit["x_min"], fit["x_max"]),
        "largest_matrix_flops": max_flops,
        "extrapolation": max_flops / fit["x_max"] if fit["x_max"] > 0 else math.inf,
        "fit_median_rel_err": fit.get("median_rel_err"),
        "fit_heldout_median_rel_err": fit.get("heldout_median_rel_err"),
    }


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


# ------------------------------------------------------------------------- probe cost at scale
#: The probe's own defaults (bench/probes/settings.py): top-K directions, probe batch (samples).
PROBE_TOP_K = 20
PROBE_BATCH = 2048


def fit_probe_constant(df: pd.DataFrame) -> dict[str, Any] | None:
    """κ of the probe's cost model, from ``op = probe_overhead`` rows (one probe and the training
    step timed in the same job, bench/profile/probe_overhead.py):

        probe seconds / training-step seconds ≈ κ · K · L · B_probe / B_train

    Every one of the K directions of each of the L probed layers costs one exact Hessian-vector
    product, a double backward over the probe batch (≈ 3 forward-backward passes per sample), so
    κ is the cost of one HVP per sample in training-step-per-sample units (≈ 3 by that count,
    less where fixed per-step costs inflate a small training step). Returns the median κ, its
    range, the number of points and the leave-one-out median relative error of predicted probe
    time; None without probe-overhead rows.
    """
    needed = ["seconds", "step_seconds", "k", "count", "batch", "train_batch"]
    if df.empty or "op" not in df.columns or any(c not in df.columns for c in needed):
        return None
    rows = df[(df["op"] == "probe_overhead") & (df.get("status", "ok") == "ok")].dropna(subset=needed)
    if rows.empty:
        return None
    units = rows["k"].astype(float) * rows["count"].astype(float) * rows["batch"].astype(float) / rows["train_batch"].astype(float)
    kappa = (rows["seconds"].astype(float) / rows["step_seconds"].astype(float) / units).to_numpy()
    errors = []
    for i in range(len(kappa)):
        others = np.delete(kappa, i)
        if len(others):
            errors.append(abs(float(np.median(others)) - kappa[i]) / kappa[i])
    return {
        "kappa": float(np.median(kappa)), "kappa_min": float(kappa.min()), "kappa_max": float(kappa.max()),
        "points": int(len(kappa)),
        "loo_median_rel_err": float(np.median(errors)) if errors else None,
        "model": "probe_s / step_s ≈ κ · K · L · B_probe / B_train",
    }


def predict_probe_cost(
    profile: Mapping[str, Any], layers: int, top_k: int = PROBE_TOP_K, probe_batch: int = PROBE_BATCH,
    train_batch: int = 1024, interval: int = 100,
) -> dict[str, Any] | None:
    """One probe's cost in training steps for a model with ``layers`` probed matrices, from the
    profile's κ (:func:`fit_probe_constant`); None when the profile has no probe constant."""
    fit = profile.get("probe_model")
    if not fit or not fit.get("kappa"):
        return None
    steps = float(fit["kappa"]) * top_k * layers * probe_batch / train_batch
    return {
        "kappa": float(fit["kappa"]), "kappa_range": (fit.get("kappa_min"), fit.get("kappa_max")),
        "kappa_points": fit.get("points"), "layers": layers, "top_k": top_k, "probe_batch": probe_batch,
        "train_batch": train_batch, "interval": interval, "probe_in_steps": steps,
        "overhead_at_interval": steps / interval, "interval_for_5pct": steps / 0.05, "interval_for_1pct": steps / 0.01,
    }


# ------------------------------------------------------------------------------------ command
def main(argv: list[str] | None = None) -> int:
    """``python -m analysis.cost_model fit RESULTS --name NAME [--out JSON] [--device DEV]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m analysis.cost_model", description="fit a device profile")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fit", help="fit the cost model on profile rows and write the device-profile JSON")
    p.add_argument("results", help="a results directory (…/<name>) or one profile.parquet file")
    p.add_argument("--name", required=True, help="device profile name")
    p.add_argument("--out", help=f"JSON path (default: {DEVICE_PROFILE_DIR}/<name>.json)")
    p.add_argument("--device", help="device model name when the data holds several")
    args = parser.parse_args(argv)
    try:
        df = load_profile_rows(args.results)
        prof = build_device_profile(df, args.name, args.device, sources=[str(Path(args.results).resolve())])
    except (CostModelError, FileNotFoundError) as exc:
        print(f"cost_model: error: {exc}", file=sys.stderr)
        return 2
    out = save_device_profile(prof, args.out or DEVICE_PROFILE_DIR / f"{args.name}.json")
    print(f"device profile '{args.name}' ({prof['device_name']}): {len(prof['kernels'])} kernel fits, "
          f"held-out median relative error {prof['heldout_median_rel_err']:.1%} → {out}")
    for key, fit in sorted(prof["kernels"].items()):
        print(f"  {key:<24} a={fit['a']:.3e} s/FLOP ({1 / fit['a'] / 1e9 if fit['a'] else math.inf:8.2f} GFLOP/s)"
              f"  b={fit['b'] * 1e3:8.3f} ms  n={fit['n']:<3} fit err {fit['median_rel_err']:.1%}"
              f"  held-out {fit['heldout_median_rel_err'] if fit['heldout_median_rel_err'] is not None else math.nan:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
