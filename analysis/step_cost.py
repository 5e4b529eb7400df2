"""What the matrix work of one optimizer step costs on P devices, priced as the optimizer runs it.

From device cost constants (:mod:`analysis.cost_model`) and a model's catalogue of matrices, for a
sharded matrix optimizer (``optimizers/distributed.py``, ``OwnerSharding``):

- **assignment**: every matrix is owned by one rank. The owners and the bucket plan come from the
  caller (a :data:`Planner`): the launcher passes the optimizer's own functions
  (``launchers.cost.owner_sharding_plan``: ``lpt_assign`` on m·n·min(m, n), then
  ``plan_buckets``), so the scheduler exists once, in the optimizer, and analysis never imports
  it. With more ranks P than matrices N the ranks beyond N own nothing: the plan is made on
  min(P, N) ranks (LPT then gives every matrix a rank of its own, the owners it gives on P
  ranks), while the broadcasts still reach all P ranks.
- **compute** of rank r, from the kernel fit t(f) = a·f + b of the method: Spectral Newton stacks
  a rank's equal-shape matrices into one batched call (``SpectralNewton._spectral_group_step``),

      C_r = Σ_{shapes s} (a · n_{r,s} · f_s + b)     (svd, gram, solve, polar),

  Muon loops over its matrices, C_r = Σ_{i ∈ r} (a · f_i + b) (ns5). The step waits for the
  slowest rank: compute = max_r C_r.
- **communication**: the owners' new values, broadcast bucket by bucket,
  T_sync(P) = Σ_b t(P, B_b) (:mod:`analysis.comm_cost`).
- **total** = compute + T_sync (the sync starts after the compute: no overlap).

Replicated (``distribution: redundant``): every rank computes every matrix, nothing is sent.
Reads only data derived from Parquet.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.comm_cost import assumed_fit, sync_seconds
from analysis.cost_model import CostModelError, kernel_fit, load_device_costs

#: Methods the optimizer runs as one batched call per shape (Spectral Newton's routes).
BATCHED_METHODS: frozenset[str] = frozenset({"svd", "gram", "solve", "polar"})


@dataclass(frozen=True)
class ShardingPlan:
    """The optimizer's owner sharding of a model's matrices on some ranks."""

    owners: tuple[int, ...]
    """Owner rank of each matrix, in the optimizer's matrix order."""
    bucket_bytes: tuple[int, ...]
    """Payload of each broadcast bucket, in the order they are issued."""


#: (matrix shapes (m, n) in the optimizer's order, ranks) → the plan on that many ranks.
Planner = Callable[[Sequence[tuple[int, int]], int], ShardingPlan]


