"""What Φ_k estimation costs inside training: the curvature probe against the training step.

docs/README.md#open-questions leaves open what its quantities cost. For one model family (the built-in causal
transformer on byte-level text) this measures, in one process and one job:

- the training step time (AdamW, forward + backward + step, median after warm-up);
- one curvature probe (`bench.probes.run_probe`, every layer), in total and per phase summed
  over layers: the gradient pass and SVDs, Kronecker factor accumulation, eigendecompositions,
  and the exact Hessian-vector products;

at a default point (width, probe batch, K) and one factor at a time around it: widths, probe
batch sizes and K. Each row gives the probe/step ratio, the amortised overhead
probe / (interval · step) at the configured interval, and the intervals at which the overhead
falls to 5 % and 1 %. The HVPs dominate and grow as K × layers × probe batch: every direction
of every layer needs a double backward over the probe batch.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from bench.workload import Workload

PHASE_GROUPS = {
    "hvp": ("hvp", "hvp_graph"),
    "factors": ("factor_accumulation",),
    "eigh": ("eigh",),
    "grad_svd": ("grad_svd", "grad_pass"),
}


def plan_points(widths: list[int], batches: list[int], top_ks: list[int], default: tuple[int, int, int]) -> list[tuple[str, int, int, int]]:
    """(varied factor, width, probe batch, K): the default point, then one factor at a time."""
    w0, b0, k0 = default
    points = [("default", w0, b0, k0)]
    points += [("width", w, b0, k0) for w in widths if w != w0]
    points += [("probe_batch", w0, b, k0) for b in batches if b != b0]
    points += [("top_k", w0, b0, k) for k in top_ks if k != k0]
    return points


def point_key(row: dict[str, Any]) -> tuple[str, int, int, int]:
    """The :func:`plan_points` entry a result row belongs to."""
    return (str(row["phase"]), int(row["shape_m"]), int(row["batch"]), int(row["k"]))


def _train_step_times(workload: Workload, model: torch.nn.Module, batch: int, warmup: int, steps: int, seed: int) -> list[float]:
    """Seconds of ``steps`` AdamW training steps (the workload's) after ``warmup`` untimed ones."""
    import optimizers
    from bench.batching import fetch

    data = workload.split("train")
    opt = optimizers.build("adamw", model, lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for i in range(warmup + steps):
        idx = torch.randint(0, len(data), (batch,), generator=gen).tolist()
        x, y = fetch(data, idx)
        t0 = time.perf_counter()
        workload.train_step(model, opt, x, y)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def measure_probe_overhead(
    *, widths: list[int], probe_batches: list[int], top_ks: list[int], default: tuple[int, int, int],
    n_layer: int = 2, n_head: int = 4, seq_len: int = 64, train_batch: int = 32, interval: int = 100,
    warmup: int = 3, steps: int = 10, max_bytes: int = 400_000, seed: int = 0,
    sweep_name: str = "", job_id: str = "", log=None, on_row=None, done: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Rows (``op="probe_overhead"``) for every point of :func:`plan_points` (see the module
    docstring). Runs on CPU in this process; the caller sets the thread count. ``on_row(rows)``
    is called with every row so far after each point (the caller persists them, so a kill loses
    only the point in progress). ``done``: rows of an earlier, interrupted run of the same job;
    their points are kept as they are and not measured again (each row is self-contained: its
    step time was measured next to its own probe)."""
    from bench.data import load_dataset
    from bench.models import build_model
    from bench.probes.runner import run_probe
    from bench.probes.settings import ProbeSettings
    from bench.workload import Workload

    bundle = load_dataset("builtin:text", {"seq_len": seq_len, "max_bytes": max_bytes}, seed)
    workload = Workload(bundle)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    points = plan_points(widths, probe_batches, top_ks, default)
    rows = [r for r in (done or []) if point_key(r) in set(points)]
    measured = {point_key(r) for r in rows}
    points = [p for p in points if p not in measured]
    if not points:
        return rows
    # One untimed pass at the cheapest point first: the first probe and the first steps of a
    # process pay for allocator growth and lazy initialisation that no later point pays.
    cheapest = min(points, key=lambda p: p[1] * p[2] * p[3])
    for varied, width, batch, k in [("warmup", *cheapest[1:]), *points]:
        torch.manual_seed(seed)
        model = build_model("builtin:transformer", bundle.task, {"d_model": width, "n_layer": n_layer, "n_head": n_head})
        settings = ProbeSettings(batch_size=batch, micro_batch_size=min(batch, 256), top_k=k, seed=seed)
        # Steps are timed right before and right after the probe and pooled: on a shared machine
        # the load drifts, and the ratio should compare neighbouring measurements.
        before = _train_step_times(workload, model, train_batch, warmup, steps, seed)
        t0 = time.perf_counter()
        result = run_probe(model, workload.loss, bundle.train, settings)
        probe_s = time.perf_counter() - t0
        after = _train_step_times(workload, model, train_batch, 1, steps, seed + 1)
        step_s = statistics.median(before + after)
        if varied == "warmup":
            continue
        phases = {name: 0.0 for name in PHASE_GROUPS}
        for r in result.profile_rows:
            for name, members in PHASE_GROUPS.items():
                if r.get("phase") in members:
                    phases[name] += float(r.get("seconds") or 0.0)
        layers = len({r["layer"] for r in result.curvature_rows})
        row = {
            "op": "probe_overhead", "phase": varied, "method": "curvature_probe", "status": "ok",
            "sweep_name": sweep_name, "trial_id": job_id, "model": "builtin:transformer",
            "shape_name": f"d{width}xL{n_layer}", "shape_m": width, "shape_n": seq_len, "k": k,
            "batch": batch, "count": layers, "device": "cpu", "dtype": "fp32",
            "threads": torch.get_num_threads(), "repeats": 1, "warmup": warmup,
            "seconds": probe_s, "step_seconds": step_s, "train_batch": train_batch,
            "probe_to_step": probe_s / step_s, "interval": interval,
            "overhead_at_interval": probe_s / (interval * step_s),
            "interval_for_5pct": probe_s / (0.05 * step_s), "interval_for_1pct": probe_s / (0.01 * step_s),
            **{f"{name}_seconds": v for name, v in phases.items()},
            "num_parameters": sum(p.numel() for p in model.parameters()), "started_at": started,
        }  # fmt: skip
        rows.append(row)
        if on_row is not None:
            on_row(list(rows))
        if log:
            log(f"probe overhead [{varied}] d={width} B={batch} K={k}: probe {probe_s:.2f} s, "
                f"step {step_s * 1e3:.1f} ms, {row['overhead_at_interval']:.1%} at interval {interval}, "
                f"1 % at {row['interval_for_1pct']:.0f} steps")
    return rows
