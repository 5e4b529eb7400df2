"""Parameter grouping: which parameters get the spectral update and which get AdamW.

PAPER.md §5 specifies nothing for non-matrix parameters; the project's **decision** is that
biases, norms, embeddings and the output head go to AdamW (configurable by layer type) and every
parameter with fewer than two dimensions does too, since it has no singular basis. Every
trainable parameter must land in exactly one group; violations raise ``ValueError`` naming the
parameter, because a silently untrained (or doubly updated) parameter corrupts a benchmark.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .layer_types import LAYER_TYPES, tag_parameters

DEFAULT_ADAMW_TYPES: tuple[str, ...] = ("bias", "norm", "embedding", "head")
"""Layer types updated by AdamW inside Spectral Newton by default."""
NO_DECAY_TYPES: tuple[str, ...] = ("bias", "norm")
"""Layer types that get no weight decay by default (decaying a gain or shift towards 0 is not a
regulariser of the function class; standard practice since BERT/GPT-2)."""


def check_layer_types(types: Iterable[str], setting: str) -> None:
    """Raise ``ValueError`` if any entry is not in :data:`LAYER_TYPES`."""
    for t in types:
        if t not in LAYER_TYPES:
            raise ValueError(f"{setting}: unknown layer type {t!r}; expected one of {', '.join(LAYER_TYPES)}")


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``model.named_parameters()`` (tied weights once) restricted to ``requires_grad``."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def assign_parameters(
    model: nn.Module,
    adamw_types: Iterable[str] = DEFAULT_ADAMW_TYPES,
    layer_types: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Map each trainable parameter name to ``"spectral"`` or ``"adamw"``.

    A parameter goes to AdamW if its layer type is in ``adamw_types`` or it has fewer than two
    dimensions; everything else (conv kernels, projection matrices, unknown 2-D parameters) is
    a matrix for the spectral update.
    """
    adamw_types = set(adamw_types)
    check_layer_types(adamw_types, "adamw_types")
    types = dict(layer_types) if layer_types is not None else tag_parameters(model)
    return {
        name: "adamw" if (types.get(name, "other") in adamw_types or p.ndim < 2) else "spectral"
        for name, p in trainable_parameters(model)
    }


def build_param_groups(
    model: nn.Module,
    assignment: Mapping[str, str],
    no_decay_types: Iterable[str] = NO_DECAY_TYPES,
    layer_types: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Turn an assignment ``{name: "spectral" | "adamw"}`` into optimizer param groups.

    Groups carry ``params`` plus metadata the optimizer needs and ``state_dict`` preserves:
    ``name`` (``spectral``, ``adamw``, ``adamw_no_decay``), ``kind`` (``spectral`` | ``adamw``),
    ``param_names`` and ``layer_types`` (aligned with ``params``). AdamW parameters whose layer
    type is in ``no_decay_types`` (or that are 1-D) go to ``adamw_no_decay`` with
    ``weight_decay = 0``. Empty groups are omitted. Raises ``ValueError`` naming any trainable
    parameter missing from ``assignment``, any name that is not a trainable parameter, and any
    unknown group kind.
    """
    no_decay = set(no_decay_types)
    check_layer_types(no_decay, "no_decay_types")
    types = dict(layer_types) if layer_types is not None else tag_parameters(model)
    params = dict(trainable_parameters(model))
    missing = [n for n in params if n not in assignment]
    if missing:
        raise ValueError(f"parameter {missing[0]!r} is in no param group" + _more(missing))
    unknown = [n for n in assignment if n not in params]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a trainable parameter of the model" + _more(unknown))
    buckets: dict[str, list[str]] = {"spectral": [], "adamw": [], "adamw_no_decay": []}
    for name in params:  # model order, so groups are deterministic
        kind = assignment[name]
        if kind == "spectral":
            buckets["spectral"].append(name)
        elif kind == "adamw":
            nd = types.get(name, "other") in no_decay or params[name].ndim < 2
            buckets["adamw_no_decay" if nd else "adamw"].append(name)
        else:
            raise ValueError(f"parameter {name!r}: unknown group {kind!r} (expected spectral or adamw)")
    groups: list[dict[str, Any]] = []
    for gname, names in buckets.items():
        if not names:
            continue
        group: dict[str, Any] = {
            "params": [params[n] for n in names],
            "param_names": names,
            "layer_types": [types.get(n, "other") for n in names],
            "name": gname,
            "kind": "spectral" if gname == "spectral" else "adamw",
        }
        if gname == "adamw_no_decay":
            group["weight_decay"] = 0.0
        groups.append(group)
    return groups


def check_groups_disjoint(groups: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` naming a parameter that appears twice (in one group or across groups).

    torch's own check says only "some parameters appear in more than one parameter group"; this
    one names the parameter and the groups.
    """
    seen: dict[int, tuple[str, str]] = {}
    for gi, group in enumerate(groups):
        gname = str(group.get("name", f"group {gi}"))
        names = group.get("param_names") or [f"param {j}" for j in range(len(group["params"]))]
        for p, n in zip(group["params"], names, strict=False):
            if id(p) in seen:
                first_name, first_group = seen[id(p)]
                raise ValueError(
                    f"parameter {n!r} is in more than one param group "
                    f"({first_group} as {first_name!r} and {gname})"
                )
            seen[id(p)] = (n, gname)


def check_coverage(model: nn.Module, groups: Sequence[Mapping[str, Any]]) -> None:
    """Every trainable parameter of ``model`` is in exactly one group, and nothing else is.

    Raises ``ValueError`` naming the first offending parameter.
    """
    check_groups_disjoint(groups)
    in_groups = {id(p) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    missing = [n for n, p in named.items() if p.requires_grad and id(p) not in in_groups]
    if missing:
        raise ValueError(f"parameter {missing[0]!r} is in no param group" + _more(missing))
    model_ids = {id(p) for p in named.values()}
    for gi, g in enumerate(groups):
        names = g.get("param_names") or [f"param {j}" for j in range(len(g["params"]))]
        for p, n in zip(g["params"], names, strict=False):
            if id(p) not in model_ids:
                raise ValueError(f"{n!r} in group {g.get('name', gi)} is not a parameter of the model")


def _more(items: Sequence[str]) -> str:
    return f" (and {len(items) - 1} more: {', '.join(items[1:6])}{'…' if len(items) > 6 else ''})" if len(
        items
    ) > 1 else ""


def is_matrix(p: torch.Tensor) -> bool:
    """Parameters with a singular basis: at least two dimensions."""
    return p.ndim >= 2
