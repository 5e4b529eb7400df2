"""Owner ranks for the probe's per-module work (issue 14, point 2).

After each pass over the probe batch, every probed module has work that does not split by
samples: the SVD of its gradient, the merge of its rank-local sketches, its factor eigenvalues
and columns. As the optimizers do (`optimizers.distributed.lpt_assign`), each module gets one
owner rank by longest-processing-time-first on its cost m·n·min(m, n), computed identically on
every rank without communication; only the owner does the work, so the per-rank cost falls with
the number of ranks P.

The results reach every rank through :func:`share_`: each rank holds zero-initialised tensors of
the agreed shapes, the owners fill theirs, and one float64 all-reduce sums them (x + 0 = x for
every float, NaN and ±inf included), so all ranks end with bitwise identical values — which
the probe needs (the HVP directions must be the same everywhere, and every rank hands the same
α to its optimizer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from bench.distributed import all_reduce_sum_
from optimizers.distributed import lpt_assign, matrix_cost, rank_and_world


def assign_owners(shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Owner rank of each module (by its m × n matrix view), LPT on m·n·min(m, n)."""
    _, world = rank_and_world()
    names = list(shapes)
    owners = lpt_assign([matrix_cost(shapes[n]) for n in names], world)
    return dict(zip(names, owners, strict=True))


def owns(owners: Mapping[str, int], module: str) -> bool:
    """Whether this rank owns ``module``."""
    return owners[module] == rank_and_world()[0]


def share_(tensors: Mapping[str, Sequence[torch.Tensor]], owners: Mapping[str, int]) -> None:
    """Give every rank the owners' values of ``tensors`` (module → its tensors), in place: the
    non-owners' copies are zeroed, then all are summed in one collective."""
    rank, world = rank_and_world()
    if world <= 1:
        return
    flat: list[torch.Tensor] = []
    for module, items in tensors.items():
        for t in items:
            if owners[module] != rank:
                t.zero_()
            flat.append(t)
    all_reduce_sum_(flat)
