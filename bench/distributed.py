"""Process-group helpers shared by every way a trial is started.

Ray Train sets up the process group for its workers; ``specbench train`` and the tests start
plain processes and call :func:`init_process_group` themselves. Either way the trial code only
sees an initialised ``torch.distributed`` group.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


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


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks (float64, one collective)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_floats(values: list[float], device: torch.device) -> list[list[float]]:
    """Every rank's list of scalars (same length on all ranks), indexed by rank."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [tensor.tolist()]
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return [t.tolist() for t in out]


def configure_cpu_threads(threads: int) -> None:
    """Pin intra-op threads: several CPU workers per machine must not oversubscribe the cores
    (STACK.md: DeepSpeed on CPU runs 4x slower with the default thread count)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
