"""The distributed spectral step: owner-rank sharding against redundant computation.

At ZeRO stage 0 every rank holds the same averaged gradient, so every rank *could* compute every
matrix's spectral update (``distribution: redundant``); ``sharded`` gives each matrix to one
owner rank (LPT on m·n·min(m, n)) and broadcasts the new values (:mod:`optimizers.distributed`).
This module times one Spectral Newton step under both, inside an initialised process group of
P ranks, on GPT-2 small's transformer blocks (real ``GPT2Block`` modules, the matrices whose
spectral work dominates a step; the optimizer built by ``optimizers.build`` as in training),
with fixed gradients identical on every rank.

Per distribution it reports the step time (the slowest rank's, median after warm-up), its
compute and communication parts (``comm_seconds``: the slowest rank's sync, which includes
waiting for the slowest rank's compute; ``comm_seconds_min``: the fastest rank's, the transfer
alone), bytes broadcast and the bucket plan (``bucket_bytes``), load imbalance (max/mean of the
ranks' spectral work), and the parameters' largest deviation from the redundant run after the
same steps (the two must agree: same kernels, same inputs). The speedup is redundant / sharded at the
same P. Launched by ``specbench profile`` through Ray Train for every P of the config, so the
same YAML measures P = 1, 2 on a laptop and P = 64 on a cluster.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timezone
from typing import Any

import torch
import torch.distributed as dist

from bench.profile.collectives import model_matrices, plan_owner_sync
from bench.profile.kernels import quantile
from optimizers.timing import synchronize

DISTRIBUTIONS = ("redundant", "sharded")


def _reduce(value: float, device: torch.device, op: Any) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op)
    return float(t.item())


class _Runner:
    """One distribution's optimizer on its own copy of the parameters, timed step by step."""

    def __init__(self, distribution: str, blocks: int, dim: int, device: torch.device, method: str, seed: int):
        import optimizers
        from bench.profile.optimizer_step import set_gradients
        from bench.profile.shapes import build_model

        self.device = device
        torch.manual_seed(seed)  # identical on every rank and for both distributions
        self.model = build_model("gpt2-small", "cpu", blocks, dim).to(device)
        self.opt = optimizers.build("spectral_newton", self.model, method=method, distribution=distribution)
        set_gradients(self.model, seed + 1)
        self.times: list[float] = []
        self.compute: list[float] = []
        self.comm: list[float] = []
        self.comm_min: list[float] = []
        self.sent: list[float] = []
        self.imbalance: list[float] = []

    def step(self, record: bool) -> None:
        device = self.device
        if dist.is_initialized():
            dist.barrier()
        synchronize(device)
        t0 = time.perf_counter()
        self.opt.step()
        synchronize(device)
        elapsed = _reduce(time.perf_counter() - t0, device, dist.ReduceOp.MAX)
        metrics = self.opt.step_metrics()  # collective when sharded (load imbalance): every rank calls it
        if record:
            comm = metrics.get("comm_time_s", 0.0)
            self.times.append(elapsed)
            self.compute.append(_reduce(metrics["spectral_time_s"], device, dist.ReduceOp.MAX))
            self.comm.append(_reduce(comm, device, dist.ReduceOp.MAX))
            # The rank that finishes its compute last waits for nobody in the sync: its
            # communication time is the transfer alone (the others' includes waiting for it).
            self.comm_min.append(_reduce(comm, device, dist.ReduceOp.MIN))
            self.sent.append(float(metrics.get("bytes_communicated", 0.0)))
            self.imbalance.append(float(metrics.get("load_imbalance", 1.0)))

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])


def measure_spectral_step(
    *, blocks: int = 12, dim: int = 768, method: str = "solve", warmup: int = 2, repeats: int = 5,
    seed: int = 0, device: torch.device | None = None, sweep_name: str = "", job_id: str = "",
) -> list[dict[str, Any]]:
    """Time one Spectral Newton step, redundant and sharded interleaved, on this process group's ranks.

    Every rank must call this (it is collective); every rank returns the same rows (one per
    distribution, ``op="spectral_step"``). Without an initialised process group P = 1.
    """
    device = device or torch.device("cpu")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results: dict[str, dict[str, Any]] = {}
    runners = {d: _Runner(d, blocks, dim, device, method, seed) for d in DISTRIBUTIONS}
    # Interleaved, one step of each distribution in turn: a load change on a shared machine then
    # hits both alike, and their ratio (the speedup) stays meaningful.
    for i in range(warmup + repeats):
        for runner in runners.values():
            runner.step(record=i >= warmup)
    reference = runners["redundant"].flat()
    shapes = [tuple(p.shape) for p in model_matrices(blocks, dim, torch.device("meta"))]
    _, bucket_bytes = plan_owner_sync(shapes, world)
    for distribution, r in runners.items():
        times, flat = r.times, r.flat()
        ordered = sorted(times)
        sharded = distribution == "sharded" and world > 1
        results[distribution] = {
            "op": "spectral_step", "phase": distribution, "method": method, "optimizer": "spectral_newton",
            "status": "ok", "sweep_name": sweep_name, "trial_id": job_id, "model": "gpt2-small",
            "shape_set": f"gpt2-small x{blocks} blocks", "shape_name": f"d{dim}", "count": len(shapes),
            "ranks": world, "threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup,
            "device": device.type, "dtype": "fp32", "seconds": statistics.median(times), "seconds_min": ordered[0],
            "seconds_p25": quantile(ordered, 0.25), "seconds_p75": quantile(ordered, 0.75),
            "compute_seconds": statistics.median(r.compute), "comm_seconds": statistics.median(r.comm),
            "comm_seconds_min": statistics.median(r.comm_min),
            "bytes": statistics.median(r.sent), "load_imbalance": statistics.median(r.imbalance),
            "buckets": len(bucket_bytes) if sharded else 0,
            "bucket_bytes": json.dumps(bucket_bytes if sharded else []),
            "max_abs_diff_vs_redundant": float((flat - reference).abs().max()),
            "max_abs_param": float(reference.abs().max()),
            "started_at": started,
        }  # fmt: skip
    base = results["redundant"]["seconds"]
    for row in results.values():
        row["speedup_vs_redundant"] = base / row["seconds"] if row["seconds"] > 0 else float("nan")
    return list(results.values())
