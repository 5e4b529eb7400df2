"""Muon baseline: ``timm.optim.Muon`` (timm 1.0.31) for matrices, AdamW for the rest.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/), per matrix W with
gradient g:

    buf ← μ·buf + (1 − μ)·g                      (EMA momentum, torch/timm ``lerp`` form)
    u   ← (1 − μ)·g + μ·buf  (Nesterov)   or   buf
    O   ← NS₅(u)                                 (quintic Newton–Schulz on u / ‖u‖_F, bf16)
    W   ← W·(1 − lr·λ) − lr·s(m, n)·O

Library choice. ``torch.optim.Muon`` refuses every non-2-D parameter (conv kernels). timm 1.0.31
ships ``timm.optim.Muon``, which flattens a conv kernel to out × (in·kh·kw) (``conv_mode='flatten'``)
and is otherwise the same algorithm: on 2-D weights it matches ``torch.optim.Muon`` exactly (same
momentum/Nesterov form, transpose to the wide side, Frobenius normalisation clamped at ε = 1e-7,
bf16 iteration with the same fused ``addmm`` sequence, decoupled weight decay before the update,
same shape scale) — ``tests/test_optimizers_baselines.py`` checks this bitwise. pytorch-optimizer
4.1.0's ``Muon`` was the alternative; timm was preferred because its per-parameter step needs no
library-specific group flags beyond ``use_muon`` and it is the implementation timm users train with.

Only the matrix groups are handed to timm (``use_muon=True``, so timm's own shape-based routing and
AdamW fallback are never used); biases, norms, embeddings and the head are updated by the suite's
AdamW side-car, by the same grouping rules as Spectral Newton (:mod:`optimizers.matrix_base`).

Update-scale convention (``adjust_lr``; s(m, n) with m × n the matrix view, m = out):

- ``original`` (default): √max(1, m/n) — Keller Jordan's Muon and ``torch.optim.Muon``'s default;
- ``match_rms_adamw``: 0.2·√max(m, n) — Moonlight (Liu et al. 2025), update RMS ≈ AdamW's, so AdamW
  learning rates and weight decay carry over;
- ``spectral``: √(m/n) — Bernstein's spectral-norm scaling (torch's ``spectral_unclamped``, timm's
  ``rms_to_rms``);
- ``none``: 1.

Defaults that differ from a reference: ``momentum`` 0.95, ``nesterov`` true, NS coefficients
``original`` (3.4445, −4.7750, 2.0315) with 5 steps and ``lr`` 0.02 follow Keller Jordan's Muon;
``weight_decay`` 0 (his default; ``torch.optim.Muon`` defaults to 0.1); timm's own defaults
(``nesterov=False``, ``ns_coefficients='quintic'``, ``adjust_lr_fn='match_rms_adamw'``) are
overridden. The Newton–Schulz iteration always runs in bfloat16 (timm and torch hard-code it).

Distribution: the library step runs only on the matrices this rank owns (the others' gradients are
hidden from timm during its step, so it creates no momentum buffer for them), then the new values
are broadcast (:mod:`optimizers.distributed`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .distributed import DEFAULT_BUCKET_CAP_MB
from .matrix_base import MatrixOptimizer
from .timing import StepTimer

ADJUST_LR: dict[str, str | None] = {
    "original": "original",
    "match_rms_adamw": "match_rms_adamw",
    "spectral": "rms_to_rms",
    "none": None,
}
NS_COEFFICIENTS: tuple[str, ...] = ("original", "quintic", "polar_express", "polar_express_safer")
NS_EPS = 1e-7  # Keller Jordan's ε of the Frobenius normalisation (torch and timm alike)


class Muon(MatrixOptimizer):
    """Muon (timm 1.0.31) on matrix groups + AdamW side-car; see the module docstring.

    Args (defaults are the registry's, ``optimizers.settings.MuonSettings``): ``lr``,
    ``momentum`` (μ), ``nesterov``, ``weight_decay`` (decoupled λ, matrix and decayed AdamW
    groups), ``ns_steps``, ``ns_coefficients`` (a timm preset), ``adjust_lr`` (update-scale
    convention), ``adamw_lr``/``adamw_betas``/``adamw_eps``, ``distribution``, ``bucket_cap_mb``.
    """

    owner_name = "Muon"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_coefficients: str = "original",
        adjust_lr: str = "original",
        adamw_lr: float = 1e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        distribution: str = "sharded",
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
    ) -> None:
        from timm.optim import Muon as TimmMuon

        if not lr > 0:
            raise ValueError(f"lr must be > 0 (got {lr})")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) (got {momentum})")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0 (got {weight_decay})")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be ≥ 1 (got {ns_steps})")
        if ns_coefficients not in NS_COEFFICIENTS:
            raise ValueError(f"ns_coefficients must be one of {', '.join(NS_COEFFICIENTS)} (got {ns_coefficients!r})")
        if adjust_lr not in ADJUST_LR:
            raise ValueError(f"adjust_lr must be one of {', '.join(ADJUST_LR)} (got {adjust_lr!r})")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "ns_steps": ns_steps,
            "ns_coefficients": ns_coefficients,
            "adjust_lr": adjust_lr,
        }
        super().__init__(
            params, defaults, adamw_lr=adamw_lr, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
            distribution=distribution, bucket_cap_mb=bucket_cap_mb,
        )
        inner_groups = [{"params": list(g["params"]), "use_muon": True} for g in self.matrix_groups()]
        self.inner = None if not self.matrix_params() else TimmMuon(
            inner_groups,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficients,
            eps=NS_EPS,
            adjust_lr_fn=ADJUST_LR[adjust_lr],
            conv_mode="flatten",
        )

    def _sync_hyperparameters(self) -> None:
        """Copy the (possibly scheduled) hyperparameters of each matrix group into timm's group."""
        for outer, inner in zip(self.matrix_groups(), self.inner.param_groups, strict=False):
            inner["lr"] = outer["lr"]
            inner["weight_decay"] = outer["weight_decay"]
            inner["momentum"] = outer["momentum"]
            inner["nesterov"] = outer["nesterov"]
            inner["ns_steps"] = outer["ns_steps"]
            inner["ns_coefficients"] = outer["ns_coefficients"]
            inner["adjust_lr_fn"] = ADJUST_LR[outer["adjust_lr"]]

    def _matrix_step(self, timer: StepTimer) -> None:
        params = self.matrix_params()
        if self.inner is None or not params:
            return
        self._sync_hyperparameters()
        hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            for p in params:
                if p.grad is not None and not self.sharding.owns(p):
                    hidden.append((p, p.grad))
                    p.grad = None
            with timer.measure(params[0].device):
                self.inner.step()
        finally:
            for p, g in hidden:
                p.grad = g

    # --- checkpoints: the matrix state lives in timm's optimizer ------------------------------

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if self.inner is None:
            return sd
        inner = self.inner.state_dict()
        inner["state"] = self.sharding.gather_state(inner["state"], list(range(len(self.matrix_params()))))
        sd["inner"] = inner
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        inner = state_dict.pop("inner", None)
        super().load_state_dict(state_dict)
        if inner is not None and self.inner is not None:
            self.inner.load_state_dict(inner)
            self.sharding.drop_unowned(self.inner.state)
