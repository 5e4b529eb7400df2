"""Whole matrices from ZeRO flat partitions: the owner-rank exchange at ZeRO stages 1, 2 and 3.

Under ZeRO ≥ 1 DeepSpeed flattens each param group of the client optimizer, splits it over the
data-parallel ranks and hands every rank only its own piece: one flat fp32 master partition whose
``.grad`` is the matching piece of the fully reduced (averaged, clipped) gradient. A matrix
optimizer needs whole matrices, so this module moves pieces between the partitions and the
matrices' owner ranks (the same LPT owners as at ZeRO-0, :mod:`optimizers.distributed`) and back.
It knows nothing about DeepSpeed: where each piece lies is a list of :class:`Fragment` per rank,
read from DeepSpeed by :mod:`optimizers.deepspeed_zero` (the one module that touches its internals).

**Fragments.** A fragment says: elements ``[param_start, param_start + numel)`` of matrix
``matrix`` (row-major flattening of the parameter) lie at ``[flat_start, flat_start + numel)`` of
this rank's flat partition. At ZeRO-1/2 a matrix is cut wherever the rank boundaries of its group's
flattened buffer fall (one piece on one rank, or pieces on consecutive ranks); at ZeRO-3 every
matrix is cut into P equal pieces, one per rank. The fragment table of every rank is exchanged
once (``all_gather_object``) and checked to tile every matrix exactly once, so a layout this
module does not understand fails loudly instead of updating a scrambled matrix.

**One step** (inside the client optimizer's step for the matrix group, after DeepSpeed has
reduced, averaged and clipped the gradients):

1. *to the owners* — one ``all_to_all_single``: each rank sends, to each owner, its pieces of the
   owner's matrices, gradient pieces then master-weight pieces (fp32). The owner assembles whole
   matrices W and G in :attr:`ZeroPartitions.handles`;
2. the optimizer's per-matrix math runs on the owner only (state, e.g. momentum or Shampoo's
   factors, exists only there), W ← W·(1 − lr·λ) − lr·s·Δ on the whole matrix;
3. *back to the partitions* — one ``all_to_all_single`` of the new values of W, each piece to the
   rank that holds it; every rank writes its pieces into its master partition, and DeepSpeed then
   casts and all-gathers the parameters as it does for any optimizer.

Per rank and step that is about 3·M·(P − 1)/P² elements sent (M: matrix elements of the model),
against the M·(P − 1)/P of ZeRO's own parameter all-gather. The owners' whole matrices are held
only during the step: the handles' storage is released afterwards, so between steps a rank holds
its master partition and the state of its own matrices, nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from typing import Any

import torch
import torch.distributed as dist

from .distributed import rank_and_world
from .timing import StepTimer


@dataclass(frozen=True, order=True)
class Fragment:
    """Elements ``[param_start, param_start + numel)`` of matrix ``matrix`` at
    ``[flat_start, flat_start + numel)`` of one rank's flat partition."""

    matrix: int
    param_start: int
    flat_start: int
    numel: int


def check_tiling(table: Sequence[Sequence[Fragment]], shapes: Sequence[tuple[int, ...]]) -> None:
    """Raise ``RuntimeError`` unless the fragments of all ranks cover every matrix exactly once."""
    pieces: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(shapes))}
    for rank, fragments in enumerate(table):
        for f in fragments:
            if f.matrix not in pieces or f.numel <= 0 or f.param_start < 0 or f.flat_start < 0:
                raise RuntimeError(f"rank {rank}: malformed ZeRO fragment {f}")
            pieces[f.matrix].append((f.param_start, f.param_start + f.numel))
    for i, shape in enumerate(shapes):
        end = 0
        for start, stop in sorted(pieces[i]):
            if start != end:
                break
            end = stop
        if end != math.prod(shape) or sum(b - a for a, b in pieces[i]) != end:
            raise RuntimeError(
                f"the ZeRO partitions do not tile matrix {i} (shape {tuple(shape)}) exactly once: pieces "
                f"{sorted(pieces[i])[:8]}; DeepSpeed's partition layout is not the one this module was written for"
            )


