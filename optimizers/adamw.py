"""AdamW: the baseline optimizer, and the AdamW math Spectral Newton uses for non-matrix params.

AdamW (Loshchilov & Hutter 2019), per parameter p with gradient g at step t:

    p ← p · (1 − lr·λ)                               (decoupled weight decay)
    m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²
    p ← p − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)

:func:`build_adamw` returns ``torch.optim.AdamW`` (fused kernel where the device supports it,
else the foreach implementation) with no weight decay on biases and norm parameters.
:func:`adamw_step_` is the same math written out, so that Spectral Newton can hold its AdamW
parameters inside one optimizer object (docs/science/spectral_newton.md decision: biases, norms, embeddings and the
head go to AdamW).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .param_groups import ADAMW, NO_DECAY_TYPES, build_param_groups, trainable_parameters


def adamw_step_(
    params: list[torch.Tensor],
    state: dict[torch.Tensor, dict[str, Any]],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One in-place AdamW step on ``params`` (those with a gradient), state kept in ``state``.

    Matches ``torch.optim.AdamW`` (amsgrad off, not capturable) to rounding. State per
    parameter: ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v), in the parameter's dtype.
    """
    beta1, beta2 = betas
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        if g.is_sparse:
            raise RuntimeError("AdamW does not support sparse gradients")
        st = state[p]
        if not st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["step"] += 1
        step = st["step"]
        if weight_decay:
            p.mul_(1 - lr * weight_decay)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_c1 = 1 - beta1**step
        bias_c2_sqrt = math.sqrt(1 - beta2**step)
        denom = (v.sqrt() / bias_c2_sqrt).add_(eps)
        p.addcdiv_(m, denom, value=-lr / bias_c1)


def _implementation_flags(params: Iterable[torch.Tensor], fused: bool | None) -> list[dict[str, bool]]:
    """Candidate kwargs for torch.optim.AdamW, best first.

    ``fused=None`` (auto): the fused kernel when every parameter is a floating-point tensor on one
    device type (torch supports it on CUDA, XPU, MPS and, since 2.4, CPU), then foreach, then the
    plain loop. Construction validates support, so each candidate is tried in turn.
    """
    if fused is True:
        return [{"fused": True}]
    if fused is False:
        return [{"foreach": True}, {}]
    params = list(params)
    same_device = len({p.device.type for p in params}) <= 1
    floating = all(torch.is_floating_point(p) for p in params)
    first: list[dict[str, bool]] = [{"fused": True}] if (same_device and floating) else []
    return first + [{"foreach": True}, {}]


def build_adamw(
    model: nn.Module,
    lr: float = 1e-3,
    momentum: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    no_decay_types: Iterable[str] = NO_DECAY_TYPES,
    fused: bool | None = None,
    layer_types: Mapping[str, str] | None = None,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over every trainable parameter of ``model``.

    ``momentum`` is β₁ (the first-moment decay): the suite uses one key, ``momentum``, across
    optimizers so that sweeps can share it. Parameters whose layer type is in
    ``no_decay_types`` (default bias and norm) or that are 1-D get ``weight_decay = 0``
    (group ``adamw_no_decay``); the rest are in group ``adamw``. ``layer_types`` replaces the
    tagger's types (:func:`optimizers.layer_types.tag_parameters`).
    """
    assignment = {name: ADAMW for name, _ in trainable_parameters(model)}
    groups = build_param_groups(model, assignment, no_decay_types, layer_types)
    params = [p for g in groups for p in g["params"]]
    named = torch.__version__ >= "2.6"  # torch ≥ 2.6 keeps (name, param) pairs as param_names
    for g in groups:
        names = g.pop("param_names")
        g.pop("layer_types")
        if named:
            g["params"] = list(zip(names, g["params"], strict=True))
    last_error: Exception | None = None
    for flags in _implementation_flags(params, fused):
        try:
            return torch.optim.AdamW(
                [dict(g, params=list(g["params"])) for g in groups],
                lr=lr,
                betas=(momentum, beta2),
                eps=eps,
                weight_decay=weight_decay,
                **flags,
            )
        except (RuntimeError, ValueError) as err:  # unsupported fused/foreach on this device
            last_error = err
    raise RuntimeError(f"could not build torch.optim.AdamW: {last_error}")
