"""`PhaseTimer`: time and memory of the probe's phases, the rows the probe adds to the `profile`
table (docs/README.md#open-questions asks what Φ_k estimation costs at scale).

Times are synchronised wall-clock seconds (kernels run asynchronously on GPUs, so every boundary
synchronises the device with `optimizers.timing.synchronize`). Measurements nest, and each records its
**exclusive** time (its own time minus that of measurements opened inside it), so the phases of
a probe are disjoint and add up to its total.

Peak memory, recorded per phase:

- CUDA: ``torch.cuda.max_memory_allocated`` over the phase (the peak counter is reset when a
  measurement starts; a nested measurement's peak also counts for its parents). This is the
  absolute peak of allocated device memory while the phase ran — model, probe batch and the
  autograd graph held at that moment included — not an increment. ``memory_kind`` =
  ``"cuda_max_allocated"``.
- CPU: the growth of the process's peak resident set size (``resource.getrusage`` ``ru_maxrss``)
  during the phase, summed over the phase's intervals. It is a lower bound of the phase's extra
  memory (0 when the phase stayed below an earlier high-water mark). ``memory_kind`` =
  ``"cpu_peak_rss_growth"``; NaN (``"unavailable"``) where ``resource`` does not exist.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from optimizers.timing import synchronize

try:  # POSIX only
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]


def _max_rss_bytes() -> float:
    if resource is None:
        return math.nan
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return float(rss) if sys.platform == "darwin" else float(rss) * 1024.0


@dataclass
class _Frame:
    key: tuple[str, str]
    start: float
    child_seconds: float = 0.0
    peak: float = 0.0
    rss_start: float = 0.0


class PhaseTimer:
    """Accumulates exclusive seconds and peak memory per ``(layer, phase)`` key."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.memory_kind = (
            "cuda_max_allocated" if self.cuda else ("unavailable" if resource is None else "cpu_peak_rss_growth")
        )
        self.seconds: dict[tuple[str, str], float] = {}
        self.peak: dict[tuple[str, str], float] = {}
        self._stack: list[_Frame] = []

    @contextmanager
    def measure(self, layer: str, phase: str) -> Iterator[None]:
        """Add the block's exclusive time and its peak memory to ``(layer, phase)``."""
        synchronize(self.device)
        frame = _Frame((layer, phase), 0.0)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            frame.rss_start = _max_rss_bytes()
        self._stack.append(frame)
        frame.start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            elapsed = time.perf_counter() - frame.start
            self._stack.pop()
            if self.cuda:
                peak = max(frame.peak, float(torch.cuda.max_memory_allocated(self.device)))
                for parent in self._stack:  # the reset above hid this interval from the parents
                    parent.peak = max(parent.peak, peak)
                self.peak[frame.key] = max(self.peak.get(frame.key, 0.0), peak)
            else:
                grown = _max_rss_bytes() - frame.rss_start
                self.peak[frame.key] = self.peak.get(frame.key, 0.0) + grown
            self.seconds[frame.key] = self.seconds.get(frame.key, 0.0) + elapsed - frame.child_seconds
            if self._stack:
                self._stack[-1].child_seconds += elapsed

    def get(self, layer: str, phase: str) -> tuple[float, float]:
        """(seconds, peak memory bytes) of a key; (0, NaN) when never measured."""
        key = (layer, phase)
        return self.seconds.get(key, 0.0), self.peak.get(key, math.nan)
