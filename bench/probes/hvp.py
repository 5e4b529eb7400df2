"""Exact curvature along given directions: vec(D)ᵀ H vec(D) by Hessian-vector products.

docs/science/quantities.md: h_k = ⟨D_k, H D_k⟩ with H the Hessian of the loss w.r.t. one layer's weight (its
diagonal block) and D_k = u_k v_kᵀ. With g = ∇_W S computed with ``create_graph=True``, the
vector-Jacobian product of g with D is ∇_W⟨g, D⟩ = H D (H is symmetric), so one double backward
per direction gives H D_k and h_k = ⟨D_k, H D_k⟩. HVPs are linear in the loss, so the full-batch
value is the sum of the micro-batch values of S_j = b_j · mean loss_j, divided by B.

Three ways to get the K products of one layer, exact alike (up to summation order):

- ``fwd_rev``: forward-mode over reverse-mode AD, H D = jvp(∇_W S; D), with the K directions
  vmapped (``torch.func``): one forward and one backward carrying K tangents per layer; every
  other layer's weights are constants, so it is the same diagonal block;
- ``batched``: one ``torch.autograd.grad(..., is_grads_batched=True)`` call with the K directions
  stacked along a leading axis (autograd vmaps the backward graph over them), on the pass's
  shared ``create_graph`` gradient;
- ``loop``: K double backwards of that gradient, one direction each.

Measured on the built-in transformer (CPU, one thread, K = 20, 16 sequences of 64 tokens, two
blocks, every layer; `analysis/reports/probe-modes-cpu/`): width 64 — fwd_rev 7.3 s, loop 6.4 s,
batched 23.6 s; width 128 — fwd_rev 11.9 s, loop 26.1 s, batched 21.5 s per micro-batch; one
double backward batched over *all* layers at once (exact too: each direction is zero outside its
layer) took 33 s and 100 s, and was dropped. Batching the double backward falls back to slow
per-direction loops inside vmap for ops without a batching rule (attention), which the
forward-mode path avoids. ``auto`` (the default) is ``fwd_rev``, falling back to ``loop`` for a
layer whose ops lack forward-mode AD.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch

log = logging.getLogger("specbench.probes")


def _forms(directions: torch.Tensor, hd: torch.Tensor) -> torch.Tensor:
    """⟨D_k, H D_k⟩ for each k, summed in float64."""
    return (directions.to(torch.float64) * hd.to(torch.float64)).reshape(directions.shape[0], -1).sum(1)


def quadratic_forms(
    grad: torch.Tensor,
    weight: torch.Tensor,
    directions: torch.Tensor,
    method: str = "batched",
    chunk: int | None = None,
) -> torch.Tensor:
    """⟨D_k, ∇_W⟨grad, D_k⟩⟩ for the K directions ``directions`` (K × weight.shape), float64.

    ``grad`` must be ∇_W S built with ``create_graph=True``; the graph is retained so other
    layers can reuse it. Returns zeros when ``grad`` does not depend on ``weight`` (a loss
    linear in W has no curvature). ``chunk`` caps the directions per batched call (memory).
    """
    k = directions.shape[0]
    out = torch.zeros(k, dtype=torch.float64, device=directions.device)
    if not grad.requires_grad:
        return out
    if method == "batched":
        step = k if chunk is None else max(1, chunk)
        for start in range(0, k, step):
            block = directions[start : start + step]
            with warnings.catch_warnings():
                # vmap falls back to a per-direction loop for ops without a batching rule and
                # says so once per op; that is a speed remark, not a problem with the result.
                warnings.filterwarnings("ignore", message=".*[Pp]erformance drop.*")
                warnings.filterwarnings("ignore", message=".*batching rule.*")
                (hd,) = torch.autograd.grad(
                    grad, weight, grad_outputs=block, retain_graph=True, allow_unused=True,
                    is_grads_batched=True,
                )
            if hd is not None:
                out[start : start + step] = _forms(block, hd)
        return out
    if method != "loop":
        raise ValueError(f"unknown HVP method {method!r}")
    for i in range(k):
        (hd,) = torch.autograd.grad(grad, weight, grad_outputs=directions[i], retain_graph=True, allow_unused=True)
        if hd is not None:
            out[i] = _forms(directions[i : i + 1], hd.unsqueeze(0))[0]
    return out


def forward_over_reverse(loss_of: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor,
                         directions: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """⟨D_k, H D_k⟩ by forward-mode over reverse-mode AD: H D = jvp(∇_W S, W; D), the K
    directions vmapped (``chunk`` at a time), float64 sums. ``loss_of(W)`` is S as a function of
    this layer's weight alone (every other tensor fixed), so the result is the same diagonal
    Hessian block as the double backward's."""
    grad_fn = torch.func.grad(loss_of)
    w0 = weight.detach()
    hd = torch.func.vmap(lambda d: torch.func.jvp(grad_fn, (w0,), (d,))[1], chunk_size=chunk)(directions)
    return _forms(directions, hd)


#: ``hvp_method`` settings and the method each starts with (``auto`` may fall back to ``loop``).
START = {"auto": "fwd_rev", "fwd_rev": "fwd_rev", "batched": "batched", "loop": "loop"}


class HVPMethod:
    """The method one layer uses: ``auto`` starts with forward-over-reverse and switches to the
    loop of double backwards when that fails (an op without forward-mode AD, or memory)."""

    def __init__(self, layer: str, setting: str, chunk: int | None = None) -> None:
        self.layer = layer
        self.chunk = chunk
        self.current = START[setting]
        self.fallback_allowed = setting == "auto"
        self.fell_back = False

    @property
    def needs_graph(self) -> bool:
        """Whether this method differentiates the ``create_graph`` gradient (reverse over reverse)."""
        return self.current != "fwd_rev"

    @property
    def label(self) -> str:
        """What was used, for the profile table: fwd_rev, batched, loop, or <first>->loop."""
        return f"{START['auto'] if self.fallback_allowed else self.current}->loop" if self.fell_back else self.current

    def run(self, directions: torch.Tensor, graph: Callable[[], tuple[torch.Tensor, torch.Tensor]],
            loss_of: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        """⟨D_k, H D_k⟩ of ``directions``: ``graph()`` gives (∇_W S with create_graph, W) for the
        reverse-over-reverse methods; ``loss_of`` (S as a function of W) for forward over reverse."""
        if self.current == "fwd_rev":
            try:
                return forward_over_reverse(loss_of, weight, directions, self.chunk)
            except Exception as exc:  # noqa: BLE001 - any failure of the functional path falls back
                self._fall_back(exc, directions)
        if self.current == "batched":
            grad, w = graph()
            try:
                return quadratic_forms(grad, w, directions, "batched", self.chunk)
            except Exception as exc:  # noqa: BLE001 - any failure of the batched path falls back
                self._fall_back(exc, directions)
        grad, w = graph()
        return quadratic_forms(grad, w, directions, "loop")

    def _fall_back(self, exc: Exception, directions: torch.Tensor) -> None:
        if not self.fallback_allowed:
            raise exc
        log.warning("%s HVP failed for %s (%s: %s); using one double backward per direction",
                    self.current, self.layer, type(exc).__name__, exc)
        self.current, self.fell_back = "loop", True
        if directions.is_cuda:
            torch.cuda.empty_cache()
