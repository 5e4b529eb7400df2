"""The distributed spectral step: owner-rank sharding against redundant computation.

At ZeRO stage 0 every rank holds the same averaged gradient, so every rank *could* compute every
matrix's spectral update (``distribution: redundant``); ``sharded`` gives each matrix to one
owner rank (LPT on m·n·min(m, n)) and broadcasts the new values (:mod:`optimizers.distributed`).
This module times one Spectral Newton step under both, inside an initialised process group of
P ranks, on parameters with the exact shapes of GPT-2 small's transformer blocks (the matrices
whose spectral work dominates a step), with fixed gradients identical on every rank.

Per distribution it reports the step time (the slowest rank's, median after warm-up), its
compute and communication parts, bytes broadcast, load imbalance (max/mean of the ranks'
spectral work), and the parameters' largest deviation from the redundant run after the same
steps (the two must agree: same kernels, same inputs). The speedup is redundant / sharded at the
same P. Launched by ``specbench profile`` through Ray Train for every P of the config, so the
same YAML measures P = 1, 2 on a laptop and P = 64 on a cluster.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone
from typing import Any

import torch
import torch.distributed as dist

from bench.profile.kernels import quantile
from optimizers.timing import synchronize

DISTRIBUTIONS = ("redundant", "sharded")


def gpt2_block_rows(blocks: int, dim: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, layer type) of ``blocks`` GPT-2 transformer blocks of width ``dim``."""
    from optimizers.benchmark import gpt2_small_block_shapes

    rows = []
    for i in range(blocks):
        rows += [(name.replace("h.0.", f"h.{i}.", 1), shape, ltype) for name, shape, ltype in gpt2_small_block_shapes(dim)]
    return rows


def _max_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


class _Runner:
    """One distribution's optimizer on its own copy of the parameters, timed step by step."""

    def __init__(self, distribution: str, rows, device: torch.device, method: str, seed: int):
        from optimizers.benchmark import ParamSet, build_optimizer

        self.device = device
        self.params = ParamSet(rows, device, seed=seed)  # identical on every rank: same seed
        self.opt = build_optimizer("spectral_newton", self.params, {"method": method, "distribution": distribution})
        self.params.set_grads(seed=seed + 1)
        self.times: list[float] = []
        self.compute: list[float] = []
        self.comm: list[float] = []
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
        elapsed = _max_over_ranks(time.perf_counter() - t0, device)
        metrics = self.opt.step_metrics()  # collective when sharded (load imbalance): every rank calls it
        if record:
            self.times.append(elapsed)
            self.compute.append(_max_over_ranks(metrics["spectral_time_s"], device))
            self.comm.append(_max_over_ranks(metrics.get("comm_time_s", 0.0), device))
            self.sent.append(float(metrics.get("bytes_communicated", 0.0)))
            self.imbalance.append(float(metrics.get("load_imbalance", 1.0)))

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params.parameters()])


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
    rows_shape = gpt2_block_rows(blocks, dim)
    matrices = sum(1 for _, shape, _ in rows_shape if len(shape) == 2)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results: dict[str, dict[str, Any]] = {}
    runners = {d: _Runner(d, rows_shape, device, method, seed) for d in DISTRIBUTIONS}
    # Interleaved, one step of each distribution in turn: a load change on a shared machine then
    # hits both alike, and their ratio (the speedup) stays meaningful.
    for i in range(warmup + repeats):
        for runner in runners.values():
            runner.step(record=i >= warmup)
    reference = runners["redundant"].flat()
    for distribution, r in runners.items():
        times, compute, comm, sent, imbalance, flat = r.times, r.compute, r.comm, r.sent, r.imbalance, r.flat()
        median = statistics.median(times)
        ordered = sorted(times)
        results[distribution] = {
            "op": "spectral_step", "phase": distribution, "method": f"spectral_newton:{method}", "status": "ok",
            "sweep_name": sweep_name, "trial_id": job_id, "model": "gpt2-small",
            "shape_set": f"gpt2-small x{blocks} blocks", "shape_name": f"d{dim}", "count": matrices,
            "ranks": world, "threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup,
            "device": device.type, "dtype": "fp32", "seconds": median, "seconds_min": min(times),
            "seconds_p25": quantile(ordered, 0.25), "seconds_p75": quantile(ordered, 0.75),
            "compute_seconds": statistics.median(compute), "comm_seconds": statistics.median(comm),
            "bytes": statistics.median(sent), "load_imbalance": statistics.median(imbalance),
            "max_abs_diff_vs_redundant": float((flat - reference).abs().max()),
            "max_abs_param": float(reference.abs().max()),
            "started_at": started,
        }  # fmt: skip
    base = results["redundant"]["seconds"]
    for row in results.values():
        row["speedup_vs_redundant"] = base / row["seconds"] if row["seconds"] > 0 else float("nan")
    return list(results.values())
