"""Common frame of the matrix-optimizer baselines (Muon, Shampoo, SOAP).

One ``torch.optim.Optimizer`` object holds two kinds of param groups, built by the same rules as
Spectral Newton (:mod:`optimizers.param_groups`): ``matrix`` groups (conv kernels, projection
matrices — every ≥ 2-D parameter whose layer type is not in ``adamw_types``) get the matrix
optimizer, and ``adamw`` / ``adamw_no_decay`` groups (biases, norms, embeddings, the head and
every < 2-D parameter) get AdamW (:func:`optimizers.adamw.adamw_step_`). Each group's ``lr`` is
its real learning rate, so LR schedulers (the training loop's LambdaLR) scale both.

Subclasses implement :meth:`MatrixOptimizer._matrix_step`, which must update only the matrices
this rank owns (:meth:`MatrixOptimizer._owns`); the frame then broadcasts the owners' new values
(:mod:`optimizers.distributed`) and records the step metrics ``precond_time_s``,
``comm_time_s``, ``load_imbalance`` and ``bytes_communicated``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .adamw import adamw_step_
from .distributed import DEFAULT_BUCKET_CAP_MB, OwnerSharding
from .param_groups import (
    DEFAULT_ADAMW_TYPES,
    NO_DECAY_TYPES,
    assign_parameters,
    build_param_groups,
    check_coverage,
    check_groups_disjoint,
)
from .timing import StepTimer

MATRIX, ADAMW = "matrix", "adamw"


def normalize_groups(params: Iterable[Any], owner: str) -> list[dict[str, Any]]:
    """torch-style ``params`` → group dicts with ``kind`` (matrix | adamw) and ``param_names``.

    A flat iterable of tensors or ``(name, tensor)`` pairs is split into matrices (≥ 2-D) and the
    rest; dicts need ``params`` and may carry ``kind`` (``spectral`` is read as ``matrix``, so
    :func:`optimizers.param_groups.build_param_groups` output can be passed directly),
    ``param_names`` and ``layer_types``.
    """
    items = list(params)
    if not items:
        raise ValueError(f"{owner} got an empty parameter list")
    if not isinstance(items[0], Mapping):
        named = [it if isinstance(it, tuple) else (f"param{i}", it) for i, it in enumerate(items)]
        items = [
            {"params": [p for _, p in grp], "param_names": [n for n, _ in grp], "kind": kind, "name": kind}
            for kind, grp in (
                (MATRIX, [(n, p) for n, p in named if p.ndim >= 2]),
                (ADAMW, [(n, p) for n, p in named if p.ndim < 2]),
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
        kind = group.get("kind", MATRIX)
        kind = MATRIX if kind == "spectral" else kind
        if kind not in (MATRIX, ADAMW):
            raise ValueError(f"group {group.get('name', gi)!r}: kind must be matrix or adamw (got {kind!r})")
        group["kind"] = kind
        if group.get("name") in (None, "spectral"):
            group["name"] = kind
        if kind == MATRIX:
            for n, p in zip(group["param_names"], plist, strict=True):
                if p.ndim < 2:
                    raise ValueError(
                        f"parameter {n!r} (shape {tuple(p.shape)}) is not a matrix: put it in an adamw group"
                    )
        groups.append(group)
    return groups


class MatrixOptimizer(torch.optim.Optimizer):
    """Matrix optimizer + AdamW side-car + owner sharding (see module docstring)."""

    owner_name = "matrix optimizer"

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        adamw_lr: float = 1e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        distribution: str = "sharded",
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
    ) -> None:
        if not adamw_lr > 0:
            raise ValueError(f"adamw_lr must be > 0 (got {adamw_lr})")
        if not all(0 <= b < 1 for b in adamw_betas):
            raise ValueError(f"adamw_betas must be in [0, 1) (got {adamw_betas})")
        groups = normalize_groups(params, type(self).__name__)
        check_groups_disjoint(groups)
        for g in groups:
            if g["kind"] == ADAMW:
                g.setdefault("lr", adamw_lr)
                g.setdefault("betas", tuple(adamw_betas))
                g.setdefault("eps", adamw_eps)
        super().__init__(groups, {**defaults, "adamw_betas": tuple(adamw_betas), "adamw_eps": adamw_eps})
        self.sharding = OwnerSharding(self.matrix_params(), distribution, bucket_cap_mb)
        self._owned: set[int] = set()
        self._last_timer: StepTimer | None = None

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        adamw_types: Iterable[str] = DEFAULT_ADAMW_TYPES,
        no_decay_types: Iterable[str] = NO_DECAY_TYPES,
        layer_types: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> MatrixOptimizer:
        """Group ``model``'s trainable parameters by layer type (as Spectral Newton does) and build."""
        from .layer_types import tag_parameters

        types = dict(layer_types) if layer_types is not None else tag_parameters(model)
        assignment = assign_parameters(model, adamw_types, types)
        groups = build_param_groups(model, assignment, no_decay_types, types)
        check_coverage(model, groups)
        return cls(groups, **settings)

    # --- helpers ------------------------------------------------------------------------------

    def matrix_groups(self) -> list[dict[str, Any]]:
        return [g for g in self.param_groups if g["kind"] == MATRIX]

    def matrix_params(self) -> list[torch.Tensor]:
        return [p for g in self.matrix_groups() for p in g["params"]]

    def _owns(self, p: torch.Tensor) -> bool:
        """True if this rank steps matrix ``p`` in the current step."""
        return id(p) in self._owned

    def _check_matrix_grad(self, p: torch.Tensor, name: str) -> None:
        if p.grad is None:
            return
        if p.ndim < 2 or p.grad.ndim < 2:
            raise RuntimeError(
                f"{self.owner_name} needs whole gradient matrices; parameter {name!r} arrived with shape "
                f"{tuple(p.grad.shape)} (a ZeRO ≥ 1 flat partition?): use ZeRO stage 0"
            )
        if p.grad.is_sparse:
            raise RuntimeError(f"parameter {name!r}: {self.owner_name} does not support sparse gradients")

    def _check_groups_intact(self) -> None:
        for g in self.matrix_groups():
            if len(g["param_names"]) != len(g["params"]):
                raise RuntimeError(
                    f"{self.owner_name}'s param groups were rewritten (e.g. by a ZeRO ≥ 1 flat partition); "
                    "it needs whole gradient matrices: use ZeRO stage 0"
                )
            for p, n in zip(g["params"], g["param_names"], strict=True):
                self._check_matrix_grad(p, n)

    def _state_keys(self) -> list[int]:
        """torch's state-dict index of each matrix parameter (flat order over all groups)."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return [index[id(p)] for p in self.matrix_params()]

    # --- the step -----------------------------------------------------------------------------

    def _matrix_step(self, timer: StepTimer) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """AdamW groups on every rank, owned matrices here, then the owners' values everywhere."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_groups_intact()
        for group in self.param_groups:
            if group["kind"] == ADAMW:
                adamw_step_(
                    group["params"],
                    self.state,
                    lr=group["lr"],
                    betas=tuple(group["betas"]),
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                )
        params = self.matrix_params()
        self._owned = self.sharding.owned_ids(params)
        timer = StepTimer()
        self._matrix_step(timer)
        self.sharding.sync_(params)
        if self.sharding.world > 1:
            self.sharding.record_load(timer.seconds())
        self._last_timer = timer
        return loss

    def step_metrics(self) -> dict[str, float]:
        """``precond_time_s`` (this rank's matrix work in the last step), ``comm_time_s``,
        ``load_imbalance`` and ``bytes_communicated`` (see :mod:`optimizers.distributed`)."""
        seconds = self._last_timer.seconds() if self._last_timer is not None else 0.0
        return {"precond_time_s": seconds, **self.sharding.metrics()}

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Full state on every rank: the owners' matrix states are gathered (collective if sharded)."""
        sd = super().state_dict()
        sd["state"] = self.sharding.gather_state(sd["state"], self._state_keys())
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.sharding.drop_unowned(self.state, self.matrix_params())
