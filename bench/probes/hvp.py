"""Exact curvature along given directions: vec(D)ᵀ H vec(D) by Hessian-vector products.

docs/science/quantities.md: h_k = ⟨D_k, H D_k⟩ with H the Hessian of the loss w.r.t. one layer's weight (its
diagonal block) and D_k = u_k v_kᵀ. With g = ∇_W S computed with ``create_graph=True``, the
vector-Jacobian product of g with D is ∇_W⟨g, D⟩ = H D (H is symmetric), so one double backward
per direction gives H D_k and h_k = ⟨D_k, H D_k⟩. HVPs are linear in the loss, so the full-batch
value is the sum of the micro-batch values of S_j = b_j · mean loss_j, divided by B.

Two ways to do the K double backwards of one layer:

- ``batched``: one ``torch.autograd.grad(..., is_grads_batched=True)`` call with the K directions
  stacked along a leading axis (autograd vmaps the backward graph over them);
- ``loop``: K calls, one direction each.

Both compute exactly the same numbers (up to summation order). Batching can fail for backward
ops without a vmap rule (or run out of memory, K× the backward intermediates), so ``auto`` tries
it and falls back to the loop for that layer from then on.
"""

from __future__ import annotations

import logging
import warnings

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


class HVPMethod:
    """The method one layer uses: ``auto`` starts batched and switches to ``loop`` on failure."""

    def __init__(self, layer: str, setting: str, chunk: int | None = None) -> None:
        self.layer = layer
        self.chunk = chunk
        self.current = "loop" if setting == "loop" else "batched"
        self.fallback_allowed = setting == "auto"
        self.fell_back = False

    @property
    def label(self) -> str:
        """What was used, for the profile table: batched, loop, or batched->loop."""
        return "batched->loop" if self.fell_back else self.current

    def run(self, grad: torch.Tensor, weight: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        if self.current == "batched":
            try:
                return quadratic_forms(grad, weight, directions, "batched", self.chunk)
            except Exception as exc:  # noqa: BLE001 - any failure of the batched path falls back
                if not self.fallback_allowed:
                    raise
                log.warning("batched HVP failed for %s (%s: %s); using one HVP per direction",
                            self.layer, type(exc).__name__, exc)
                self.current, self.fell_back = "loop", True
                if directions.is_cuda:
                    torch.cuda.empty_cache()
        return quadratic_forms(grad, weight, directions, "loop")
