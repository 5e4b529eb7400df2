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
AdamW side-car, by the same grouping rules as Spectral Newton (:mod:`optimizers.matrix_base`, which
also applies W ← W·(1 − lr·λ) − lr·s(m, n)·O with the weight decay before the update, as timm).

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

from collections.abc import Mapping
from functools import cache
from types import ModuleType
from typing import Any

import torch

from .layer_types import matrix_shape
from .matrix_base import MatrixOptimizer
from .settings import MuonSettings

ADJUST_LR: dict[str, str | None] = {
    "original": "original",
    "match_rms_adamw": "match_rms_adamw",
    "spectral": "rms_to_rms",
    "none": None,
}
"""The suite's names of the update-scale conventions → timm's ``adjust_lr_fn`` names."""
NS_EPS = 1e-7  # Keller Jordan's ε of the Frobenius normalisation (torch and timm alike)
NS_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@cache
def _timm_muon() -> ModuleType:
    """``timm.optim.muon``, imported on first use (importing timm takes seconds)."""
    from timm.optim import muon

    return muon


class Muon(MatrixOptimizer):
    """Muon (timm 1.0.31's building blocks) on matrix groups + AdamW side-car; see the module docstring.

    Settings: :class:`optimizers.settings.MuonSettings` (``lr``, ``momentum`` μ, ``nesterov``,
    ``weight_decay``, ``ns_steps``, ``ns_coefficients`` (a timm preset), ``ns_dtype``,
    ``adjust_lr`` and the shared matrix-optimizer settings).
    """

    settings_model = MuonSettings

    def init_state(self, grad: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        return {"momentum_buffer": torch.zeros_like(grad, memory_format=torch.preserve_format)}

    def update(self, grad: torch.Tensor, state: dict[str, Any], group: Mapping[str, Any]) -> torch.Tensor:
        """O = NS₅(u) of the (Nesterov) EMA momentum u, conv kernels flattened to out × (in·kh·kw)."""
        muon = _timm_muon()
        mu = group["momentum"]
        buf = state["momentum_buffer"]
        buf.lerp_(grad, 1.0 - mu)
        u = grad.lerp(buf, mu) if group["nesterov"] else buf.clone()
        matrix = muon.reshape_for_muon(u, mode="flatten")[0] if u.ndim >= 3 else u
        coefficients = muon.resolve_ns_coefficients(group["ns_coefficients"], muon._COEFFICIENTS)
        return muon.zeropower_via_newtonschulz(
            matrix, group["ns_steps"], coefficients, eps=NS_EPS, safety_factor=1.0, dtype=NS_DTYPES[group["ns_dtype"]]
        )

    def lr_scale(self, shape: tuple[int, ...], group: Mapping[str, Any]) -> float:
        """s(m, n) of the ``adjust_lr`` convention for the out × rest matrix (module docstring)."""
        adjust = ADJUST_LR[group["adjust_lr"]]
        return _timm_muon().get_lr_scale(matrix_shape(shape), adjust) if adjust else 1.0
