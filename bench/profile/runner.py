"""``run_profile_job``: one measurement job (one node, one device) written to the profile table.

The job measures what needs one process: the optimizers' per-matrix routes (``profiles``) and,
when configured, one whole step of every optimizer (``optimizer_step``,
:mod:`bench.profile.optimizer_step`) and the input pipeline (``data``, :mod:`bench.profile.data`,
which starts its own rank processes) and ZeRO stages' memory and step time (``zero``,
:mod:`bench.profile.zero`, in process groups of its own). It expands the ``profiles`` into kernel tasks — (shape,
dtype, method) with equal shapes of different models measured once — and times them in a fixed
order: shapes by increasing size, and for each shape and dtype all its methods together,
interleaved round by round (:func:`bench.profile.kernels.measure_interleaved`). On a shared
machine this matters: a ratio between two methods of one shape is measured in the same
seconds, and a burst of foreign load hits both alike.

Guards that keep a job inside its budget (each skip is a row with ``status = skipped`` and the
reason, never a silent gap):

- a kernel whose single call is predicted to exceed ``max_call_seconds`` is skipped; the
  prediction scales the last measured call of the same method and dtype by the FLOP ratio;
- the timed calls of one kernel are capped by ``max_kernel_seconds`` (fewer repeats);
- after ``time_budget_s`` the remaining kernels are skipped.

Output: the ``profile`` table (``bench.results.schema.PROFILE``) at
``<storage>/<name>/trials/<job_id>/profile.parquet`` — the layout ``analysis.load_table``
reads — rewritten atomically every ``flush_every_s`` so an interrupted job keeps what it
measured. Besides the ``op = kernel`` rows it writes ``op = shape`` rows: every catalogued
model's shapes with their counts and each method's FLOPs, which is what lets the cost model
(``analysis``, which reads Parquet only) predict whole-model costs, Llama-405B included.

Command line (no Ray; used on a lent GPU by scripts/gpu_kernels.sh; ``specbench profile`` runs
the same job on every Ray node, plus the sections that need a process group)::

    python -m bench.profile.runner --config configs/profile/kernels_gpu.yaml --out $OUT/profile.parquet

The command line also measures a ``spectral_step`` section at P = 1 (:func:`spectral_step_here`;
scripts/gpu_e2e.sh uses it on one GPU); P > 1 needs ``specbench profile``.
"""

from __future__ import annotations

import math
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.profile import flops as F
from bench.profile import shapes as S
from bench.profile.config import ProfileConfig, ProfileEntry
from bench.profile.flops import METHODS_VERSION

Log = Callable[[str], None]


@dataclass
class KernelTask:
    """One measurement: a shape (tall-form identity ``key``) × dtype × method."""

    shape: S.MatrixShape
    method: str
    dtype: str
    batch: int
    max_call_seconds: float
    labels: list[str] = field(default_factory=list)
    """``set/name`` of every model shape this measurement stands for."""


def entry_shapes(entry: ProfileEntry, source: str = "auto") -> list[tuple[S.MatrixShape, str]]:
    """(shape, set name) of an entry, filtered by ``shapes`` and ``max_elements``."""
    out: list[tuple[S.MatrixShape, str]] = []
    for set_name in entry.shape_sets:
        for s in S.get(set_name, source).shapes:
            if entry.shapes is not None and s.name not in entry.shapes:
                continue
            out.append((s, set_name))
    for c in entry.custom_shapes:
        out.append((S.MatrixShape(c.name, "other", c.m, c.n, c.count), "custom"))
    if entry.max_elements is not None:
        out = [(s, n) for s, n in out if s.m * s.n <= entry.max_elements]
    return out


def plan_tasks(cfg: ProfileConfig) -> list[KernelTask]:
    """Every kernel of the config once, in measurement order (see the module docstring)."""
    tasks: dict[tuple, KernelTask] = {}
    for entry in cfg.profiles:
        by_key: dict[tuple[int, int], tuple[S.MatrixShape, list[str]]] = {}
        for shape, set_name in entry_shapes(entry, cfg.shape_source):
            rep, labels = by_key.setdefault(shape.key, (shape, []))
            labels.append(f"{set_name}/{shape.name}")
        methods = entry.method_list()
        limit = entry.max_call_seconds or cfg.max_call_seconds
        for key in sorted(by_key, key=lambda k: (k[0] * k[1] ** 2, k)):
            shape, labels = by_key[key]
            for dtype in entry.dtypes:
                for method in methods:
                    tkey = (key, method, dtype, entry.batch)
                    if tkey in tasks:
                        tasks[tkey].labels += [x for x in labels if x not in tasks[tkey].labels]
                    else:
                        tasks[tkey] = KernelTask(shape, method, dtype, entry.batch, limit, list(labels))
    return list(tasks.values())


