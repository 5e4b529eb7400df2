"""Per-rank memory split and step time of each optimizer at ZeRO stages 0–3 (issue 15, item 4).

Runs P local gloo ranks (CPU) on a GPT-2-124M-shaped model (its embedding, head and block shapes;
``--layers`` of its 12 blocks, to fit a CPU) and, per optimizer × stage, after ``--steps``
training steps reports, on each rank, the bytes of the live tensors after the last step's
backward (gradients reduced, the state of the earlier steps alive) split into

- ``params``: the model's parameters this rank holds (ZeRO-3: its partitions only);
- ``state``: optimizer state, i.e. the client optimizer's state (momentum, preconditioners; for a
  matrix optimizer only on its owner rank) plus DeepSpeed's fp32 master partitions;
- ``other``: everything else alive (gradients and DeepSpeed's reduction buffers, mostly); only
  meaningful in a process's first case, since DeepSpeed keeps earlier engines' buffers alive
  (one case per run: ``--optimizers X --stages N``), so the table leaves it out;

plus the median step time (slowest rank). Live tensors are found
with ``gc`` and deduplicated by storage, so a flat buffer and its views count once.

    python scripts/zero_memory.py --ranks 2 --layers 2 --steps 3 --out zero_memory.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {},
    "muon": {"ns_dtype": "float32"},
    "muon_deepspeed": {},
    "spectral_newton": {},
}


def _storages(values: Any) -> dict[int, int]:
    """data_ptr → nbytes of the storages of every tensor in ``values`` (nested containers)."""
    out: dict[int, int] = {}
    stack = [values]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            if v.numel():
                s = v.untyped_storage()
                out[s.data_ptr()] = s.nbytes()
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return out


def _split(model: torch.nn.Module, opt: torch.optim.Optimizer, engine: Any) -> dict[str, int]:
    from optimizers.deepspeed_zero import master_partitions

    gc.collect()
    live = _storages([o for o in gc.get_objects() if isinstance(o, torch.Tensor)])
    params = _storages([getattr(p, "ds_tensor", p.data) for p in model.parameters()])
    inner = getattr(opt, "inner", None)
    state = _storages([list(opt.state.values()), list(inner.state.values()) if inner is not None else [],
                       master_partitions(engine)])
    state = {k: v for k, v in state.items() if k not in params}
    other = {k: v for k, v in live.items() if k not in params and k not in state}
    return {"params": sum(params.values()), "state": sum(state.values()), "other": sum(other.values())}


def _case(name: str, stage: int, rank: int, world: int, layers: int, steps: int) -> dict[str, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    import optimizers
    from optimizers.deepspeed_zero import initialize, zero_config

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_positions=64))
    settings = dict(OPTIMIZERS[name])
    opt = optimizers.build(name, model, **settings)
    cfg: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                           "train_batch_size": world, "zero_optimization": {"stage": stage},
                           "gradient_clipping": 1.0, "steps_per_print": 1 << 30}
    extra = zero_config(name, stage)
    cfg["zero_optimization"].update(extra.pop("zero_optimization", {}))
    cfg.update(extra)
    engine = initialize(model, opt, cfg)
    times, split = [], {}
    gen = torch.Generator().manual_seed(rank)
    for step in range(steps):
        ids = torch.randint(0, 50257, (1, 64), generator=gen)
        dist.barrier()
        start = time.perf_counter()
        engine.backward(engine(ids, labels=ids).loss)
        if step == steps - 1:  # gradients reduced, state of the previous steps alive: the step's peak
            pause = time.perf_counter()
            split = _split(model, opt, engine)
            start += time.perf_counter() - pause
        engine.step()
        dist.barrier()
        times.append(time.perf_counter() - start)
    del engine, opt, model
    gc.collect()
    return {**split, "step_s": statistics.median(times[1:] or times)}


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    torch._dynamo.config.disable = True  # DeepSpeed's Muon compiles Newton–Schulz: eager on CPU
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=600))
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    for name in args.optimizers:
        for stage in args.stages:
            row = _case(name, stage, rank, world, args.layers, args.steps)
            with open(out, "a") as fh:  # one line per case and rank, at once: a kill loses nothing measured
                fh.write(json.dumps({"optimizer": name, "stage": stage, "rank": rank, "ranks": world,
                                     "layers": args.layers, **row}) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file the rows are appended to")
    args = parser.parse_args(argv)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    mp.spawn(_worker, args=(args.ranks, port, args, str(args.out)), nprocs=args.ranks, join=True)
    print(table(args.out))
    return 0


def table(path: Path) -> str:
    """The Markdown table of the rows in ``path`` (per optimizer, stage and world size)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    mib = 2**20
    lines = ["| optimizer | P | ZeRO | params MiB/rank | state MiB/rank (each rank) | step s |",
             "|---|---|---|---|---|---|"]
    cases = sorted({(r["optimizer"], r["ranks"], r["stage"]) for r in rows})
    for name, world, stage in cases:
        rs = sorted((r for r in rows if (r["optimizer"], r["ranks"], r["stage"]) == (name, world, stage)),
                    key=lambda r: r["rank"])
        per = ", ".join(f"{r['state'] / mib:.0f}" for r in rs)
        lines.append(f"| {name} | {world} | {stage} | {max(r['params'] for r in rs) / mib:.0f} | "
                     f"{max(r['state'] for r in rs) / mib:.0f} ({per}) | {max(r['step_s'] for r in rs):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
