"""The owner sharding's communication, timed as the optimizer runs it: ``op = collective`` rows.

A sharded matrix optimizer ends every step with :meth:`optimizers.distributed.OwnerSharding.sync_`:
the owners' new parameter values go to every rank in bucketed broadcasts (one ``broadcast`` per
bucket of at most ``bucket_cap_mb``, issued asynchronously in plan order, then waited for and
copied into the parameters). This module times exactly that call, inside an initialised process
group of P ranks (every rank calls it; it is collective):

- ``method = broadcast``: the sync of a single parameter of B bytes (one bucket, owner rank 0)
  for every configured size — the points the cost model fits its per-bucket constants on
  (``analysis.comm_cost``: t(P, B) = r(P)·ℓ + s(P)·B/bw);
- ``method = owner_sync``: the sync of every matrix of a few GPT-2 blocks with the optimizer's
  own owner assignment and bucket plan — the check of the fit: its prediction is the sum over
  the recorded buckets (``bucket_bytes``), measured here, never fitted on.

Each timed sync starts after a barrier, so the ranks start together and the time is the
communication alone (inside a training step, ranks also wait for the slowest rank's compute);
``seconds`` is the median over rounds of the slowest rank's ``comm_time_s`` (the optimizer's own
metric, which includes the copies into the parameters). Sizes are interleaved round by round, so
a burst of foreign load hits all of them alike.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone
from typing import Any

import torch
import torch.distributed as dist

from bench.profile.config import CollectivesConfig
from bench.profile.kernels import quantile
from bench.profile.shapes import build_model
from bench.timing import synchronize

MIB = 2**20


def _max_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def plan_owner_sync(
    shapes: list[tuple[int, ...]], world: int, bucket_cap_mb: float = 25.0, dtype: torch.dtype = torch.float32
) -> tuple[list[int], list[int]]:
    """(owner rank of each matrix, payload bytes of each broadcast bucket in issue order) of
    ``OwnerSharding`` on ``world`` ranks for parameters of these ``shapes`` and ``dtype``, without
    a process group: the optimizer's own functions (``lpt_assign`` on ``matrix_cost``, then
    ``plan_buckets``) on meta tensors. The cost model prices this plan; the collective rows
    record the plan the real ``OwnerSharding`` ran, and a test checks the two agree."""
    from optimizers.distributed import lpt_assign, matrix_cost, plan_buckets

    owners = lpt_assign([matrix_cost(s) for s in shapes], world)
    params = [torch.empty(s, dtype=dtype, device="meta") for s in shapes]
    # OwnerSharding's own cap: max(1, int(bucket_cap_mb · 2²⁰)) bytes.
    buckets = plan_buckets(params, owners, world, max(1, int(bucket_cap_mb * MIB)))
    return owners, [b.nbytes for b in buckets]


def model_matrices(blocks: int, dim: int, device: torch.device) -> list[torch.Tensor]:
    """The matrix parameters a matrix optimizer gets for ``blocks`` GPT-2 blocks of width ``dim``,
    in its order (model order, routed by ``optimizers.param_groups.assign_parameters``)."""
    from optimizers.param_groups import MATRIX, assign_parameters

    model = build_model("gpt2-small", str(device), blocks, dim)
    groups = assign_parameters(model)
    return [p.detach() for name, p in model.named_parameters() if groups[name] == MATRIX]


class _Sync:
    """One parameter list, its owner sharding and its timed syncs."""

    def __init__(self, method: str, params: list[torch.Tensor], bucket_cap_mb: float):
        from optimizers.distributed import OwnerSharding

        self.method = method
        self.params = params
        self.sharding = OwnerSharding(params, "sharded", bucket_cap_mb)
        self.seconds: list[float] = []

    def run(self, device: torch.device, record: bool) -> None:
        dist.barrier()
        synchronize(device)
        self.sharding.sync_(self.params)
        elapsed = _max_over_ranks(self.sharding.metrics()["comm_time_s"], device)
        if record:
            self.seconds.append(elapsed)

    def row(self) -> dict[str, Any]:
        buckets = [b.nbytes for b in self.sharding.buckets]
        ordered = sorted(self.seconds)
        return {
            "method": self.method, "seconds": statistics.median(ordered), "seconds_min": ordered[0],
            "seconds_p25": quantile(ordered, 0.25), "seconds_p75": quantile(ordered, 0.75),
            "bytes": float(sum(buckets)), "buckets": len(buckets), "bucket_bytes": json.dumps(buckets),
            "count": len(self.params), "repeats": len(ordered),
        }


def measure_collectives(
    cfg: CollectivesConfig, *, seed: int = 0, device: torch.device | None = None, sweep_name: str = "",
    job_id: str = "",
) -> list[dict[str, Any]]:
    """Time the configured syncs on this process group (collective: every rank calls it; every
    rank returns the same rows)."""
    device = device or torch.device("cpu")
    world = dist.get_world_size()
    torch.manual_seed(seed)
    syncs = [_Sync("broadcast", [torch.randn(max(1, int(mb * MIB) // 4), device=device)], max(cfg.sizes_mb) * 2)
             for mb in cfg.sizes_mb]
    if cfg.model_blocks:
        syncs.append(_Sync("owner_sync", model_matrices(cfg.model_blocks, cfg.model_dim, device), cfg.bucket_cap_mb))
    for i in range(cfg.warmup + cfg.repeats):
        for s in syncs:
            s.run(device, record=i >= cfg.warmup)
    common = {
        "op": "collective", "phase": "sync", "status": "ok", "sweep_name": sweep_name, "trial_id": job_id,
        "ranks": world, "backend": dist.get_backend(), "device": device.type, "dtype": "fp32",
        "threads": torch.get_num_threads(), "warmup": cfg.warmup,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    rows = [{**common, **s.row()} for s in syncs]
    for r in rows:
        if r["method"] == "owner_sync":
            r.update(model="gpt2-small", shape_set=f"gpt2-small x{cfg.model_blocks} blocks",
                     shape_name=f"d{cfg.model_dim}", bucket_cap_mb=cfg.bucket_cap_mb)
    return rows
