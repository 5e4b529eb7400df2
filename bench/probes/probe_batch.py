"""The fixed probe batch, its micro-batches and its rank shards.

docs/science/quantities.md measures every quantity "on one fixed probe batch of B samples" (2048-4096). Here:

- the batch is the first ``size`` entries of a permutation of a dataset split drawn from a seed,
  so every rank (and every probe of a trial) sees the same B samples without communicating;
- it is processed in micro-batches so that memory is bounded by the micro-batch, not by B;
- with ``torch.distributed`` initialised and world > 1 each rank takes a contiguous shard of the
  batch, and every accumulated quantity is a **sum** over samples that is all-reduced
  (`bench.distributed.all_reduce_sum_`). All probe quantities are sums divided by global counts,
  so the result equals the single-process result up to floating-point summation order.

The split is read through ``dataset[i]``: pass a split whose items are not randomly augmented
(every split of `bench.data` is deterministic).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from bench.batching import fetch, shard_range
from optimizers.distributed import rank_and_world


@dataclass(frozen=True)
class ProbeBatch:
    """A fixed set of sample indices of one dataset split.

    Attributes:
        dataset: the split (items are ``(input, target)`` tensors).
        indices: the global probe batch, identical on every rank.
        seed: the seed the indices were drawn from.
    """

    dataset: Dataset
    indices: tuple[int, ...]
    seed: int = 0

    @classmethod
    def from_dataset(cls, dataset: Dataset, size: int = 2048, seed: int = 0) -> ProbeBatch:
        """The first ``min(size, len(dataset))`` entries of a seeded permutation of the split.

        A private generator is used, so drawing the probe batch leaves the global RNG (and the
        training run's randomness) untouched.
        """
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("cannot make a probe batch from an empty split")
        gen = torch.Generator().manual_seed(int(seed) % (1 << 63))
        order = torch.randperm(n, generator=gen)[: min(int(size), n)]
        return cls(dataset, tuple(int(i) for i in order), int(seed))

    @property
    def size(self) -> int:
        """B, the number of samples in the whole (global) probe batch."""
        return len(self.indices)

    def shard(self, rank: int | None = None, world: int | None = None) -> tuple[int, ...]:
        """This rank's contiguous share of the indices (sizes differ by at most one)."""
        if rank is None or world is None:
            rank, world = rank_and_world()
        part = shard_range(self.size, world, rank)
        return self.indices[part.start : part.stop]

    def micro_batches(
        self,
        micro_batch_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        rank: int | None = None,
        world: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, targets)`` micro-batches of this rank's shard, on ``device``.

        Floating-point inputs are cast to ``dtype`` (when given); integer inputs (token ids)
        and targets keep their dtype.
        """
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        mine = self.shard(rank, world)
        for start in range(0, len(mine), micro_batch_size):
            x, y = fetch(self.dataset, list(mine[start : start + micro_batch_size]))
            if dtype is not None and x.is_floating_point():
                x = x.to(dtype)
            yield x.to(device), y.to(device)
