"""Wall-clock timing of training phases.

On GPUs kernels run asynchronously, so every measurement synchronises the device first;
otherwise the time of one phase would be billed to the next.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from statistics import median

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device, sink: dict[str, float], key: str):
    """Add the synchronised wall time of the block to ``sink[key]`` (seconds)."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        sink[key] = sink.get(key, 0.0) + time.perf_counter() - start


def median_after_warmup(values: list[float], warmup: int) -> float:
    """Median of ``values`` without the first ``warmup`` entries (all of them if too few)."""
    kept = values[warmup:] if len(values) > warmup else values
    return float(median(kept)) if kept else float("nan")
