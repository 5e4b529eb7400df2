"""What every test that spawns gloo ranks needs: leave the process group cleanly."""

from __future__ import annotations

import os
from typing import NoReturn

import torch.distributed as dist


def end_rank() -> NoReturn:
    """Leave the process group together with the other ranks and exit without interpreter teardown.

    Why: a rank that tears down while its peer is still inside the last collective, or whose
    interpreter exits with gloo's threads alive, sometimes dies with "terminate called without an
    active exception" (SIGABRT) after its results are written — seen in CI on a two-rank test that
    had passed hundreds of times. The barrier makes the ranks leave together; ``os._exit`` skips
    the teardown that aborts (the same as DeepSpeed ranks need, STACK.md). Call it only after
    the rank's results are on disk; a rank that raises lets the exception reach the launcher.
    """
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)
