"""Device timing for the whole suite: the one synchronisation helper and the in-step timer.

:func:`synchronize` waits for the work queued on a device (CUDA kernels run asynchronously, so a
wall-clock measurement must synchronise first or it bills one phase's kernels to the next).
:class:`StepTimer` accumulates the seconds spent in marked sections of one optimizer step without
forcing such a wait: on CUDA it records events and resolves them only when
:meth:`StepTimer.seconds` is read (from ``step_metrics()`` after the step), so ``step()`` itself
never waits for the GPU; elsewhere it uses ``time.perf_counter``.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (CUDA kernels run asynchronously); a no-op elsewhere.

    A wall-clock measurement brackets its block with this call, or the time of one phase would be
    billed to the next.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Accumulates time spent in the sections measured with :meth:`measure` during one step."""

    def __init__(self) -> None:
        self.cpu_seconds = 0.0
        self.events: list[tuple[Any, Any]] = []

    def measure(self, device: torch.device | str) -> _TimerContext:
        """Context manager timing one section on ``device`` (CUDA events on a CUDA device)."""
        return _TimerContext(self, torch.device(device))

    def seconds(self) -> float:
        """Total measured seconds (waits for the recorded CUDA events, if any)."""
        total = self.cpu_seconds
        for start, end in self.events:
            end.synchronize()
            total += start.elapsed_time(end) / 1000.0
        return total


class _TimerContext:
    def __init__(self, timer: StepTimer, device: torch.device) -> None:
        self.timer, self.cuda = timer, device.type == "cuda"

    def __enter__(self) -> None:
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.timer.events.append((self.start, end))
        else:
            self.timer.cpu_seconds += time.perf_counter() - self.t0
