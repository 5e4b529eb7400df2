"""Deterministic global batches, partitioned across data-parallel ranks.

The sample stream is the concatenation of per-epoch permutations of the training set, each drawn
from the data seed and the epoch number, so every rank can compute the same global order without
communicating. Optimizer step ``t`` consumes stream positions ``[t·G, (t+1)·G)`` with
``G = micro_batch · grad_accum · world_size``; within it, micro-batch ``a`` of rank ``r`` is the
contiguous slice starting at ``t·G + (a·world_size + r)·micro_batch``.

Two consequences the tests rely on: the union over ranks of one step's micro-batches is exactly
the global batch a single process with the same ``G`` would draw (distributed equals single
process), and resuming at step ``t`` needs nothing but ``t`` (resume at the right sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset, default_collate


@dataclass
class GlobalBatchSampler:
    num_samples: int
    seed: int
    micro_batch: int
    grad_accum: int
    world_size: int
    rank: int
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_samples <= 0:
            raise ValueError("the training split is empty")

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            gen = torch.Generator().manual_seed((self.seed + 1_000_003 * epoch) % (1 << 63))
            self._cache = {epoch: torch.randperm(self.num_samples, generator=gen)}  # keep one epoch
        return self._cache[epoch]

    def positions(self, step: int, micro: int) -> range:
        """Stream positions of this rank's micro-batch ``micro`` of optimizer step ``step`` (0-based)."""
        start = step * self.global_batch + (micro * self.world_size + self.rank) * self.micro_batch
        return range(start, start + self.micro_batch)

    def indices(self, step: int, micro: int) -> list[int]:
        out = []
        for pos in self.positions(step, micro):
            epoch, offset = divmod(pos, self.num_samples)
            out.append(int(self._epoch_order(epoch)[offset]))
        return out


def fetch(dataset: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate ``dataset[i]`` for the given indices into an (input, target) batch."""
    return default_collate([dataset[i] for i in indices])


def shard_range(n: int, world_size: int, rank: int) -> range:
    """Contiguous evaluation shard of ``n`` samples for ``rank`` (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))