def resolve_device(name: str):
    """``auto`` → cuda when available, else cpu."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but torch sees no CUDA device")
    return torch.device(name)


def device_name(device) -> str:
    """Human-readable device model (GPU name, or the CPU model from /proc/cpuinfo)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_job_id(name: str, node_id: str | None = None, host: str | None = None) -> str:
    """``<name>-<host>[-<node id prefix>]`` (host: this machine's by default), safe as a
    directory name."""
    tag = f"{name}-{host or socket.gethostname()}" + (f"-{node_id[:8]}" if node_id else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag)


def catalog_rows(cfg: ProfileConfig, methods: list[str], ns_steps: dict[str, int]) -> list[dict[str, Any]]:
    """``op = shape`` rows: each catalogued model's shapes, counts and FLOPs per method.

    ``polar``'s count depends on how many Newton–Schulz steps it ran: the median measured in
    this job is used (``ns_steps`` by dtype; no rows when it was not measured).
    """
    rows = []
    for model in cfg.catalog_models:
        sset = S.get(model, cfg.shape_source)
        for s in sset.shapes:
            for method in methods:
                steps = None
                if method == "polar":
                    if not ns_steps:
                        continue
                    steps = int(round(sorted(ns_steps.values())[len(ns_steps) // 2]))
                elif method == "ns5":
                    steps = F.NS_STEPS
                rows.append({
                    "op": "shape", "phase": "catalog", "status": "catalog", "model": model, "shape_set": model,
                    "shape_name": s.name, "layer_type": s.layer_type, "shape": f"{s.m}x{s.n}", "shape_m": s.m,
                    "shape_n": s.n, "k": s.k, "count": s.count, "method": method, "methods_version": METHODS_VERSION,
                    "batch": 1, "ns_steps": steps, "flops": F.method_flops(method, s.m, s.n, ns_steps=steps),
                    "source": sset.source,
                })
    return rows


def _predict_seconds(history: dict[tuple[str, str], tuple[float, float]], task: KernelTask, ns: int) -> float:
    """Single-call time predicted from the last (largest) measured call of the same method/dtype."""
    last = history.get((task.method, task.dtype))
    if last is None:
        return 0.0
    f_last, s_last = last
    f_new = F.method_flops(task.method, task.shape.m, task.shape.n, batch=task.batch, ns_steps=ns)
    return s_last * f_new / f_last if f_last > 0 else 0.0


def run_profile_job(
    config: ProfileConfig,
    *,
    job_id: str | None = None,
    node_id: str | None = None,
    out_path: str | os.PathLike[str] | None = None,
    write: bool = True,
    log: Log | None = None,
) -> list[dict[str, Any]]:
    """Measure every kernel of ``config`` on this process's device, then the optimizer steps
    (when configured), and write the profile table.

    Returns the rows (kernel rows, catalogue rows, optimizer-step rows). ``out_path`` overrides
    the default ``<storage>/<name>/trials/<job_id>/profile.parquet``; ``write=False`` writes
    nothing.
    """
    import torch

    from bench.profile.kernels import make_matrix, measure_interleaved
    from bench.results.writer import trial_dir, write_rows

    cfg = config
    device = resolve_device(cfg.device)
    threads = cfg.threads or max(1, int(cfg.resources.num_cpus))
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    job_id = job_id or default_job_id(cfg.name, node_id)
    path = Path(out_path) if out_path is not None else trial_dir(cfg.storage, cfg.name, job_id) / "profile.parquet"
    common = {
        "sweep_name": cfg.name, "trial_id": job_id, "job_id": job_id, "node_id": node_id or "",
        "hostname": socket.gethostname(), "device_name": device_name(device), "device": device.type,
        "torch_version": torch.__version__, "threads": threads, "ranks": 1,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tasks = plan_tasks(cfg)
    if log:
        log(f"profile '{cfg.name}' job {job_id}: {len(tasks)} kernels on {common['device_name']} "
            f"({device.type}, {threads} threads, torch {torch.__version__})")
    rows: list[dict[str, Any]] = []
    ceiling: dict[tuple, float] = {}
    history: dict[tuple[str, str], tuple[float, float]] = {}
    ns_seen: dict[str, int] = {}
    t_start = last_flush = time.perf_counter()
    deadline = t_start + cfg.time_budget_s if cfg.time_budget_s is not None else None
    done = 0
    for group in group_tasks(tasks):
        s, dtype, batch = group[0].shape, group[0].dtype, group[0].batch
        base = {**common, "phase": "measure", "shape_name": s.name, "layer_type": s.layer_type, "count": s.count}
        run: list[KernelTask] = []
        group_rows: dict[int, dict[str, Any]] = {}
        for task in group:
            ns_guess = ns_seen.get(task.dtype, 20) if task.method == "polar" else None
            predicted = _predict_seconds(history, task, ns_guess or F.NS_STEPS)
            reason = None
            if deadline is not None and time.perf_counter() > deadline:
                reason = f"time budget of {cfg.time_budget_s:g} s spent"
            elif predicted > task.max_call_seconds:
                reason = f"predicted {predicted:.1f} s per call > max_call_seconds {task.max_call_seconds:g}"
            if reason is None:
                run.append(task)
            else:
                group_rows[id(task)] = {
                    "op": "kernel", "method": task.method, "methods_version": METHODS_VERSION,
                    "dtype": task.dtype, "shape": f"{s.m}x{s.n}",
                    "shape_m": s.m, "shape_n": s.n, "k": s.k, "batch": batch, "status": "skipped",
                    "error": reason, "seconds": math.nan, "predicted_seconds": predicted}
        if run:
            X = make_matrix(s.m, s.n, batch=batch, dtype=_dtype(dtype), device=device, kind=cfg.matrix,
                            seed=cfg.seed)
            measured = measure_interleaved(
                [t.method for t in run], (s.m, s.n), dtype, device, repeats=cfg.repeats, warmup=cfg.warmup,
                batch=batch, damping=cfg.damping, matrix=cfg.matrix,
                seed=cfg.seed, ceiling_cache=ceiling, max_seconds=cfg.max_kernel_seconds,
                min_seconds=cfg.min_kernel_seconds, X=X, deadline=deadline,
            )
            del X
            for task, row in zip(run, measured, strict=True):
                group_rows[id(task)] = row
                if row["status"] == "ok":
                    history[(task.method, task.dtype)] = (row["flops"], row["seconds"])
                    if task.method == "polar" and row.get("ns_steps"):
                        ns_seen[task.dtype] = int(row["ns_steps"])
        for task in group:
            row = {**base, "shape_set": task.labels[0].split("/", 1)[0], "labels": ";".join(task.labels),
                   **group_rows[id(task)]}
            rows.append(row)
            done += 1
            if log:
                log(_progress_line(done, len(tasks), row))
        if write and time.perf_counter() - last_flush > cfg.flush_every_s:
            # A flush carries the catalogue too: a job killed later still leaves a usable table.
            write_rows("profile", rows + _catalog(cfg, tasks, rows, common), path)
            last_flush = time.perf_counter()
    if tasks:
        rows += _catalog(cfg, tasks, rows, common)
    if cfg.optimizer_step is not None:
        if write:
            write_rows("profile", rows, path)  # the kernels are safe before the steps start
        rows += _optimizer_steps(cfg, device, common, log)
    if cfg.data is not None:
        from bench.profile.data import measure_data

        if write and rows:
            write_rows("profile", rows, path)
        rows += [{**common, **r} for r in measure_data(cfg.data, cfg.seed, log)]
    if cfg.zero is not None:
        from bench.profile.zero import measure_zero

        if write and rows:
            write_rows("profile", rows, path)
        rows += [{**common, **r} for r in measure_zero(cfg.zero, cfg.seed, log)]
    if write:
        write_rows("profile", rows, path)
        if log:
            log(f"wrote {len(rows)} rows → {path}")
    return rows


def _optimizer_steps(cfg: ProfileConfig, device, common: dict[str, Any], log: Log | None) -> list[dict[str, Any]]:
    """The ``optimizer_step`` section: every model in turn, with the section's thread count."""
    import torch

    from bench.profile.optimizer_step import measure_optimizer_steps

    section = cfg.optimizer_step
    threads = torch.get_num_threads()
    torch.set_num_threads(section.threads)
    try:
        rows = []
        for model in section.models:
            if log:
                log(f"optimizer steps on {model} ({len(section.optimizers)} optimizers, interleaved)")
            rows += [{**common, "threads": section.threads, **r}
                     for r in measure_optimizer_steps(model, section, device, cfg.seed, log)]
        return rows
    finally:
        torch.set_num_threads(threads)


def _catalog(cfg: ProfileConfig, tasks: list[KernelTask], rows: list[dict[str, Any]],
             common: dict[str, Any]) -> list[dict[str, Any]]:
    """Catalogue rows for the job's methods, polar counted with the median NS steps measured."""
    methods = list(dict.fromkeys(t.method for t in tasks))
    polar = sorted(r["ns_steps"] for r in rows if r.get("method") == "polar" and r.get("ns_steps"))
    steps = {"all": int(polar[len(polar) // 2])} if polar else {}
    return [{**common, **r} for r in catalog_rows(cfg, methods, steps)]


def group_tasks(tasks: list[KernelTask]) -> list[list[KernelTask]]:
    """Consecutive tasks of one (shape, dtype, batch): measured together, interleaved."""
    groups: list[list[KernelTask]] = []
    for t in tasks:
        g = groups[-1] if groups else None
        if g and (g[0].shape.key, g[0].dtype, g[0].batch) == (t.shape.key, t.dtype, t.batch):
            g.append(t)
        else:
            groups.append([t])
    return groups


def _progress_line(i: int, total: int, row: dict[str, Any]) -> str:
    head = f"[{i}/{total}] {row['method']:<16} {row['dtype']} {row['shape']}:"
    if row["status"] != "ok":
        return f"{head} {row['status']} ({row['error']})"
    return (f"{head} {row['seconds'] * 1e3:10.3f} ms  {row['flops_per_s'] / 1e9:8.1f} GFLOP/s  "
            f"eff {row['efficiency']:.2f}  (×{row['repeats']})")


def _dtype(name: str):
    from bench.profile.kernels import DTYPES

    return DTYPES[name]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.profile.runner --config FILE [--out PATH] [--name N] [--job-id ID]``.

    ``--out`` ending in ``.parquet`` is the exact output file; otherwise it is the storage root
    (``<out>/<name>/trials/<job_id>/profile.parquet``). Exit 2 on a config problem.
    """
    import argparse

    from bench.profile.config import ProfileConfigError, load_profile_config

    parser = argparse.ArgumentParser(prog="python -m bench.profile.runner", description=main.__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="profile YAML file")
    parser.add_argument("--out", help="output .parquet file, or a storage root directory")
    parser.add_argument("--name", help="profile name (overrides the config's name)")
    parser.add_argument("--job-id", help="job id (default: <name>-<hostname>)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    out_file = args.out if args.out and args.out.endswith(".parquet") else None
    storage = args.out if args.out and out_file is None else None
    try:
        cfg = load_profile_config(args.config, {"name": args.name, "storage": storage})
    except ProfileConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = run_profile_job(cfg, job_id=args.job_id, out_path=out_file, log=None if args.quiet else log)
    if cfg.spectral_step is not None:
        spectral_step_here(cfg, rows, job_id=args.job_id, out_path=out_file, log=None if args.quiet else log)
    return 0


def spectral_step_here(
    cfg: ProfileConfig, rows: list[dict[str, Any]], *, job_id: str | None = None,
    out_path: str | os.PathLike[str] | None = None, log: Log | None = None,
) -> list[dict[str, Any]]:
    """The ``spectral_step`` section at P = 1 in this process (no Ray, no process group), its rows
    appended to ``rows`` and written with them; the job's kernel rows come first.

    One process has one device, so only P = 1 is measured here: sharded and redundant then do the
    same work, and the row pair measures the step itself (the sharding's overhead when alone).
    P > 1 needs a process group per P, which ``specbench profile`` starts through Ray Train; the
    P > 1 entries of ``ranks`` are reported as skipped in the log.
    """
    from bench.profile.spectral_step import measure_spectral_step
    from bench.results.writer import trial_dir, write_rows

    section = cfg.spectral_step
    job_id = job_id or default_job_id(cfg.name)
    others = [p for p in section.ranks if p != 1]
    if log and others:
        log(f"spectral_step: P = {others} need a process group each (`specbench profile`); only P = 1 here")
    if 1 not in section.ranks:
        return rows
    device = resolve_device(cfg.device)
    if log:
        log(f"spectral_step at P = 1: {section.blocks} GPT-2 blocks of width {section.dim}, method {section.method}, "
            f"on {device_name(device)}")
    import torch

    measured = measure_spectral_step(blocks=section.blocks, dim=section.dim, method=section.method,
                                     warmup=section.warmup, repeats=section.repeats, seed=cfg.seed, device=device,
                                     sweep_name=cfg.name, job_id=job_id)
    where = {"device_name": device_name(device), "hostname": socket.gethostname(), "torch_version": torch.__version__}
    rows = rows + [{**where, **r} for r in measured]
    path = Path(out_path) if out_path is not None else trial_dir(cfg.storage, cfg.name, job_id) / "profile.parquet"
    write_rows("profile", rows, path)
    if log:
        timed = ", ".join(f"{r['phase']} {r['seconds']:.4g} s" for r in measured)
        log(f"spectral_step at P = 1: {timed} → {path}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
