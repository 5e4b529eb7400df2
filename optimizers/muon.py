"""Muon baseline: timm 1.0.31's Muon (``timm.optim.muon``) for matrices, AdamW for the rest.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/), per matrix W with
gradient g:

    buf ← μ·buf + (1 − μ)·g                      (EMA momentum, torch/timm ``lerp`` form)
    u   ← (1 − μ)·g + μ·buf  (Nesterov)   or   buf
    O   ← NS₅(u)                                 (quintic Newton–Schulz on u / ‖u‖_F)
    W   ← W·(1 − lr·λ) − lr·s(m, n)·O

Library choice. ``torch.optim.Muon`` refuses every non-2-D parameter (conv kernels). timm 1.0.31
ships ``timm.optim.Muon``, which flattens a conv kernel to out × (in·kh·kw) (``conv_mode='flatten'``)
and is otherwise the same algorithm: on 2-D weights it matches ``torch.optim.Muon`` exactly (same
momentum/Nesterov form, transpose to the wide side, Frobenius normalisation clamped at ε = 1e-7,
bf16 iteration with the same fused ``addmm`` sequence, decoupled weight decay before the update,
same shape scale) — ``tests/test_optimizers_baselines.py`` checks this bitwise, and that our step
equals ``timm.optim.Muon.step`` on conv kernels. pytorch-optimizer 4.1.0's ``Muon`` was the
alternative; timm's was preferred because its pieces are public functions.

How it is wrapped. The per-parameter step is timm's ``_single_tensor_muon`` written out over
timm's public building blocks — ``reshape_for_muon`` (flatten), ``zeropower_via_newtonschulz``,
``get_lr_scale`` and the coefficient presets — so that two things timm's optimizer class does not
offer become possible: the Newton–Schulz dtype (``ns_dtype``; timm and torch hard-code bfloat16,
whose matmuls run ~100× slower than float32 on CPUs without native bf16, e.g. the AVX2 machines
CI runs on) and owner sharding (the state lives in this optimizer, only for owned matrices).
With ``ns_dtype='bfloat16'`` (the default) the arithmetic is exactly timm's.

Only matrix groups get Muon; biases, norms, embeddings and the head are updated by the suite's
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
``weight_decay`` 0 (his default; ``torch.optim.Muon`` defaults to 0.1); timm's own class defaults
(``nesterov=False``, ``ns_coefficients='quintic'``, ``adjust_lr_fn='match_rms_adamw'``) are not
used.

Distribution: only the matrices this rank owns are stepped (and have a momentum buffer), then the
new values are broadcast (:mod:`optimizers.distributed`).
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
NS_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class Muon(MatrixOptimizer):
    """Muon (timm 1.0.31's building blocks) on matrix groups + AdamW side-car; see the module docstring.

    Args (defaults are the registry's, ``optimizers.settings.MuonSettings``): ``lr``,
    ``momentum`` (μ), ``nesterov``, ``weight_decay`` (decoupled λ, matrix and decayed AdamW
    groups), ``ns_steps``, ``ns_coefficients`` (a timm preset), ``ns_dtype``, ``adjust_lr``
    (update-scale convention), ``adamw_lr``/``adamw_betas``/``adamw_eps``, ``distribution``,
    ``bucket_cap_mb``.
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
        ns_dtype: str = "bfloat16",
        adjust_lr: str = "original",
        adamw_lr: float = 1e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        distribution: str = "sharded",
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
    ) -> None:
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
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(NS_DTYPES)} (got {ns_dtype!r})")
        if adjust_lr not in ADJUST_LR:
            raise ValueError(f"adjust_lr must be one of {', '.join(ADJUST_LR)} (got {adjust_lr!r})")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "ns_steps": ns_steps,
            "ns_coefficients": ns_coefficients,
            "ns_dtype": ns_dtype,
            "adjust_lr": adjust_lr,
        }
        super().__init__(
            params, defaults, adamw_lr=adamw_lr, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
            distribution=distribution, bucket_cap_mb=bucket_cap_mb,
        )

    def _matrix_step(self, timer: StepTimer) -> None:
        from timm.optim import muon as timm_muon

        for group in self.matrix_groups():
            coefficients = timm_muon.resolve_ns_coefficients(group["ns_coefficients"], timm_muon._COEFFICIENTS)
            adjust = ADJUST_LR[group["adjust_lr"]]
            dtype = NS_DTYPES[group["ns_dtype"]]
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None or not self._owns(p):
                    continue
                with timer.measure(p.device):
                    g = p.grad
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    buf = state["momentum_buffer"]
                    p.mul_(1 - lr * wd)
                    buf.lerp_(g, 1.0 - mu)
                    update = g.lerp(buf, mu) if group["nesterov"] else buf.clone()
                    if update.ndim >= 3:
                        matrix, shape = timm_muon.reshape_for_muon(update, mode="flatten")
                    else:
                        matrix, shape = update, update.shape
                    ortho = timm_muon.zeropower_via_newtonschulz(
                        matrix, group["ns_steps"], coefficients, eps=NS_EPS, safety_factor=1.0, dtype=dtype
                    )
                    scale = timm_muon.get_lr_scale(ortho.shape, adjust) if adjust else 1.0
                    p.add_(ortho.reshape(shape), alpha=-lr * scale)
