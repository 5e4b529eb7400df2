"""DeepSpeed checkpoints of a trial, for resuming after an interruption or a worker failure.

Layout: ``<trial_dir>/checkpoint/`` holds DeepSpeed's tag directories (``step<N>``) and its
``latest`` file; only the newest tag is kept. The ``client_state`` stored with each tag carries
the loop's own state (step, best metric), so a resumed trial continues exactly where the
checkpoint was taken: the data stream position follows from the step (bench/batching.py), and
the lr schedule, model and optimizer state come from DeepSpeed.

Ordering rule that keeps the ``steps`` table gap- and duplicate-free: the steps rows up to step
N are flushed *before* checkpoint N is written, and a resumed trial drops any row after N (those
steps are recomputed identically).

With an object-store storage (:mod:`bench.results.remote`) the checkpoint is uploaded after each
save and downloaded by :func:`pull` before a trial starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from bench.results import remote

CHECKPOINT_DIR = "checkpoint"


def checkpoint_dir(trial_dir: Path) -> Path:
    return trial_dir / CHECKPOINT_DIR


def has_checkpoint(trial_dir: Path) -> bool:
    return (checkpoint_dir(trial_dir) / "latest").is_file()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save(engine, trial_dir: Path, step: int, client_state: dict[str, Any]) -> None:
    """Collective: every rank calls it. Keeps only the newest tag.

    With an object-store storage the tag is uploaded too: each node's first local rank uploads
    the files its node's ranks wrote, then rank 0 uploads DeepSpeed's ``latest`` pointer and only
    then deletes older remote tags, so the store always holds one complete checkpoint.
    """
    ckpt = checkpoint_dir(trial_dir)
    tag = f"step{step}"
    engine.save_checkpoint(str(ckpt), tag=tag, client_state={**client_state, "step": step})
    _barrier()
    mirror = remote.mirror_of(trial_dir)
    if mirror is not None:
        if int(os.environ.get("LOCAL_RANK", _rank())) == 0:
            mirror.push_tree(ckpt / tag)
        _barrier()
        if _rank() == 0:
            mirror.push_file(ckpt / "latest")
            base = remote.relative(mirror, ckpt)
            for name in mirror.list_dirs(base):
                if name.startswith("step") and name != tag:
                    mirror.delete(f"{base}/{name}")
    if _rank() == 0:
        for old in ckpt.iterdir():
            if old.is_dir() and old.name.startswith("step") and old.name != tag:
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
    """Delete the trial's checkpoint (and its uploaded copy)."""
    shutil.rmtree(checkpoint_dir(trial_dir), ignore_errors=True)
    mirror = remote.mirror_of(trial_dir)
    if mirror is not None:
        mirror.delete(remote.relative(mirror, checkpoint_dir(trial_dir)))


def pull(trial_dir: Path) -> int:
    """Before a trial starts: download what the store holds of it (results so far, checkpoint)
    into this machine's staging tree, so it resumes wherever it runs. Returns the file count
    (0 for a path storage)."""
    mirror = remote.mirror_of(trial_dir)
    if mirror is None:
        return 0
    return mirror.pull_tree(remote.relative(mirror, trial_dir), skip_dirs=("workers",))


def write_pid(trial_dir: Path, rank: int) -> None:
    """Record this worker's pid (``<trial_dir>/workers/rank<r>.pid``) so that operators and the
    fault-tolerance test can find the process of a given rank."""
    workers = trial_dir / "workers"
    workers.mkdir(parents=True, exist_ok=True)
    (workers / f"rank{rank}.pid").write_text(f"{os.getpid()}\n")
