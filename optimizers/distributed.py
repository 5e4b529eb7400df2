"""Owner-rank sharding of matrix optimizers at ZeRO stage 0 — the distribution, kept apart from the
math (the optimizers only ask "do I own this matrix?" and call :meth:`OwnerSharding.sync_`).

At ZeRO-0 every rank holds the full all-reduced gradient after ``engine.backward``, so every rank
*could* compute every matrix update: that is ``distribution: redundant``. ``sharded`` splits the
matrix work over the ranks instead:

**Assignment.** Each matrix parameter is owned by exactly one rank. Its cost is estimated as
c = m·n·min(m, n) for its out × rest matrix view (m = shape[0], n = numel/m) — the flop count, up to
a constant, of an SVD, a Gram eigendecomposition or a Newton–Schulz iteration on that matrix.
Matrices are assigned by longest-processing-time-first (LPT): sorted by decreasing cost (ties:
list order), each goes to the rank with the least cost assigned so far (ties: lowest rank). The
assignment is a pure function of the shapes and the world size, so every rank computes the same
one without communicating; LPT's makespan is at most (4/3 − 1/(3·world)) × the optimum.

**Step.** Every rank runs the per-matrix work (momentum, preconditioning, weight decay, update)
only for the matrices it owns, so optimizer state exists only for those; the non-matrix
parameters (AdamW side-car, element-wise and cheap) are updated redundantly on every rank. Then
the owners' new parameter values are broadcast (:meth:`OwnerSharding.sync_`). Sending values
rather than updates works for any wrapped library optimizer and leaves every replica bitwise equal.

**Buckets.** For each owner rank in rank order, its parameters in list order, split by (dtype,
device), are packed consecutively into flat buffers of at most ``bucket_cap_mb`` MiB (a parameter
larger than the cap gets a buffer of its own). One ``broadcast`` per bucket from its owner; all
are issued asynchronously in the same order on every rank, then waited for, then the receivers
copy the slices into their parameters. The plan depends only on shapes, dtypes and the assignment,
so it is identical on all ranks. Broadcast rather than all-gather: LPT balances cost, not bytes,
so the ranks' payloads differ and an all-gather would pad every contribution to the largest.

**Metrics.** ``comm_time_s`` (wall time of the bucketed broadcasts, including the copies),
``bytes_communicated`` (payload bytes of all buckets this step: each is sent by its owner and
received by the world − 1 other ranks; plus 8·world bytes of the load collective) and
``load_imbalance`` = max/mean over ranks of the per-rank compute seconds of the matrix work. The
latter needs one extra collective: an ``all_gather`` of one float64 per rank per step, issued
whenever world > 1 (in both modes, so sharded and redundant runs are comparable); on CUDA, reading
this rank's compute seconds waits for its compute to finish.

**Checkpoints.** DeepSpeed calls ``optimizer.state_dict()`` on every rank at ZeRO-0 and saves rank
0's copy, so :meth:`OwnerSharding.gather_state` collects the owners' state entries
(``all_gather_object`` of CPU copies — a collective) into one full state dict, and
:meth:`OwnerSharding.drop_unowned` discards the entries a rank does not own after loading.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .layer_types import matrix_shape, param_shape
from .timing import StepTimer

DISTRIBUTIONS: tuple[str, ...] = ("sharded", "redundant")
DEFAULT_BUCKET_CAP_MB = 25.0


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """(rank, world size) of this process in ``group`` (default: the whole world); (0, 1) when no
    ``torch.distributed`` process group is initialised, so single-process code needs no branch."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def matrix_cost(shape: Sequence[int]) -> float:
    """Estimated cost m·n·min(m, n) of one matrix update (SVD / eigh / Newton–Schulz flops)."""
    m, n = matrix_shape(shape)
    return float(m) * n * min(m, n)


def lpt_assign(costs: Sequence[float], world: int) -> list[int]:
    """Owner rank (0 … world − 1) of each item under longest-processing-time-first scheduling.

    Items are taken by decreasing cost (ties: lower index first) and each goes to the rank with
    the least cost assigned so far (ties: lowest rank). The result is a pure function of
    ``costs`` and ``world``, so every rank computes the same assignment without communicating;
    the makespan is at most (4/3 − 1/(3·world)) × the optimum (Graham 1969). The per-rank totals
    are :func:`rank_loads`.
    """
    if world < 1:
        raise ValueError(f"world size must be ≥ 1 (got {world})")
    order = sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i))
    heap: list[tuple[float, int]] = [(0.0, r) for r in range(world)]
    owners = [0] * len(costs)
    for i in order:
        load, r = heapq.heappop(heap)  # least loaded; equal loads → lowest rank
        owners[i] = r
        heapq.heappush(heap, (load + float(costs[i]), r))
    return owners


