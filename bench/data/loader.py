"""A rank's training micro-batches, fetched by the loop itself or ahead of it by background
worker processes — the same samples in the same order either way.

The order is the sampler's (`bench.batching.GlobalBatchSampler`): micro-batch ``a`` of optimizer
step ``t`` (1-based) is ``sampler.indices(t - 1, a)``, asked for step by step from the resume
point on. With no workers a micro-batch is read and collated when the loop asks for it (cheap
for tensors in memory and memory-mapped tokens). With workers, a `torch.utils.data.DataLoader`
whose batch sampler (`StepBatches`) yields exactly those index lists, in that order, decodes and
collates them in background processes, each keeping ``prefetch`` micro-batches ready, in pinned
memory when the trial runs on a GPU (the copy to the device is then asynchronous). The loader
hands batches back in sampler order, so the loop receives what it would have read itself; only
the waiting moves off the critical path (the loop records what is left of it as
``data_time_s``). Worker seeds come from the rank's seed and the first step, so a random
augmentation would also repeat for a given number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from bench.batching import GlobalBatchSampler
from bench.workload import model_batch, to_device

#: Background workers per rank for a dataset that decodes its items on access (images read from
#: files), unless the config says otherwise.
DECODING_WORKERS = 2


def default_workers(dataset: Dataset) -> int:
    """``DECODING_WORKERS`` for a dataset marked ``decodes_on_access`` (`ImageColumnDataset`), else
    0: tensors in memory and memory-mapped tokens are read faster than a worker hands them over."""
    return DECODING_WORKERS if getattr(dataset, "decodes_on_access", False) else 0


class StepBatches(Sampler[list[int]]):
    """The index lists of every micro-batch from (``step``, ``micro``) to the end of ``last_step``,
    in the loop's order: the batch sampler of the background loader."""

    def __init__(self, sampler: GlobalBatchSampler, step: int, micro: int, last_step: int) -> None:
        self.sampler, self.step, self.micro, self.last_step = sampler, step, micro, last_step

    def __iter__(self) -> Iterator[list[int]]:
        micro = self.micro
        for step in range(self.step, self.last_step + 1):
            for m in range(micro, self.sampler.grad_accum):
                yield self.sampler.indices(step - 1, m)
            micro = 0

    def __len__(self) -> int:
        return max(0, (self.last_step - self.step + 1) * self.sampler.grad_accum - self.micro)


class InputPipeline:
    """This rank's micro-batches of one split, on the trial's device (see the module docstring)."""

    def __init__(self, dataset: Dataset, sampler: GlobalBatchSampler, last_step: int, device: torch.device,
                 input_dtype: torch.dtype, workers: int | None = None, prefetch: int = 2, seed: int = 0) -> None:
        self.dataset, self.sampler, self.last_step = dataset, sampler, last_step
        self.device, self.input_dtype = device, input_dtype
        self.workers = default_workers(dataset) if workers is None else workers
        self.prefetch, self.seed = prefetch, seed
        self._batches: Iterator[Any] | None = None
        self._next: tuple[int, int] | None = None

    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch ``micro`` of optimizer step ``step`` (1-based)."""
        if self.workers == 0:
            return model_batch(self.dataset, self.sampler.indices(step - 1, micro), self.device, self.input_dtype)
        if self._next != (step, micro):  # the first call, or the loop jumped: restart there
            self._start(step, micro)
        x, y = next(self._batches)  # type: ignore[arg-type]
        self._next = (step, micro + 1) if micro + 1 < self.sampler.grad_accum else (step + 1, 0)
        return to_device(x, y, self.device, self.input_dtype)

    def _start(self, step: int, micro: int) -> None:
        self.close()
        loader = DataLoader(
            self.dataset, batch_sampler=StepBatches(self.sampler, step, micro, self.last_step),
            num_workers=self.workers, prefetch_factor=self.prefetch, collate_fn=default_collate,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(self.seed + step),
        )
        self._batches = iter(loader)

    def worker_pids(self) -> list[int]:
        """Process ids of the background workers (empty before the first batch or without workers)."""
        workers = getattr(self._batches, "_workers", [])
        return [w.pid for w in workers]

    def close(self) -> None:
        """Stop the background workers (dropping the iterator shuts them down)."""
        self._batches, self._next = None, None
