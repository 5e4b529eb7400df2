"""Parameter grouping: which parameters get the matrix optimizer and which get AdamW.

docs/science/decisions.md#adamw-side-car specifies nothing for non-matrix parameters; the project's **decision** is that
biases, norms, embeddings and the output head go to AdamW (configurable by layer type) and every
parameter with fewer than two dimensions does too, since it has no singular basis. Every
trainable parameter must land in exactly one group; violations raise ``ValueError`` naming the
parameter, because a silently untrained (or doubly updated) parameter corrupts a benchmark.

A group is a torch param-group dict with, besides ``params``, the metadata every matrix optimizer
(:mod:`optimizers.matrix_base`) relies on and ``state_dict`` preserves: ``kind`` (:data:`MATRIX` or
:data:`ADAMW`), ``name`` (``matrix``, ``adamw``, ``adamw_no_decay``), ``param_names`` and
``layer_types`` aligned with ``params``. :func:`build_param_groups` makes them from a model,
:func:`normalize_groups` from whatever a caller passes as torch-style ``params``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .layer_types import LAYER_TYPES, param_ndim, param_shape, tag_parameters

MATRIX, ADAMW = "matrix", "adamw"
"""The two group kinds: matrices for the matrix optimizer, everything else for the AdamW side-car."""
DEFAULT_ADAMW_TYPES: tuple[str, ...] = ("bias", "norm", "embedding", "head")
"""Layer types updated by the AdamW side-car of a matrix optimizer by default."""
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
    """Map each trainable parameter name to :data:`MATRIX` or :data:`ADAMW`.

    A parameter goes to AdamW if its layer type is in ``adamw_types`` or it has fewer than two
    dimensions; everything else (conv kernels, projection matrices, unknown 2-D parameters) is
    a matrix for the matrix optimizer.
    """
    adamw_types = set(adamw_types)
    check_layer_types(adamw_types, "adamw_types")
    types = dict(layer_types) if layer_types is not None else tag_parameters(model)
    return {
        name: ADAMW if (types.get(name, "other") in adamw_types or param_ndim(p) < 2) else MATRIX
        for name, p in trainable_parameters(model)
    }


def build_param_groups(
    model: nn.Module,
    assignment: Mapping[str, str],
    no_decay_types: Iterable[str] = NO_DECAY_TYPES,
    layer_types: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Turn an assignment ``{name: MATRIX | ADAMW}`` into optimizer param groups (module docstring).

    AdamW parameters whose layer type is in ``no_decay_types`` (or that are 1-D) go to
    ``adamw_no_decay`` with ``weight_decay = 0``. Empty groups are omitted; groups come in the
    order matrix, adamw, adamw_no_decay and parameters in model order. Raises ``ValueError``
    naming any trainable parameter missing from ``assignment``, any name that is not a trainable
    parameter, and any unknown group kind.
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
    buckets: dict[str, list[str]] = {MATRIX: [], ADAMW: [], "adamw_no_decay": []}
    for name in params:  # model order, so groups are deterministic
        kind = assignment[name]
        if kind == MATRIX:
            buckets[MATRIX].append(name)
        elif kind == ADAMW:
            nd = types.get(name, "other") in no_decay or param_ndim(params[name]) < 2
            buckets["adamw_no_decay" if nd else ADAMW].append(name)
        else:
            raise ValueError(f"parameter {name!r}: unknown group {kind!r} (expected {MATRIX} or {ADAMW})")
    groups: list[dict[str, Any]] = []
    for gname, names in buckets.items():
        if not names:
            continue
        group: dict[str, Any] = {
            "params": [params[n] for n in names],
            "param_names": names,
            "layer_types": [types.get(n, "other") for n in names],
            "name": gname,
            "kind": MATRIX if gname == MATRIX else ADAMW,
        }
        if gname == "adamw_no_decay":
            group["weight_decay"] = 0.0
        groups.append(group)
    return groups


def normalize_groups(params: Iterable[Any], owner: str) -> list[dict[str, Any]]:
    """torch-style ``params`` → group dicts with ``kind``, ``name``, ``param_names``, ``layer_types``.

    A flat iterable of tensors or ``(name, tensor)`` pairs is split into a matrix group (≥ 2-D)
    and an AdamW group (names default to ``param{i}``, types to ``other``); dicts need ``params``
    and may carry ``kind`` (default :data:`MATRIX`), ``name``, ``param_names`` and
    ``layer_types``, so :func:`build_param_groups` output passes through unchanged. ``owner``
    names the optimizer in error messages. Raises ``ValueError`` for an empty list, an unknown
    kind, mismatched names, or a non-matrix parameter in a matrix group.
    """
    items = list(params)
    if not items:
        raise ValueError(f"{owner} got an empty parameter list")
    if not isinstance(items[0], Mapping):
        named = [it if isinstance(it, tuple) else (f"param{i}", it) for i, it in enumerate(items)]
        items = [
            {"params": [p for _, p in grp], "param_names": [n for n, _ in grp], "kind": kind}
            for kind, grp in (
                (MATRIX, [(n, p) for n, p in named if param_ndim(p) >= 2]),
                (ADAMW, [(n, p) for n, p in named if param_ndim(p) < 2]),
            )
            if grp
        ]
    groups: list[dict[str, Any]] = []
    counter = 0
    for gi, raw in enumerate(items):
        group = dict(raw)
        plist = [group["params"]] if isinstance(group["params"], torch.Tensor) else list(group["params"])
        if plist and isinstance(plist[0], tuple):
            group["param_names"] = [n for n, _ in plist]
            plist = [p for _, p in plist]
        group["params"] = plist
        names = group.get("param_names") or [f"param{counter + j}" for j in range(len(plist))]
        counter += len(plist)
        if len(names) != len(plist):
            raise ValueError(f"group {gi}: {len(names)} param_names for {len(plist)} params")
        group["param_names"] = list(names)
        group["layer_types"] = list(group.get("layer_types") or ["other"] * len(plist))
        group.setdefault("kind", MATRIX)
        group.setdefault("name", group["kind"])
        if group["kind"] not in (MATRIX, ADAMW):
            raise ValueError(
                f"group {group['name']!r}: kind must be {MATRIX} or {ADAMW} (got {group['kind']!r})"
            )
        if group["kind"] == MATRIX:
            for n, p in zip(group["param_names"], plist, strict=True):
                if param_ndim(p) < 2:
                    raise ValueError(
                        f"parameter {n!r} (shape {param_shape(p)}) is not a matrix: put it in an adamw group"
                    )
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