def rank_loads(costs: Sequence[float], owners: Sequence[int], world: int) -> list[float]:
    """Total assigned cost per rank."""
    loads = [0.0] * world
    for c, r in zip(costs, owners, strict=True):
        loads[r] += float(c)
    return loads


@dataclass(frozen=True)
class Bucket:
    """One flat broadcast buffer: parameters (by index) of one owner, one dtype and device."""

    owner: int
    indices: tuple[int, ...]
    numels: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @property
    def numel(self) -> int:
        return sum(self.numels)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


def plan_buckets(
    params: Sequence[torch.Tensor], owners: Sequence[int], world: int, cap_bytes: int
) -> list[Bucket]:
    """Bucket plan (see module doc): per owner in rank order, per (dtype, device), consecutive
    parameters packed up to ``cap_bytes`` each."""
    buckets: list[Bucket] = []
    for r in range(world):
        open_: dict[tuple[torch.dtype, torch.device], tuple[list[int], int]] = {}
        for i, p in enumerate(params):
            if owners[i] != r:
                continue
            key = (p.dtype, p.device)
            size = p.numel() * p.element_size()
            members, used = open_.get(key, ([], 0))
            if members and used + size > cap_bytes:
                buckets.append(_bucket(r, members, params, key))
                members, used = [], 0
            members.append(i)
            open_[key] = (members, used + size)
        for key, (members, _) in open_.items():
            if members:
                buckets.append(_bucket(r, members, params, key))
    return buckets


def _bucket(owner: int, members: list[int], params: Sequence[torch.Tensor], key: tuple[Any, Any]) -> Bucket:
    return Bucket(owner, tuple(members), tuple(params[i].numel() for i in members), key[0], key[1])


