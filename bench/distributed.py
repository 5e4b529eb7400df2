"""Process-group helpers shared by every way a trial is started, and the sums over ranks.

Ray Train sets up the process group for its workers; ``specbench train`` and the tests start
plain processes and call :func:`init_process_group` themselves. Either way the trial code only
sees an initialised ``torch.distributed`` group. ``(rank, world)`` comes from
`optimizers.distributed.rank_and_world` (the lowest layer owns it).

The sums are what make a distributed measurement equal a single-process one: the trial's
evaluation and the curvature probe accumulate sums over samples on each rank and all-reduce them
before dividing by the global count.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from optimizers.distributed import rank_and_world


def free_port() -> int:
    """A TCP port on localhost that is free right now (for a local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_process_group(rank: int, world_size: int, port: int, use_gpu: bool = False) -> None:
    """Initialise a local process group (gloo on CPU, nccl on GPU) bound to 127.0.0.1."""
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size),
        }
    )
    backend = "nccl" if use_gpu else "gloo"
    if use_gpu:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)


def _flat_collective_(tensors: list[torch.Tensor], collective) -> list[torch.Tensor]:
    """Run ``collective`` on one float64 buffer holding every tensor, then copy the result back
    into the tensors (in place). One collective instead of one per tensor; float64 so that the
    communication is never the step that loses precision. A no-op in a single process."""
    _, world = rank_and_world()
    if world <= 1 or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    collective(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n
    return tensors


def all_reduce_sum_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum tensors over all ranks in place (one collective); returns them."""
    return _flat_collective_(tensors, lambda flat: dist.all_reduce(flat, op=dist.ReduceOp.SUM))


def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> list[torch.Tensor]:
    """Overwrite tensors with rank ``src``'s values (one collective); returns them."""
    return _flat_collective_(tensors, lambda flat: dist.broadcast(flat, src=src))


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few Python scalars over all ranks (float64, one collective on ``device``)."""
    return all_reduce_sum_([torch.tensor(values, dtype=torch.float64, device=device)])[0].tolist()


def configure_cpu_threads(threads: int) -> None:
    """Pin intra-op threads: several CPU workers per machine must not oversubscribe the cores
    (STACK.md: DeepSpeed on CPU runs 4x slower with the default thread count)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