def expand_matrices(shapes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The catalogue's shape rows expanded into one entry per matrix, in the model's parameter
    order: layer by layer, each layer's roles in catalogue order (exact for the transformers of
    the catalogue, whose every role has the layer count; for ResNets the order of the stages'
    blocks is approximate, which moves bucket boundaries only)."""
    out: list[Mapping[str, Any]] = []
    for layer in range(max((int(s["count"]) for s in shapes), default=0)):
        out += [s for s in shapes if int(s["count"]) > layer]
    return out


def _rank_compute(matrices: Sequence[Mapping[str, Any]], owners: Sequence[int], ranks: int,
                  method: str, a: float, b: float) -> list[float]:
    """C_r of every rank (module docstring)."""
    loads = [0.0] * ranks
    if method in BATCHED_METHODS:
        calls = Counter((r, (int(s["m"]), int(s["n"]))) for s, r in zip(matrices, owners, strict=True))
        flops = {(int(s["m"]), int(s["n"])): float(s["flops"][method]) for s in matrices}
        for (r, shape), n in calls.items():
            loads[r] += a * n * flops[shape] + b
    else:
        for s, r in zip(matrices, owners, strict=True):
            loads[r] += a * float(s["flops"][method]) + b
    return loads


def predict_step_cost(
    model_name: str,
    ranks: int,
    device_costs: Mapping[str, Any] | str | os.PathLike[str],
    method: str = "solve",
    planner: Planner | None = None,
    sharded: bool = True,
    dtype: str = "fp32",
    shapes: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Predicted per-step cost of the matrix work of ``model_name`` on ``ranks`` devices.

    ``shapes`` overrides the catalogue of the device costs. A sharded prediction on more than
    one rank needs the ``planner``. Returns the breakdown (seconds, bytes, FLOPs, where every
    constant came from, and how far the prediction extrapolates beyond the measured shapes).
    """
    costs = device_costs if isinstance(device_costs, Mapping) else load_device_costs(device_costs)
    if ranks < 1:
        raise CostModelError("ranks must be ≥ 1")
    fit = kernel_fit(costs, method, dtype)
    if shapes is None:
        models = costs.get("models", {})
        if model_name not in models:
            raise CostModelError(f"model {model_name!r} is not in the catalogue of the device cost constants "
                                 f"(have: {', '.join(sorted(models)) or 'none'})")
        shapes = models[model_name]
    missing = [f"{s['m']}x{s['n']}" for s in shapes if method not in s.get("flops", {})]
    if missing:
        raise CostModelError(f"the catalogue has no {method} FLOPs for {model_name} {', '.join(missing)}")
    a, b = float(fit["a"]), float(fit["b"])
    matrices = expand_matrices(shapes)
    n = len(matrices)
    serial = sum(_rank_compute(matrices, [0] * n, 1, method, a, b))
    out: dict[str, Any] = {"buckets": 0, "sync_bytes": 0.0, "sync_s": 0.0, "assignment_ranks": 1}
    if sharded and ranks > 1:
        if planner is None:
            raise CostModelError("a sharded prediction needs the optimizer's planner (launchers.cost)")
        world = min(ranks, n)
        plan = planner([(int(s["m"]), int(s["n"])) for s in matrices], world)
        loads = _rank_compute(matrices, plan.owners, world, method, a, b)
        comm = costs.get("broadcast") or assumed_fit(ranks)
        compute, mean = max(loads), sum(loads) / ranks
        out.update(buckets=len(plan.bucket_bytes), sync_bytes=float(sum(plan.bucket_bytes)),
                   sync_s=sync_seconds(comm, ranks, plan.bucket_bytes), assignment_ranks=world,
                   comm_source=_comm_source(comm))
    else:
        compute, mean = serial, serial
        out["comm_source"] = "none (replicated)" if ranks > 1 else "none (1 rank)"
    largest = max(float(s["flops"][method]) for s in shapes)
    return {
        "model": model_name, "ranks": ranks, "method": method, "dtype": dtype, "sharded": sharded,
        "device_costs": costs.get("name"), "device_name": costs.get("device_name"), "matrices": n,
        "elements": sum(int(s["m"]) * int(s["n"]) for s in matrices),
        "flops_total": sum(float(s["flops"][method]) for s in matrices),
        "serial_compute_s": serial, "compute_s": compute, "mean_rank_compute_s": mean,
        "imbalance": compute / mean if mean > 0 else math.nan, **out, "total_s": compute + out["sync_s"],
        "fit_a": a, "fit_b": b, "fit_points": fit["n"], "measured_flops_range": (fit["x_min"], fit["x_max"]),
        "largest_matrix_flops": largest, "extrapolation": largest / fit["x_max"] if fit["x_max"] > 0 else math.inf,
        "fit_median_rel_err": fit.get("median_rel_err"),
        "fit_heldout_median_rel_err": fit.get("heldout_median_rel_err"),
    }  # fmt: skip


def _comm_source(comm: Mapping[str, Any]) -> str:
    if comm.get("source") != "measured":
        return str(comm.get("source"))
    held = comm.get("heldout_by_ranks") or {}
    check = ", ".join(f"P = {p}: {e:.0%}" for p, e in held.items())
    return (f"measured {comm['backend']} {comm['algorithm'].replace('_', ' ')} broadcasts at P = "
            f"{', '.join(str(p) for p in comm['ranks'])}: ℓ = {comm['latency_s'] * 1e6:.0f} µs, "
            f"{1 / comm['seconds_per_byte'] / 1e9:.2f} GB/s" + (f"; held-out error {check}" if check else ""))
