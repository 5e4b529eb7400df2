"""SOAP baseline: ``pytorch_optimizer.SOAP`` (pytorch-optimizer 4.1.0) for matrices, AdamW for the rest.

SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam", Algorithm 3), per
m × n matrix W with gradient G (L, R: Shampoo's factors; Q_L, Q_R: their eigenbases):

    first step: L ← (1 − β_s)·GGᵀ, R ← (1 − β_s)·GᵀG, Q_L, Q_R ← eigh (descending); no update
    G' ← Q_Lᵀ G Q_R;   M ← β₁M + (1 − β₁)G;   M' ← Q_Lᵀ M Q_R
    V  ← β₂V + (1 − β₂)·G'⊙G';   N' ← M' / (√V + ε)
    W  ← W − η·(√(1 − β₂ᵗ) / (1 − β₁ᵗ))·Q_L N' Q_Rᵀ;   W ← W − η·λ·W    (decoupled, after)
    L ← β_s L + (1 − β_s)GGᵀ;  R likewise
    every f steps: Q ← QR(S·Q) (one power iteration; columns sorted by estimated eigenvalue, V's
    axes permuted the same way)

Library choice. No reference SOAP is on PyPI. pytorch-optimizer 4.1.0's ``SOAP`` is a close port
of the authors' reference code (github.com/nikhilvyas/SOAP, ``soap.py``) and has the reference's
defaults; heavyball 3.2.1's ``SOAP`` departs from them (β = (0.9, 0.95), precondition frequency 2,
max_precond_dim 2048, merge_dims on, plus its own chainable transforms), so pytorch-optimizer was
chosen. ``tests/test_optimizers_baselines.py`` compares it in float64 against a literal
transcription of the algorithm above.

Defaults (all equal to the reference's): lr 3e-3, betas (0.95, 0.95) (``momentum`` = β₁,
``beta2`` = β₂), shampoo_beta = β₂, eps 1e-8, weight_decay 0.01, precondition_frequency 10,
max_precond_dim 10000 (larger dimensions are not rotated), merge_dims false, normalize_grads false,
correct_bias true. One-dimensional parameters never reach SOAP (they are AdamW's), so
precondition_1d is moot.

Deviations of the package from the reference code (nikhilvyas/SOAP at commit a1e5535), none of
which changes the algorithm:

- The reference keeps M in the rotated basis (projecting it back and forth when Q changes); the
  package keeps M in the original basis and rotates it each step (the paper's Algorithm 3) —
  equal up to rounding.
- Eigenbases: the reference computes eigh and QR in float32 (``.float()``) whatever the
  parameter dtype; the package does eigh in the parameter's dtype and the QR refresh in float32.
  Identical for float32 training; in float64 the QR refresh is only float32-accurate (the test's
  tolerance after a refresh reflects this).
- The step counter and the skipped first step are per param group in the package, per parameter
  in the reference — identical when every parameter gets a gradient at every step (the case
  here).
- ``normalize_grads`` divides by RMS + ε instead of RMS + 1e-30.

Conv kernels: by default (``conv_view='tensor'``) SOAP gets the 4-D kernel and rotates each of
its dimensions, as the reference code does (for a 512 × 512 × 3 × 3 kernel: 512, 512, 3 and 3).
``conv_view='matrix'`` hands it the suite's out × (in·kh·kw) matrix instead (a view sharing the
parameter's storage), as Muon, Shampoo and Spectral Newton see it — but then ResNet's
512 × 4608 kernels get dense 4608 × 4608 rotations (max_precond_dim 10000): an eigh at the
first step, a QR per refresh and three 512·4608² projections per step, which is why the
reference-faithful view is the default here.

Distribution: SOAP's step runs only on the matrices this rank owns (the others' gradients are
hidden from the library during its step, so it creates no state for them), then the new values
are broadcast (:mod:`optimizers.distributed`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .layer_types import matrix_shape
from .matrix_base import MatrixOptimizer, OwnedMatrix
from .settings import SOAPSettings


class SOAP(MatrixOptimizer):
    """SOAP (pytorch-optimizer 4.1.0) on matrix groups + AdamW side-car; see the module docstring.

    Settings: :class:`optimizers.settings.SOAPSettings` (``lr``, ``momentum`` (β₁), ``beta2``,
    ``shampoo_beta`` (None: β₂), ``eps``, ``weight_decay``, ``precondition_frequency``,
    ``max_precond_dim``, ``merge_dims``, ``normalize_grads``, ``correct_bias``, ``conv_view`` and
    the shared matrix-optimizer settings). The library optimizer keeps the matrix state and
    applies the update, so this class replaces the frame's per-matrix step
    (:meth:`step_owned`) and adds the library's state to the checkpoint.
    """

    settings_model = SOAPSettings

    def __init__(self, params: Iterable[Any], **settings: Any) -> None:
        super().__init__(params, **settings)
        # The library optimizer is built on first use (step or load_state_dict): the matrix views
        # must share the storage the parameters have *after* the engine moved the model.
        self.inner: torch.optim.Optimizer | None = None
        self._views: list[torch.Tensor] = []

    # --- the library optimizer over matrix views ----------------------------------------------

    def _reshaped(self, p: torch.Tensor, group: dict[str, Any]) -> bool:
        return group["conv_view"] == "matrix" and p.ndim > 2

    def _make_view(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        if not self._reshaped(p, group):
            return p
        if not p.is_contiguous():
            raise RuntimeError(
                "SOAP with conv_view='matrix' needs contiguous conv kernels (got a channels_last weight?); "
                "use conv_view='tensor'"
            )
        return p.detach().view(matrix_shape(p.shape))

    def _inner_hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "lr": group["lr"],
            "betas": (group["momentum"], group["beta2"]),
            "shampoo_beta": group["shampoo_beta"],
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "precondition_frequency": group["precondition_frequency"],
            "max_precondition_dim": group["max_precond_dim"],
            "merge_dims": group["merge_dims"],
            "normalize_gradient": group["normalize_grads"],
            "correct_bias": group["correct_bias"],
            "precondition_1d": False,
        }

    def _ensure_inner(self) -> torch.optim.Optimizer | None:
        """The library optimizer over views of :meth:`matrix_tensors` (one inner group per matrix
        group), built on first use; views whose tensor's storage changed since (a later
        ``.to(device)``, or a ZeRO ≥ 1 handle refilled for this step) are re-pointed, state kept."""
        from pytorch_optimizer import SOAP as LibrarySOAP

        groups = self.matrix_groups()
        if not groups:
            return None
        items = self.matrix_items()
        if self.inner is None:
            self._views = [self._make_view(p, g) for g, p in items]
            inner_groups, k = [], 0
            for g in groups:
                n = len(g["param_names"])
                inner_groups.append({"params": self._views[k : k + n], **self._inner_hyperparameters(g)})
                k += n
            self.inner = LibrarySOAP(inner_groups, data_format="channels_first")
            return self.inner
        positions = [(gi, j) for gi, g in enumerate(groups) for j in range(len(g["param_names"]))]
        for k, ((g, p), (gi, j)) in enumerate(zip(items, positions, strict=True)):
            v = self._views[k]
            if v is not p and (v.data_ptr() != p.data_ptr() or v.device != p.device or v.numel() != p.numel()):
                new = self._make_view(p, g)
                if v in self.inner.state:
                    self.inner.state[new] = self.inner.state.pop(v)
                self.inner.param_groups[gi]["params"][j] = new
                self._views[k] = new
        return self.inner

    def step_owned(self, matrices: Sequence[OwnedMatrix]) -> None:
        """One library step on the owned matrices: the others' gradients are hidden from it, so it
        neither updates them nor creates state for them. Called on every rank every step, so the
        library's per-group step counter stays the same on all ranks (and in a checkpoint)."""
        inner = self._ensure_inner()
        if inner is None:
            return
        owned = {id(m.param) for m in matrices}
        params = self.matrix_tensors()
        for outer, ig in zip(self.matrix_groups(), inner.param_groups, strict=True):
            ig.update(self._inner_hyperparameters(outer))
        hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            for p, v in zip(params, self._views, strict=True):
                mine = p.grad is not None and id(p) in owned
                if v is p:
                    if p.grad is not None and not mine:
                        hidden.append((p, p.grad))
                        p.grad = None
                else:
                    v.grad = p.grad.view(v.shape) if mine else None
            inner.step()
        finally:
            for p, g in hidden:
                p.grad = g
            for p, v in zip(params, self._views, strict=True):
                if v is not p:
                    v.grad = None

    # --- checkpoints: the matrix state lives in the library optimizer ------------------------

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        inner = self._ensure_inner()
        if inner is not None:
            isd = inner.state_dict()
            isd["state"] = self.gathered_state(isd["state"], list(range(len(self._views))))
            sd["inner"] = isd
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        isd = state_dict.pop("inner", None)
        super().load_state_dict(state_dict)
        inner = self._ensure_inner()
        if isd is not None and inner is not None:
            inner.load_state_dict(isd)
            self.drop_unowned(inner.state, self._views)
