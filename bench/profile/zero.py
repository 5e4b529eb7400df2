"""Memory per rank and step time of each optimizer at ZeRO stages 0–3: ``op = zero`` rows.

What training runs (issue 15, item 4): per model, P and optimizer, every stage's engine is built
as a trial builds it — ``optimizers.build`` for the optimizer, the trial's DeepSpeed config
(:func:`bench.deepspeed_config.deepspeed_config`) and :func:`optimizers.deepspeed_zero.initialize` —
on a GPT-2-shaped ``transformers`` model (GPT-2's embedding, head and block shapes at the
configured width; ``blocks`` of its blocks), and whole training steps (forward, backward,
``engine.step()``) are timed on P gloo ranks in processes this module starts (no Ray).

Memory, after the last step's backward (gradients reduced, the state of the earlier steps alive:
the step's peak before the update's temporaries), on each rank, as bytes of distinct live tensor
storages (found with ``gc``, so a flat buffer and its views count once):

- ``param_bytes``: the model's parameters this rank holds (ZeRO-3: its partitions, ``ds_tensor``);
- ``state_bytes``: optimizer state — the client optimizer's (momentum, preconditioners; for a matrix
  optimizer only on the matrix's owner rank; AdamW's side-car too) plus DeepSpeed's fp32 master
  partitions (ZeRO ≥ 1);
- ``grad_bytes``: everything else the case allocated and keeps alive — the gradients and
  DeepSpeed's reduction buffers. DeepSpeed keeps some buffers of a finished engine alive, so
  before each case the live storages are snapshotted (and held, so their addresses cannot be
  reused) and only storages new in the case count: each case is accounted as if it ran alone.

Step time: per step the slowest rank's wall time (every step starts after a barrier), median
over the steps after ``warmup``; ``ratio_to_stage0`` divides it by ZeRO-0's median for the same
optimizer, model and P in the same process group, minutes apart (the machine may be shared:
compare ratios, not seconds). Rank 0 appends every case's row to a JSON-lines file as soon as it
is measured, so a killed job keeps what it measured.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.profile.config import ZeroConfig, ZeroModel

Log = Callable[[str], None]
#: The memory columns, bytes per rank (the largest over the ranks).
KINDS: tuple[str, ...] = ("param_bytes", "grad_bytes", "state_bytes", "bucket_bytes")


def _storages(values: Any) -> dict[int, Any]:
    """data_ptr → storage of every non-empty tensor in ``values`` (nested lists, tuples, dicts)."""
    import torch

    out: dict[int, Any] = {}
    stack = [values]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            if v.numel():
                s = v.untyped_storage()
                out[s.data_ptr()] = s
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return out


def live_storages() -> dict[int, Any]:
    """Every live tensor storage of this process, after a full collection."""
    import torch

    gc.collect()
    with warnings.catch_warnings():  # isinstance on deprecated torch.distributed attributes warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return _storages(tensors)


def memory_split(model: Any, optimizer: Any, engine: Any, before: dict[int, Any]) -> dict[str, int]:
    """``param_bytes``, ``grad_bytes``, ``state_bytes`` of this rank (module docstring); storages
    in ``before`` (alive before the case started) are not the case's."""
    from optimizers.deepspeed_zero import master_partitions

    live = live_storages()
    params = _storages([getattr(p, "ds_tensor", p.data) for p in model.parameters()])
    inner = getattr(optimizer, "inner", None)  # a matrix optimizer's AdamW side-car
    state = _storages([list(optimizer.state.values()), list(inner.state.values()) if inner is not None else [],
                       master_partitions(engine)])
    state = {k: v for k, v in state.items() if k not in params}
    new = {k: v for k, v in live.items() if k not in params and k not in state and k not in before}
    # DeepSpeed's fixed-size reduction buckets: exactly reduce_bucket_size elements, whatever the model.
    bucket = engine.zero_reduce_bucket_size() if engine.zero_optimization_stage() else -1
    buffers = {k: v for k, v in new.items() if v.nbytes() in (4 * bucket, 2 * bucket)}
    grads = {k: v for k, v in new.items() if k not in buffers}
    return {name: sum(s.nbytes() for s in part.values())
            for name, part in (("param_bytes", params), ("grad_bytes", grads), ("state_bytes", state),
                               ("bucket_bytes", buffers))}


