"""``muon_deepspeed``: DeepSpeed's built-in Muon as a competitor and an oracle for the suite's Muon.

DeepSpeed 0.19.8 ships ``MuonWithAuxAdam`` (``deepspeed.runtime.zero.muon``) with its own ZeRO
handling: at ZeRO-0 its ``step()`` orthogonalises whole matrices; at ZeRO-1/2 the ZeRO optimizer
runs Newton–Schulz on the full reduced gradient of every ``use_muon`` matrix before taking the
rank's flat partition (each rank that holds a piece of a matrix repeats the whole computation); at
ZeRO-3 it gathers the momentum, splits the updates over the ranks and gathers them again. The
config route (``"optimizer": {"type": "Muon"}``) builds the same class; building it here lets it
take the suite's grouping (matrices by layer type, :mod:`optimizers.param_groups`) and the same
AdamW side-car settings as every matrix optimizer, and be stepped by the same training loop.

Per matrix, DeepSpeed's Muon is the suite's Muon with ``nesterov=True``, ``ns_steps=5``,
``ns_coefficients='original'`` and ``adjust_lr='original'`` — EMA momentum buf ← buf.lerp(g, 1 − μ),
u = g.lerp(buf, μ), X = u/(‖u‖_F + 1e-7), five quintic steps with (3.4445, −4.7750, 2.0315), scale
√max(1, m/n), then W ← W·(1 − lr·λ) − lr·s·O — except where it is not:

- **Newton–Schulz arithmetic.** ``standard``: the same iteration in bfloat16, but written
  ``b·A + c·A@A`` / ``a·X + B@X`` where timm fuses ``addmm``, so roundings differ (compare with the
  suite's ``ns_dtype: bfloat16``); ``gram`` (DeepSpeed's default): an algebraically equal
  iteration on the Gram matrix X·Xᵀ with a restart, in float16 where the device has it.
- **Conv kernels.** DeepSpeed 0.19.8's ``muon_update`` fails on them: it orthogonalises the
  out × (in·kh·kw) view and then cannot broadcast that back against the 4-D gradient
  (``torch.where``), at every ZeRO stage. So this builder refuses a model whose matrix group holds
  a kernel of more than two dimensions, naming them; ``adamw_types: [..., conv, conv_stem,
  depthwise_conv]`` gives them to the AdamW side-car instead. (Were it to run, its scale would come
  from the kernel's last two dimensions, √max(1, kh/kw) = 1, where the suite uses
  √max(1, out/(in·kh·kw)).)
- **Clipping.** At ZeRO ≥ 1 DeepSpeed orthogonalises before it computes the global gradient norm,
  so ``gradient_clipping`` clips the orthogonalised update; at ZeRO-0 and in the suite's optimizers
  it clips the raw gradient.

Everything else (groups, AdamW side-car with the suite's betas and ε, weight decay, the lr
schedule) is the suite's. ``tests/test_zero_matrix.py`` compares it with the suite's Muon per
ZeRO stage. Its Newton–Schulz functions are wrapped in ``torch.compile``, slow to compile on CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .layer_types import param_shape, tag_parameters
from .param_groups import MATRIX, assign_parameters, build_param_groups, check_coverage
from .settings import MuonDeepSpeedSettings


def build_muon_deepspeed(
    model: nn.Module, s: MuonDeepSpeedSettings, layer_types: Mapping[str, str] | None = None
) -> torch.optim.Optimizer:
    """DeepSpeed's ``MuonWithAuxAdam`` over ``model``'s parameters grouped as by every matrix
    optimizer: the matrix group with ``use_muon`` (and every parameter tagged ``use_muon``, which
    DeepSpeed's ZeRO-1/2 code reads), the AdamW groups without (its inline AdamW)."""
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam

    types = dict(layer_types) if layer_types is not None else tag_parameters(model)
    groups = build_param_groups(model, assign_parameters(model, s.adamw_types, types), s.no_decay_types, types)
    check_coverage(model, groups)
    kernels = [n for g in groups if g["kind"] == MATRIX for n, p in zip(g["param_names"], g["params"], strict=True)
               if len(param_shape(p)) > 2]
    if kernels:
        raise ValueError(
            f"muon_deepspeed: DeepSpeed's Muon (0.19.8) fails on kernels of more than two dimensions "
            f"({', '.join(kernels[:3])}{', …' if len(kernels) > 3 else ''}: types "
            f"{', '.join(sorted({types.get(n, 'other') for n in kernels}))}); add those types to adamw_types, "
            "or use muon"
        )
    ds_groups: list[dict[str, Any]] = []
    for g in groups:
        muon = g["kind"] == MATRIX
        for p in g["params"]:
            p.use_muon = muon
        if muon:
            hyper = {"lr": s.lr, "momentum": s.momentum, "weight_decay": s.weight_decay, "ns_method": s.ns_method}
        else:
            hyper = {"lr": s.adamw_lr, "betas": tuple(s.adamw_betas), "eps": s.adamw_eps,
                     "weight_decay": g.get("weight_decay", s.weight_decay)}
        ds_groups.append({"params": list(g["params"]), "use_muon": muon, "name": g["name"], **hyper})
    return MuonWithAuxAdam(ds_groups)