def to_device(value: Any, device: torch.device | str) -> Any:
    """``value`` (a tensor, or mappings / lists / tuples of them) with every tensor detached and on
    ``device`` (the CPU for pickling across ranks; a loaded optimizer state back onto its device)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


class OwnerSharding:
    """Owner assignment, bucketed broadcast and metrics for an ordered list of matrix parameters.

    ``mode`` is ``sharded`` or ``redundant``; with no initialised process group, or world size
    1, both are the same (every matrix is owned by the only rank, nothing is communicated). The
    world and rank are read lazily (first :meth:`setup`), so the optimizer may be built before
    the process group exists.

    Matrices are identified by *position* in the list, not by tensor identity: engines may
    replace an optimizer's parameters by same-shaped copies after construction (DeepSpeed's
    fp16/bf16 wrappers at ZeRO-0 hand the client optimizer fp32 master copies, possibly on
    another device). The methods that touch tensors take the optimizer's current list, and the
    bucket plan is rebuilt whenever its shapes, dtypes or devices change.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        mode: str = "sharded",
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
        group: Any = None,
    ) -> None:
        if mode not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)} (got {mode!r})")
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0 (got {bucket_cap_mb})")
        self.shapes = [param_shape(p) for p in params]
        self.mode = mode
        self.cap_bytes = max(1, int(bucket_cap_mb * 2**20))
        self.group = group
        self._ready = False
        self.world, self.rank, self.sharded = 1, 0, False
        self.costs = [matrix_cost(s) for s in self.shapes]
        self.owners: list[int] = [0] * len(self.shapes)
        self.buckets: list[Bucket] = []
        self._plan_key: tuple[Any, ...] | None = None
        self._comm_timer: StepTimer | None = None
        self._bytes = 0
        self._gathered_seconds: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.shapes)

    # --- assignment ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Read world/rank and build the assignment (idempotent)."""
        if self._ready:
            return
        self.rank, self.world = rank_and_world(self.group)
        self.sharded = self.mode == "sharded" and self.world > 1
        self.owners = lpt_assign(self.costs, self.world) if self.sharded else [self.rank] * len(self.shapes)
        self._ready = True

    def owns_index(self, i: int) -> bool:
        """True if this rank computes the update of matrix ``i``."""
        self.setup()
        return self.owners[i] == self.rank

    def owned_indices(self) -> list[int]:
        self.setup()
        return [i for i, r in enumerate(self.owners) if r == self.rank]

    def owned_ids(self, params: Sequence[torch.Tensor]) -> set[int]:
        """``id()`` of the owned tensors among the optimizer's current matrix ``params``."""
        self._check(params)
        return {id(p) for i, p in enumerate(params) if self.owners[i] == self.rank}

    def _check(self, params: Sequence[torch.Tensor]) -> None:
        self.setup()
        shapes = [param_shape(p) for p in params]
        if shapes != self.shapes:
            raise RuntimeError(
                "the optimizer's matrix parameters changed shape since it was built (a ZeRO ≥ 1 flat "
                "partition?); matrix optimizers need whole matrices: use ZeRO stage 0"
            )

    # --- communication ------------------------------------------------------------------------

    def _src(self, owner: int) -> int:
        return owner if self.group is None else dist.get_global_rank(self.group, owner)

    def _plan(self, params: Sequence[torch.Tensor]) -> list[Bucket]:
        key = tuple((p.dtype, p.device) for p in params)
        if key != self._plan_key:
            self.buckets = plan_buckets(params, self.owners, self.world, self.cap_bytes)
            self._plan_key = key
        return self.buckets

    def sync_(self, params: Sequence[torch.Tensor]) -> None:
        """Broadcast the owners' new values of ``params`` to every rank (no-op unless sharded)."""
        self._check(params)
        timer = StepTimer()
        nbytes = 0
        buckets = self._plan(params) if self.sharded else []
        if buckets:
            with timer.measure(buckets[0].device):
                pending = []
                for b in buckets:
                    if b.owner == self.rank:
                        buf = torch.cat([params[i].detach().reshape(-1) for i in b.indices])
                    else:
                        buf = torch.empty(b.numel, dtype=b.dtype, device=b.device)
                    work = dist.broadcast(buf, src=self._src(b.owner), group=self.group, async_op=True)
                    pending.append((b, buf, work))
                for b, buf, work in pending:
                    work.wait()
                    nbytes += b.nbytes
                    if b.owner == self.rank:
                        continue
                    for i, chunk in zip(b.indices, buf.split(list(b.numels)), strict=True):
                        params[i].detach().copy_(chunk.view(params[i].shape))
        self._comm_timer, self._bytes = timer, nbytes

    def _collective_device(self) -> torch.device:
        backend = dist.get_backend(self.group)
        if backend == "nccl" and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def record_load(self, seconds: float) -> None:
        """All-gather this rank's compute seconds (when world > 1) for ``load_imbalance``."""
        self.setup()
        if self.world == 1:
            self._gathered_seconds = None
            return
        t = torch.tensor([float(seconds)], dtype=torch.float64, device=self._collective_device())
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t, group=self.group)
        self._gathered_seconds = out

    def load_imbalance(self) -> float:
        """max/mean of the ranks' compute seconds in the last step (1.0 on one rank)."""
        if not self._gathered_seconds:
            return 1.0
        values = torch.cat(self._gathered_seconds).tolist()
        mean = sum(values) / len(values)
        return max(values) / mean if mean > 0 else 1.0

    def metrics(self) -> dict[str, float]:
        """``comm_time_s``, ``load_imbalance`` and ``bytes_communicated`` of the last step."""
        comm = self._comm_timer.seconds() if self._comm_timer is not None else 0.0
        extra = 8 * self.world if self._gathered_seconds else 0
        return {
            "comm_time_s": comm,
            "load_imbalance": self.load_imbalance(),
            "bytes_communicated": float(self._bytes + extra),
        }

    # --- checkpoints --------------------------------------------------------------------------

    def gather_state(self, state: Mapping[Any, Any], keys: Sequence[Any]) -> dict[Any, Any]:
        """Merge the owners' entries of an optimizer state dict's ``state`` (collective when sharded).

        ``keys[i]`` is the state-dict key of matrix ``i``. Entries for other keys (e.g. the AdamW
        side-car, identical on every rank) are taken from this rank.
        """
        self.setup()
        merged = dict(state)
        if not self.sharded:
            return merged
        mine = {keys[i]: to_device(state[keys[i]], "cpu") for i in self.owned_indices() if keys[i] in state}
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, mine, group=self.group)
        for r, part in enumerate(parts):
            if r != self.rank and part:
                merged.update(part)
        return merged

    def drop_unowned(self, state: dict[Any, Any], keys: Sequence[Any]) -> None:
        """Delete the state entries (``keys[i]`` for matrix ``i``) of matrices this rank does not own."""
        self.setup()
        if not self.sharded:
            return
        for i, r in enumerate(self.owners):
            if r != self.rank:
                state.pop(keys[i], None)