def _gpt2(spec: ZeroModel) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=spec.blocks, n_embd=spec.dim, n_head=spec.heads,
                                      vocab_size=spec.vocab, n_positions=spec.seq_len))


def _case(spec: ZeroModel, opt_name: str, settings: dict[str, Any], stage: int, cfg: ZeroConfig, seed: int,
          rank: int, world: int) -> dict[str, Any]:
    """One engine: ``cfg.warmup + cfg.repeats`` training steps, timed; memory after the last backward."""
    import torch
    import torch.distributed as dist

    import optimizers
    from bench.config import TrainingConfig
    from bench.deepspeed_config import deepspeed_config
    from optimizers.deepspeed_zero import initialize
    from optimizers.param_groups import MATRIX, assign_parameters

    before = live_storages()
    torch.manual_seed(seed)
    model = _gpt2(spec)
    groups = assign_parameters(model)  # before ZeRO-3 replaces the parameters by placeholders
    counts = {"count": sum(p.numel() for p in model.parameters()),
              "matrix_params": sum(p.numel() for n, p in model.named_parameters() if groups[n] == MATRIX)}
    opt = optimizers.build(opt_name, model, **settings)
    training = TrainingConfig(micro_batch_size=1, zero_stage=stage)
    engine = initialize(model, opt, deepspeed_config(training, world, opt_name))
    gen = torch.Generator().manual_seed(seed + rank)
    times, split = [], {}
    steps = cfg.warmup + cfg.repeats
    for step in range(steps):
        ids = torch.randint(0, spec.vocab, (1, spec.seq_len), generator=gen)
        dist.barrier()
        start = time.perf_counter()
        engine.backward(engine(ids, labels=ids).loss)
        if step == steps - 1:
            pause = time.perf_counter()
            split = memory_split(model, opt, engine, before)
            start += time.perf_counter() - pause  # the accounting is not part of the step
        engine.step()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the step waits for the slowest rank
        if step >= cfg.warmup:
            times.append(float(elapsed.item()))
    del engine, opt, model
    gc.collect()
    return {**split, **counts, "seconds": statistics.median(times), "seconds_min": min(times),
            "seconds_p75": sorted(times)[(3 * len(times)) // 4], "repeats": len(times)}


def _rank_main(rank: int, world: int, port: int, cfg: ZeroConfig, seed: int, out: str,
               cases: list[tuple[int, int]]) -> None:
    """One rank of a process group: every stage of the ``(model index, optimizer index)`` cases, in turn."""
    import torch
    import torch.distributed as dist

    from bench.distributed import configure_cpu_threads, init_process_group

    configure_cpu_threads(cfg.threads)
    torch._dynamo.config.disable = True  # DeepSpeed's Muon compiles Newton–Schulz: eager on CPU, as in a trial
    init_process_group(rank, world, port)
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    for model_index, opt_index in cases:
        spec, entry = cfg.models[model_index], cfg.optimizers[opt_index]
        for stage in cfg.stages:
            row = _case(spec, entry.name, dict(entry.settings), stage, cfg, seed, rank, world)
            peaks = torch.tensor([row[k] for k in KINDS], dtype=torch.float64)
            per_rank = [torch.zeros_like(peaks) for _ in range(world)]
            dist.all_gather(per_rank, peaks)
            if rank == 0:
                record = {**row, "model": spec.label, "blocks": spec.blocks, "dim": spec.dim,
                          "vocab": spec.vocab, "seq_len": spec.seq_len, "heads": spec.heads,
                          "full_blocks": spec.full_blocks, "optimizer": entry.name, "label": entry.display(),
                          "zero_stage": stage, "ranks": world, "state_bytes_by_rank": json.dumps(
                              [int(t[2]) for t in per_rank]),
                          **{k: max(float(t[i]) for t in per_rank) for i, k in enumerate(KINDS)}}
                with open(out, "a") as fh:  # at once: a kill loses nothing measured
                    fh.write(json.dumps(record) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def process_groups(cfg: ZeroConfig) -> list[tuple[int, list[tuple[int, int]]]]:
    """(P, cases) of each process group the job starts: one per model, P and optimizer, its stages in
    turn. A fresh group per optimizer because DeepSpeed keeps buffers of a finished engine alive
    (ZeRO-3's 5·10⁸-element reduce bucket among them): one group for all cases accumulated them
    until the kernel killed a rank (observed at P = 4 on 24 GiB)."""
    groups = []
    for world in sorted({p for s in cfg.models for p in (s.ranks or cfg.ranks)}):
        for m, spec in enumerate(cfg.models):
            if world not in (spec.ranks or cfg.ranks):
                continue
            for o, entry in enumerate(cfg.optimizers):
                if spec.optimizers is None or entry.display() in spec.optimizers:
                    groups.append((world, [(m, o)]))
    return groups


def measure_zero(cfg: ZeroConfig, seed: int = 0, log: Log | None = None,
                 out_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every (model, P, optimizer, stage) of ``cfg``: one process group per (model, P, optimizer)
    (:func:`process_groups`), one row per case
    with the largest per-rank bytes of each kind (``state_bytes_by_rank`` lists every rank's
    state) and ``ratio_to_stage0``."""
    import torch.multiprocessing as mp

    from bench.distributed import free_port

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for i, (world, cases) in enumerate(process_groups(cfg)):
            out = Path(tmp) / f"group{i}.jsonl"
            out.touch()
            names = [(cfg.models[m].label, cfg.optimizers[o].display()) for m, o in cases]
            if log:
                log(f"zero: P = {world}, {', '.join(f'{a} {b}' for a, b in names)}, stages {cfg.stages}")
            try:
                mp.start_processes(_rank_main, args=(world, free_port(), cfg, seed, str(out), cases), nprocs=world,
                                   start_method="spawn", join=True)
                error = None
            except Exception as exc:  # a failed group keeps the cases it finished
                error = f"{type(exc).__name__}: {exc}"[:500]
            rows += [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
            if error is not None:
                rows.append({"ranks": world, "model": names[0][0], "label": names[0][1], "status": "error",
                             "error": error})
    common = {"op": "zero", "phase": "step", "status": "ok", "device": "cpu", "dtype": "fp32", "batch": 1,
              "threads": cfg.threads, "warmup": cfg.warmup, "memory_kind": "live_storages_after_backward"}
    rows = [{**common, **r} for r in rows]
    base = {(r["model"], r["label"], r["ranks"]): r["seconds"] for r in rows
            if r["status"] == "ok" and r.get("zero_stage") == 0}
    for r in rows:
        key = (r.get("model"), r.get("label"), r.get("ranks"))
        if r["status"] == "ok" and key in base:
            r["ratio_to_stage0"] = r["seconds"] / base[key]
        if r["status"] == "ok":
            r["peak_memory_bytes"] = sum(r[k] for k in KINDS)
        if log and r["status"] == "ok":
            log(f"  {r['model']} P={r['ranks']} {r['label']} ZeRO-{r['zero_stage']}: params "
                f"{r['param_bytes'] / 2**20:.0f} MiB, grads {r['grad_bytes'] / 2**20:.0f} MiB, state "
                f"{r['state_bytes'] / 2**20:.0f} MiB (+ buckets {r['bucket_bytes'] / 2**20:.0f} MiB), step {r['seconds']:.2f} s")
    return rows