class ZeroPartitions:
    """The owner exchange between ZeRO flat partitions and whole matrices (module docstring).

    ``local``: this rank's fragments; ``shapes``: every matrix's shape (by position); ``owners``:
    the owner rank of every matrix (identical on every rank); ``group``: DeepSpeed's data-parallel
    process group (None: the world). A collective to build (the fragment tables are exchanged).
    """

    def __init__(
        self,
        local: Sequence[Fragment],
        shapes: Sequence[tuple[int, ...]],
        owners: Sequence[int],
        group: Any = None,
    ) -> None:
        self.rank, self.world = rank_and_world(group)
        self.group = group
        self.shapes = [tuple(s) for s in shapes]
        self.owners = list(owners)
        table: list[Any] = [[astuple(f) for f in local]]
        if self.world > 1:
            table = [None] * self.world
            dist.all_gather_object(table, [astuple(f) for f in local], group=group)
        self.table = [sorted(Fragment(*t) for t in part) for part in table]
        check_tiling(self.table, self.shapes)
        mine = self.table[self.rank]
        # send[d]: my pieces of d's matrices; recv[s]: s's pieces of my matrices (sorted: both
        # sides enumerate the same pieces in the same order without further communication).
        self.send = [[f for f in mine if self.owners[f.matrix] == d] for d in range(self.world)]
        self.recv = [[f for f in self.table[s] if self.owners[f.matrix] == self.rank] for s in range(self.world)]
        self.owned = [i for i, r in enumerate(self.owners) if r == self.rank]
        self.handles: list[torch.Tensor] = [torch.empty(0) for _ in self.shapes]
        """One persistent tensor per matrix: on its owner it holds the whole matrix during a step
        (its identity keys the optimizer state), otherwise and between steps it is empty."""
        self._timer: StepTimer | None = None
        self._bytes = 0

    @staticmethod
    def _numel(fragments: Sequence[Fragment]) -> int:
        return sum(f.numel for f in fragments)

    def _exchange(self, chunks: list[torch.Tensor], recv_sizes: list[int], like: torch.Tensor) -> list[torch.Tensor]:
        """all_to_all_single of ``chunks[d]`` to rank d; returns what came from each rank (own chunk
        skipped: it never leaves the rank)."""
        send_sizes = [0 if d == self.rank else c.numel() for d, c in enumerate(chunks)]
        recv_sizes = [0 if s == self.rank else n for s, n in enumerate(recv_sizes)]
        empty = like.new_empty(0)
        send = torch.cat([c if d != self.rank else empty for d, c in enumerate(chunks)])
        out = like.new_empty(sum(recv_sizes))
        if self.world > 1:
            dist.all_to_all_single(out, send, recv_sizes, send_sizes, group=self.group)
        self._bytes += send.numel() * send.element_size()
        return list(out.split(recv_sizes))

    @contextmanager
    def whole_matrices(self, flat: torch.Tensor) -> Iterator[list[tuple[int, torch.Tensor]]]:
        """Gather the owned matrices (values and gradients) from ``flat`` (this rank's master
        partition, with its gradient piece in ``flat.grad``), yield ``(position, handle)`` pairs
        whose ``.data`` is the whole matrix and ``.grad`` its whole gradient, then, on exit, write
        the handles' new values back into every rank's partition and release them. A collective:
        every rank enters it in the same step, also one that owns nothing."""
        if flat.grad is None:
            raise RuntimeError("the matrix group's flat partition has no gradient: is this DeepSpeed's step?")
        self._bytes = 0
        timer = StepTimer()
        grad = flat.grad.to(flat.dtype)
        with timer.measure(flat.device):
            chunks = [
                torch.cat([t[f.flat_start : f.flat_start + f.numel] for t in (grad, flat.detach()) for f in frags])
                if frags and d != self.rank else flat.new_empty(0)
                for d, frags in enumerate(self.send)
            ]
            received = self._exchange(chunks, [2 * self._numel(r) for r in self.recv], flat)
            values = {i: flat.new_empty(math.prod(self.shapes[i])) for i in self.owned}
            grads = {i: flat.new_empty(math.prod(self.shapes[i])) for i in self.owned}
            for s in range(self.world):
                frags = self.recv[s]
                if s == self.rank:
                    for f in frags:
                        grads[f.matrix][f.param_start : f.param_start + f.numel] = grad[f.flat_start : f.flat_start + f.numel]
                        values[f.matrix][f.param_start : f.param_start + f.numel] = flat[f.flat_start : f.flat_start + f.numel]
                    continue
                n = self._numel(frags)
                g_part, v_part = received[s][:n], received[s][n:]
                offset = 0
                for f in frags:
                    grads[f.matrix][f.param_start : f.param_start + f.numel] = g_part[offset : offset + f.numel]
                    values[f.matrix][f.param_start : f.param_start + f.numel] = v_part[offset : offset + f.numel]
                    offset += f.numel
        for i in self.owned:
            handle = self.handles[i]
            handle.data = values[i].view(self.shapes[i])
            handle.grad = grads[i].view(self.shapes[i])
        try:
            yield [(i, self.handles[i]) for i in self.owned]
        finally:
            with timer.measure(flat.device):
                self._write_back(flat)
            self._timer = timer

    def _write_back(self, flat: torch.Tensor) -> None:
        """Send the owners' new values to the ranks holding the pieces; release the handles."""
        new = {i: self.handles[i].detach().reshape(-1) for i in self.owned}
        chunks = [
            torch.cat([new[f.matrix][f.param_start : f.param_start + f.numel] for f in frags])
            if frags else flat.new_empty(0)
            for frags in self.recv
        ]
        received = self._exchange(chunks, [self._numel(f) for f in self.send], flat)
        target = flat.detach()
        for d in range(self.world):
            frags = self.send[d]
            source = chunks[d] if d == self.rank else received[d]
            offset = 0
            for f in frags:
                target[f.flat_start : f.flat_start + f.numel] = source[offset : offset + f.numel]
                offset += f.numel
        for i in self.owned:
            handle = self.handles[i]
            handle.grad = None
            handle.data = flat.new_empty(0)

    def metrics(self) -> dict[str, float]:
        """``comm_time_s`` (both exchanges with their packing, this rank) and ``bytes_communicated``
        (bytes this rank sent) of the last step."""
        return {
            "comm_time_s": self._timer.seconds() if self._timer is not None else 0.0,
            "bytes_communicated": float(self._bytes),
        }
