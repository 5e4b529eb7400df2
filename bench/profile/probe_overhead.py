"""What Φ_k estimation costs inside training: each curvature-probe mode against the training step.

The suite's open question of what its quantities cost (docs/science/quantities.md) is answered
here for one model family (the built-in causal transformer on byte-level text). In one process
and one job this measures:

- the training step time (AdamW, forward + backward + step, median after warm-up);
- per probe mode (`bench.probes.settings.ProbeSettings.mode`):

  - ``full`` and ``kronecker``: one curvature probe (`bench.probes.run_probe`, every layer),
    in total and per phase summed over layers (gradient pass and SVDs, Kronecker factor
    accumulation, eigendecompositions, Hessian-vector products), the median of ``repeats``
    probes for the cheap ``kronecker`` mode;
  - ``online``: one training step with the capture armed (`bench.probes.online.OnlineCapture`)
    minus a plain one (``capture_seconds``, what the hooks add to the step) plus turning the
    capture into rows (``finish_seconds``); the probe batch is the training batch by
    construction, so the probe-batch axis is not measured for it;

at a default point (width, probe batch, K) and one factor at a time around it: widths, probe
batch sizes and K. Each row gives the probe/step ratio, the amortised overhead
probe / (interval · step) at the configured interval, and the intervals at which the overhead
falls to 5 % and 1 %. In mode ``full`` the HVPs dominate and grow as K × layers × probe batch;
``hvp_methods`` (measured at the default point) compares the exact HVP methods of
`bench.probes.hvp`.
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
    "factors": ("factor_accumulation", "factor_pass"),
    "eigh": ("eigh",),
    "grad_svd": ("grad_svd", "grad_pass"),
}
#: Probe batch sizes play no part in mode online (its batch is the training step's).
BATCHLESS_MODES = ("online",)


def plan_points(widths: list[int], batches: list[int], top_ks: list[int], default: tuple[int, int, int]) -> list[tuple[str, int, int, int]]:
    """(varied factor, width, probe batch, K): the default point, then one factor at a time."""
    w0, b0, k0 = default
    points = [("default", w0, b0, k0)]
    points += [("width", w, b0, k0) for w in widths if w != w0]
    points += [("probe_batch", w0, b, k0) for b in batches if b != b0]
    points += [("top_k", w0, b0, k) for k in top_ks if k != k0]
    return points


def point_key(row: dict[str, Any]) -> tuple[str, int, int, int, str, str]:
    """The measurement a result row belongs to: its :func:`plan_points` entry, probe mode and HVP
    method (rows written before the modes existed are mode ``full``, method ``auto``)."""
    mode = str(row.get("probe_mode") or "full")
    return (str(row["phase"]), int(row["shape_m"]), int(row["batch"]), int(row["k"]), mode,
            str(row.get("hvp_method") or ("auto" if mode == "full" else "")))


def plan_measurements(points: list[tuple[str, int, int, int]], modes: list[str], hvp_methods: list[str]
                      ) -> list[tuple[str, int, int, int, str, str]]:
    """Every (point, mode, HVP method) to measure: each mode at every point (mode online not along
    the probe-batch axis); mode full with the first HVP method everywhere and the others at the
    default point."""
    out = []
    for varied, width, batch, k in points:
        for mode in modes:
            if mode in BATCHLESS_MODES and varied == "probe_batch":
                continue
            if mode == "full":
                methods = hvp_methods if varied == "default" else hvp_methods[:1]
                out += [(varied, width, batch, k, mode, m) for m in methods]
            else:
                out.append((varied, width, batch, k, mode, ""))
    return out


def _train_step_times(workload: Workload, model: torch.nn.Module, batch: int, warmup: int, steps: int, seed: int
                      ) -> list[float]:
    """Seconds of ``steps`` AdamW training steps (the workload's) after ``warmup`` untimed ones."""
    import optimizers

    opt = optimizers.build("adamw", model, lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for i in range(warmup + steps):
        x, y = _train_batch(workload, batch, gen)
        t0 = time.perf_counter()
        workload.train_step(model, opt, x, y)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _train_batch(workload: Workload, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from bench.batching import fetch

    data = workload.split("train")
    return fetch(data, torch.randint(0, len(data), (batch,), generator=gen).tolist())


def _online_seconds(workload: Workload, model: torch.nn.Module, settings: Any, batch: int, seed: int,
                    step_s: float) -> tuple[float, float, Any]:
    """(seconds the armed capture adds to one training step, seconds to turn it into rows, the
    probe's rows) for mode online: one AdamW step with the hooks on, then ``finish``."""
    import optimizers
    from bench.probes.online import OnlineCapture
    from bench.probes.probe_batch import ProbeBatch
    from bench.probes.runner import ProbeResult, probe_selection

    opt = optimizers.build("adamw", model, lr=1e-3)
    x, y = _train_batch(workload, batch, torch.Generator().manual_seed(seed))
    workload.train_step(model, opt, x, y)  # untimed: optimizer state and allocator as in the plain steps
    probe_batch = ProbeBatch.from_dataset(workload.split("train"), batch, seed)
    capture = OnlineCapture(model, probe_selection(model, probe_batch, settings, torch.device("cpu")), settings,
                            torch.device("cpu"))
    t0 = time.perf_counter()
    workload.train_step(model, opt, x, y, watch=capture.watch)
    armed = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = capture.finish()
    finish = time.perf_counter() - t0
    return armed - step_s, finish, ProbeResult(out.curvature_rows, out.profile_rows, out.unsupported)


def measure_probe_overhead(
    *, widths: list[int], probe_batches: list[int], top_ks: list[int], default: tuple[int, int, int],
    modes: tuple[str, ...] | list[str] = ("full",), hvp_methods: tuple[str, ...] | list[str] = ("auto",),
    repeats: int = 1, n_layer: int = 2, n_head: int = 4, seq_len: int = 64, train_batch: int = 32,
    interval: int = 100, warmup: int = 3, steps: int = 10, max_bytes: int = 400_000, seed: int = 0,
    sweep_name: str = "", job_id: str = "", log=None, on_row=None, done: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Rows (``op="probe_overhead"``) for every measurement of :func:`plan_measurements` (see the
    module docstring). Runs on CPU in this process; the caller sets the thread count. ``repeats``:
    probes per measurement of the modes other than full (the median is reported).
    ``on_row(rows)`` is called with every row so far after each measurement (the caller persists
    them, so a kill loses only the one in progress). ``done``: rows of an earlier, interrupted run
    of the same job; their measurements are kept as they are and not repeated (each row is
    self-contained: its step time was measured next to its own probe)."""
    from bench.data import load_dataset
    from bench.models import build_model
    from bench.probes.runner import run_probe
    from bench.probes.settings import ProbeSettings
    from bench.workload import Workload

    bundle = load_dataset("builtin:text", {"seq_len": seq_len, "max_bytes": max_bytes}, seed)
    workload = Workload(bundle)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    plan = plan_measurements(plan_points(widths, probe_batches, top_ks, default), list(modes), list(hvp_methods))
    rows = [r for r in (done or []) if point_key(r) in set(plan)]
    measured = {point_key(r) for r in rows}
    plan = [p for p in plan if p not in measured]
    if not plan:
        return rows
    # One untimed pass at the cheapest point first: the first probe and the first steps of a
    # process pay for allocator growth and lazy initialisation that no later point pays.
    cheapest = min(plan, key=lambda p: p[1] * p[2] * p[3])
    for varied, width, batch, k, mode, method in [("warmup", *cheapest[1:]), *plan]:
        torch.manual_seed(seed)
        model = build_model("builtin:transformer", bundle.task, {"d_model": width, "n_layer": n_layer, "n_head": n_head})
        probe_batch = train_batch if mode in BATCHLESS_MODES else batch
        settings = ProbeSettings(batch_size=probe_batch, micro_batch_size=min(probe_batch, 256), top_k=k, seed=seed,
                                 mode=mode, hvp_method=method or "auto")
        # Steps are timed right before and right after the probe and pooled: on a shared machine
        # the load drifts, and the ratio should compare neighbouring measurements.
        before = _train_step_times(workload, model, train_batch, warmup, steps, seed)
        extra: dict[str, float] = {}
        if mode in BATCHLESS_MODES:
            step_s = statistics.median(before)
            parts = [_online_seconds(workload, model, settings, train_batch, seed + i, step_s)
                     for i in range(repeats)]
            capture_s = statistics.median(p[0] for p in parts)
            finish_s = statistics.median(p[1] for p in parts)
            probe_s, result = max(capture_s, 0.0) + finish_s, parts[-1][2]
            extra = {"capture_seconds": capture_s, "finish_seconds": finish_s}
        else:
            times, result = [], None
            for _ in range(1 if mode == "full" else repeats):
                t0 = time.perf_counter()
                result = run_probe(model, workload.loss, bundle.train, settings)
                times.append(time.perf_counter() - t0)
            probe_s = statistics.median(times)
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
            "probe_mode": mode, "hvp_method": method,
            "sweep_name": sweep_name, "trial_id": job_id, "model": "builtin:transformer",
            "shape_name": f"d{width}xL{n_layer}", "shape_m": width, "shape_n": seq_len, "k": k,
            "batch": batch, "probe_batch": probe_batch, "count": layers, "device": "cpu", "dtype": "fp32",
            "threads": torch.get_num_threads(), "repeats": 1 if mode == "full" else repeats, "warmup": warmup,
            "seconds": probe_s, "step_seconds": step_s, "train_batch": train_batch,
            "probe_to_step": probe_s / step_s, "interval": interval,
            "overhead_at_interval": probe_s / (interval * step_s),
            "interval_for_5pct": probe_s / (0.05 * step_s), "interval_for_1pct": probe_s / (0.01 * step_s),
            **{f"{name}_seconds": v for name, v in phases.items()}, **extra,
            "num_parameters": sum(p.numel() for p in model.parameters()), "started_at": started,
        }  # fmt: skip
        rows.append(row)
        if on_row is not None:
            on_row(list(rows))
        if log:
            log(f"probe overhead [{mode}{'/' + method if method else ''}, {varied}] d={width} B={probe_batch} "
                f"K={k}: probe {probe_s:.2f} s, step {step_s * 1e3:.1f} ms, {row['overhead_at_interval']:.2%} at "
                f"interval {interval}, 1 % at {row['interval_for_1pct']:.0f} steps")
    return rows
