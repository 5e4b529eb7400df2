"""Wall-clock timing of training phases.

On GPUs kernels run asynchronously, so every measurement synchronises the device first
(`optimizers.timing.synchronize`, the one helper every layer uses); otherwise the time of one
phase would be billed to the next.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from statistics import median

import torch

from optimizers.timing import synchronize


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


class CallTimer:
    """Accumulates the synchronised wall time of every call of one bound method, by replacing
    the method on that one object (the object's behaviour is unchanged).

    Used for DeepSpeed's gradient all-reduce (``engine.allreduce_gradients``, which covers the
    ZeRO 0–2 reduction epilogue): DeepSpeed's own ``wall_clock_breakdown`` timers measure it too,
    but they print a line on every step, which would flood the logs of long trials.
    """

    def __init__(self, obj: object, method: str, device: torch.device):
        self._sink: dict[str, float] = {}
        original = getattr(obj, method)

        def timed_call(*args, **kwargs):
            with timed(device, self._sink, method):
                return original(*args, **kwargs)

        self._key = method
        setattr(obj, method, timed_call)

    def pop(self) -> float:
        """Seconds accumulated since the last call, and reset."""
        return self._sink.pop(self._key, 0.0)
