"""DeepSpeed checkpoints of a trial, for resuming after an interruption or a worker failure.

Layout: ``<trial_dir>/checkpoint/`` holds DeepSpeed's tag directories (``step<N>``) and its
``latest`` file; only the newest tag is kept. The ``client_state`` stored with each tag carries
the loop's own state (step, best metric), so a resumed trial continues exactly where the
checkpoint was taken: the data stream position follows from the step (bench/batching.py), and
the lr schedule, model and optimizer state come from DeepSpeed.

Ordering rule that keeps the ``steps`` table gap- and duplicate-free: the steps rows up to step
N are flushed *before* checkpoint N is written, and a resumed trial drops any row after N (those
steps are recomputed identically).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

CHECKPOINT_DIR = "checkpoint"


def checkpoint_dir(trial_dir: Path) -> Path:
    return trial_dir / CHECKPOINT_DIR


def has_checkpoint(trial_dir: Path) -> bool:
    return (checkpoint_dir(trial_dir) / "latest").is_file()


def save(engine, trial_dir: Path, step: int, client_state: dict[str, Any]) -> None:
    """Collective: every rank calls it. Keeps only the newest tag."""
    ckpt = checkpoint_dir(trial_dir)
    engine.save_checkpoint(str(ckpt), tag=f"step{step}", client_state={**client_state, "step": step})
    if dist.is_initialized():
        dist.barrier()
    if not dist.is_initialized() or dist.get_rank() == 0:
        for old in ckpt.iterdir():
            if old.is_dir() and old.name.startswith("step") and old.name != f"step{step}":
                shutil.rmtree(old, ignore_errors=True)


def load(engine, trial_dir: Path) -> dict[str, Any] | None:
    """Load the newest checkpoint into ``engine``; returns its client state, or None."""
    if not has_checkpoint(trial_dir):
        return None
    path, client_state = engine.load_checkpoint(
        str(checkpoint_dir(trial_dir)), load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        return None
    return dict(client_state or {})


def remove(trial_dir: Path) -> None:
    shutil.rmtree(checkpoint_dir(trial_dir), ignore_errors=True)


def write_pid(trial_dir: Path, rank: int) -> None:
    """Record this worker's pid (``<trial_dir>/workers/rank<r>.pid``) so that operators and the
    fault-tolerance test can find the process of a given rank."""
    workers = trial_dir / "workers"
    workers.mkdir(parents=True, exist_ok=True)
    (workers / f"rank{rank}.pid").write_text(f"{os.getpid()}\n")
