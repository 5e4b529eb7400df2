"""Running one trial without Ray (``specbench train``): N local processes over gloo.

Each process initialises its own process group, runs :func:`bench.trial.run_trial`, tears the
group down and leaves with ``os._exit`` (STACK.md: ranks sometimes abort in interpreter
shutdown after training finished; skipping the shutdown after a flush avoids it). Nothing is
retried here: a failed trial has its ``failed`` runs row, and a set-up failure
(:class:`bench.errors.PermanentTrialError`) is reported in one line, without a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch.multiprocessing as mp

from bench.config import TrialSpec
from bench.errors import PermanentTrialError


def _child(rank: int, spec_json: str, storage: str, world_size: int, port: int) -> None:
    code = 0
    try:
        import torch.distributed as dist

        from bench.distributed import configure_cpu_threads, init_process_group
        from bench.trial import run_trial

        spec = TrialSpec.model_validate_json(spec_json)
        if not spec.resources.use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            configure_cpu_threads(spec.resources.threads_per_worker)
        init_process_group(rank, world_size, port, spec.resources.use_gpu)
        try:
            run_trial(spec, storage)
        finally:
            dist.destroy_process_group()
    except PermanentTrialError as exc:
        # A set-up failure (data, model, optimizer, engine): the message says it all, and there
        # is no retry here to tell apart from (`specbench train` never retries).
        print(f"rank {rank}: {exc} (not retried)", file=sys.stderr)
        code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_local(spec: TrialSpec, storage: str | Path) -> bool:
    """Run ``spec`` with ``spec.resources.num_workers`` local processes; True on success."""
    from bench.distributed import free_port

    world = spec.resources.num_workers
    ctx = mp.start_processes(
        _child,
        args=(spec.model_dump_json(), str(storage), world, free_port()),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    try:
        while not ctx.join():
            pass
    except mp.ProcessExitedException:
        return False
    except mp.ProcessRaisedException:
        return False
    return True
