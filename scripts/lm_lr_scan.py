"""The learning-rate scan behind configs/lm/optimizer_question_cpu.yaml — a command, not a test::

    python scripts/lm_lr_scan.py --out analysis/reports/lm-question-cpu/lr_scan.jsonl

Every optimizer gets at least 3 learning rates a factor ~3 apart (Spectral Newton 4, plus 2 for
its by-layer-type policy, a check that it shares the fixed policy's best), 60 steps of the CPU
optimizer-question workload (the ~3.3M-parameter GPT-2 on byte-level builtin:text, batch 16 × 128
tokens), linear warm-up over 10 steps then a constant lr, seed 0, one process, one thread, no
DeepSpeed (a scan, not a result). Prints and writes one JSON line per run with the mean training
loss of the last 5 steps; the config takes each optimizer's best.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

#: (optimizer, fixed settings, learning rates): the scan's equal budget.
SCAN = [
    ("adamw", {}, [0.001, 0.003, 0.01]),
    ("spectral_newton", {"adamw_lr": 0.003}, [0.003, 0.01, 0.03, 0.1]),
    ("spectral_newton", {"adamw_lr": 0.003, "alpha_policy": "by_layer_type"}, [0.01, 0.03]),
    ("muon", {"adamw_lr": 0.003, "ns_dtype": "float32"}, [0.01, 0.02, 0.05]),
    ("shampoo", {}, [0.001, 0.003, 0.01]),
    ("soap", {}, [0.001, 0.003, 0.01]),
]


def scan_one(name: str, settings: dict, bundle, steps: int, warmup: int, batch: int, seed: int) -> dict:
    """Train the workload's model for ``steps`` steps; the mean loss of the last 5."""
    import optimizers
    from bench.batching import fetch
    from bench.models import build_model
    from bench.workload import Workload

    workload = Workload(bundle)
    torch.manual_seed(seed)
    model = build_model("hf:gpt2", bundle.task, {"n_layer": 4, "n_embd": 256, "n_head": 4})
    opt = optimizers.build(name, model, **settings)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(seed + 1)
    losses: list[float] = []
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = fetch(bundle.train, torch.randint(0, len(bundle.train), (batch,), generator=gen).tolist())
        loss = workload.train_step(model, opt, x, y)
        sched.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    return {"optimizer": name, "settings": settings, "final_loss": sum(losses[-5:]) / len(losses[-5:]),
            "steps": len(losses), "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON-lines file to write")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from bench.data import load_dataset

    bundle = load_dataset("builtin:text", {"seq_len": 128, "max_bytes": 4_000_000}, 0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for name, fixed, lrs in SCAN:
            for lr in lrs:
                row = scan_one(name, {**fixed, "lr": lr}, bundle, args.steps, 10, 16, 0)
                print(json.dumps(row), flush=True)
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
