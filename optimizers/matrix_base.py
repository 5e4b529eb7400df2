"""The matrix-optimizer frame: one base class for Spectral Newton, Muon, Shampoo, SOAP and plug-ins.

One ``torch.optim.Optimizer`` object holds two kinds of param groups (:mod:`optimizers.param_groups`):
``matrix`` groups (conv kernels, projection matrices — every ≥ 2-D parameter whose layer type is
not in ``adamw_types``) get the subclass's per-matrix math, and ``adamw`` / ``adamw_no_decay``
groups (biases, norms, embeddings, the head and every < 2-D parameter) get the AdamW side-car
(:func:`optimizers.adamw.adamw_step_`). The training loop, DeepSpeed and LR schedulers see one
optimizer; each group's ``lr`` is its real learning rate, so a multiplicative schedule scales
both sides and keeps their ratio.

**What the frame owns.** Settings: the constructor's keyword arguments are validated by the
class's ``settings_model`` (a :class:`optimizers.settings.MatrixSettings` subclass, the one place
defaults are written); the fields the subclass adds become the matrix groups' hyperparameters
(torch's ``defaults``: per group, saved in ``state_dict``). Grouping (:meth:`MatrixOptimizer.from_model`).
The step: AdamW on every rank; the update of the matrices this rank owns
(:class:`optimizers.distributed.OwnerSharding`, LPT over the ranks at ZeRO-0); the owners' new
values broadcast to every rank; the time of the matrix phase and the load-imbalance collective.
The update rule, with Δ the subclass's direction, λ the decoupled weight decay and s a
per-matrix learning-rate scale::

    W ← W·(1 − lr·λ) − lr·s·Δ

Checkpoints: ``state_dict`` gathers the owners' per-matrix state on every rank (a collective when
sharded) and ``load_state_dict`` keeps only the owned entries. Metrics: :meth:`MatrixOptimizer.step_metrics`.

**What a subclass writes** — only its math:

- ``settings_model``: its settings class;
- ``init_state(grad, group) -> dict``: the per-matrix state created at a matrix's first update
  (momentum buffers, preconditioner statistics), kept in ``self.state[param]`` on its owner only;
- ``update(grad, state, group) -> Δ``: the direction for one matrix from its (fully reduced)
  gradient, any tensor with the parameter's number of elements in row-major order of the
  parameter (or of its out × rest matrix view);
- optionally ``lr_scale(shape, group) -> s`` (default 1);
- or, for math that is not one matrix at a time (batched over equal shapes, or a wrapped library
  optimizer), :meth:`MatrixOptimizer.step_owned` over all owned matrices at once, calling
  :meth:`MatrixOptimizer.apply_update_` for each direction (or letting the library update);
- capabilities as class attributes: ``requires_full_matrices`` (True: the update needs whole
  gradient matrices, so ZeRO ≥ 1 flat partitions are refused) and ``time_metric`` (the
  ``step_metrics`` key of the matrix phase's seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import nn

from .adamw import adamw_step_
from .distributed import OwnerSharding
from .param_groups import (
    ADAMW,
    MATRIX,
    assign_parameters,
    build_param_groups,
    check_coverage,
    check_groups_disjoint,
    normalize_groups,
)
from .settings import MatrixSettings, parse_settings
from .timing import StepTimer

FRAME_SETTINGS: tuple[str, ...] = (
    "adamw_lr", "adamw_betas", "adamw_eps", "adamw_types", "no_decay_types", "distribution", "bucket_cap_mb",
)
"""Settings the frame consumes at construction; every other setting is a matrix-group hyperparameter."""
GROUP_STRUCTURE: tuple[str, ...] = ("kind", "name", "param_names", "layer_types")
"""Group keys fixed at construction: a loaded checkpoint restores hyperparameters, never these."""


@dataclass(frozen=True)
class OwnedMatrix:
    """A matrix this rank updates in the current step, with what its math may need."""

    param: torch.Tensor
    grad: torch.Tensor
    group: dict[str, Any]
    name: str
    layer_type: str


class MatrixOptimizer(torch.optim.Optimizer):
    """Matrix optimizer + AdamW side-car + owner-rank sharding (see the module docstring).

    ``params``: param groups (dicts with ``params`` and optional ``kind`` = matrix | adamw,
    ``name``, ``param_names``, ``layer_types`` and per-group hyperparameters) or a flat iterable of
    tensors / ``(name, tensor)`` pairs (matrices → matrix group, the rest → AdamW);
    :meth:`from_model` builds the groups from a model's layer types. ``settings``: the fields of
    ``settings_model``; ``adamw_types`` and ``no_decay_types`` only act through :meth:`from_model`.
    """

    settings_model: ClassVar[type[MatrixSettings]] = MatrixSettings
    requires_full_matrices: ClassVar[bool] = True
    time_metric: ClassVar[str] = "precond_time_s"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = cls.settings_model.model_fields
        if not issubclass(cls.settings_model, MatrixSettings) or "lr" not in fields:
            raise TypeError(f"{cls.__name__}.settings_model must be a MatrixSettings subclass with an 'lr' field")

    def __init__(self, params: Iterable[Any], **settings: Any) -> None:
        owner = type(self).__name__
        self.settings = parse_settings(self.settings_model, settings, owner)
        s = self.settings
        groups = normalize_groups(params, owner)
        check_groups_disjoint(groups)
        for g in groups:
            if g["kind"] == ADAMW:
                g.setdefault("lr", s.adamw_lr)
                g.setdefault("betas", tuple(s.adamw_betas))
                g.setdefault("eps", s.adamw_eps)
        hyper = {k: v for k, v in s.model_dump().items() if k not in FRAME_SETTINGS}
        super().__init__(groups, hyper)
        self.sharding = OwnerSharding(self.matrix_params(), s.distribution, s.bucket_cap_mb)
        self._last_timer: StepTimer | None = None

    @classmethod
    def from_model(cls, model: nn.Module, layer_types: Mapping[str, str] | None = None, **settings: Any) -> Self:
        """Group ``model``'s trainable parameters by layer type and build the optimizer.

        Types in ``adamw_types`` and non-matrix parameters go to AdamW (``adamw`` and
        ``adamw_no_decay``, the latter for ``no_decay_types`` and 1-D parameters), everything else
        to the ``matrix`` group; every trainable parameter is checked to be in exactly one group.
        ``layer_types`` (parameter name → type) replaces the tagger's
        (:func:`optimizers.layer_types.tag_parameters`).
        """
        from .layer_types import tag_parameters

        s = parse_settings(cls.settings_model, settings, cls.__name__)
        types = dict(layer_types) if layer_types is not None else tag_parameters(model)
        assignment = assign_parameters(model, s.adamw_types, types)
        groups = build_param_groups(model, assignment, s.no_decay_types, types)
        check_coverage(model, groups)
        return cls(groups, **settings)

    # --- what a subclass implements ---------------------------------------------------------------

    def init_state(self, grad: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        """The state of a matrix before its first update (default: none)."""
        return {}

    def update(self, grad: torch.Tensor, state: dict[str, Any], group: Mapping[str, Any]) -> torch.Tensor:
        """The direction Δ of one matrix (module docstring); may update ``state`` in place."""
        raise NotImplementedError(f"{type(self).__name__} implements neither update() nor step_owned()")

    def lr_scale(self, shape: tuple[int, ...], group: Mapping[str, Any]) -> float:
        """s in W ← W·(1 − lr·λ) − lr·s·Δ for a parameter of ``shape`` (default 1)."""
        return 1.0

    def step_owned(self, matrices: Sequence[OwnedMatrix]) -> None:
        """Update every matrix this rank owns (called every step, also with none owned).

        Default: one matrix at a time, :meth:`init_state` at its first update, then
        :meth:`update` and :meth:`apply_update_`.
        """
        for m in matrices:
            self.apply_update_(m, self.update(m.grad, self.matrix_state(m), m.group))

    def matrix_state(self, m: OwnedMatrix) -> dict[str, Any]:
        """``self.state`` of matrix ``m``, filled by :meth:`init_state` while it is empty."""
        state = self.state[m.param]
        if not state:
            state.update(self.init_state(m.grad, m.group))
        return state

    def apply_update_(self, m: OwnedMatrix, direction: torch.Tensor) -> None:
        """W ← W·(1 − lr·λ) − lr·s·Δ in place, Δ reshaped to the parameter and cast to its dtype."""
        p, group = m.param, m.group
        lr, wd = group["lr"], group["weight_decay"]
        if wd:
            p.mul_(1 - lr * wd)
        p.add_(direction.reshape(p.shape).to(p.dtype), alpha=-lr * self.lr_scale(tuple(p.shape), group))

    # --- groups -------------------------------------------------------------------------------------

    def matrix_groups(self) -> list[dict[str, Any]]:
        """The param groups of kind ``matrix``."""
        return [g for g in self.param_groups if g["kind"] == MATRIX]

    def matrix_params(self) -> list[torch.Tensor]:
        """The matrices of the matrix groups, in group order (the sharding's positions)."""
        return [p for g in self.matrix_groups() for p in g["params"]]

    def _check_matrix_grad(self, p: torch.Tensor, name: str) -> None:
        if p.grad is None:
            return
        if p.ndim < 2 or p.grad.ndim < 2:
            raise RuntimeError(
                f"{type(self).__name__} needs whole gradient matrices; parameter {name!r} arrived with shape "
                f"{tuple(p.grad.shape)} (a ZeRO ≥ 1 flat partition?): use ZeRO stage 0"
            )
        if p.grad.is_sparse:
            raise RuntimeError(f"parameter {name!r}: {type(self).__name__} does not support sparse gradients")

    def _owned_matrices(self, params: Sequence[torch.Tensor]) -> list[OwnedMatrix]:
        """The matrices with a gradient that this rank owns; refuses rewritten groups and flat grads."""
        for g in self.matrix_groups():
            if len(g["param_names"]) != len(g["params"]):
                raise RuntimeError(
                    f"{type(self).__name__}'s param groups were rewritten (e.g. by a ZeRO ≥ 1 flat partition); "
                    "it needs whole gradient matrices: use ZeRO stage 0"
                )
            for p, n in zip(g["params"], g["param_names"], strict=True):
                self._check_matrix_grad(p, n)
        owned = self.sharding.owned_ids(params)
        return [
            OwnedMatrix(p, p.grad, g, n, t)
            for g in self.matrix_groups()
            for p, n, t in zip(g["params"], g["param_names"], g["layer_types"], strict=True)
            if p.grad is not None and id(p) in owned
        ]

    # --- the step -----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """AdamW groups on every rank, owned matrices here, then the owners' values everywhere."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self.matrix_params()
        owned = self._owned_matrices(params)
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
        timer = StepTimer()
        if params:
            with timer.measure(params[0].device):
                self.step_owned(owned)
        self.sharding.sync_(params)
        if self.sharding.world > 1:
            self.sharding.record_load(timer.seconds())
        self._last_timer = timer
        return loss

    def step_metrics(self) -> dict[str, float]:
        """``time_metric`` (seconds of this rank's matrix phase in the last step: momentum,
        preconditioning and the update of its owned matrices), ``comm_time_s``,
        ``load_imbalance`` and ``bytes_communicated`` (see :mod:`optimizers.distributed`).

        On CUDA the time comes from events resolved here, so ``step()`` itself never waits for
        the GPU to report timings (except, with world > 1, for the load-imbalance collective).
        """
        seconds = self._last_timer.seconds() if self._last_timer is not None else 0.0
        return {self.time_metric: seconds, **self.sharding.metrics()}

    # --- checkpoints ----------------------------------------------------------------------------------

    def _state_keys(self) -> list[int]:
        """torch's state-dict index of each matrix parameter (flat order over all groups)."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return [index[id(p)] for p in self.matrix_params()]

    def state_dict(self) -> dict[str, Any]:
        """Full state on every rank: the owners' matrix states are gathered (a collective when
        sharded: call it on every rank, as DeepSpeed does)."""
        sd = super().state_dict()
        sd["state"] = self.sharding.gather_state(sd["state"], self._state_keys())
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load (hyperparameters and state from the checkpoint), keeping this optimizer's
        group structure, filling hyperparameters the checkpoint lacks (an older version's) from
        this optimizer's settings and, when sharded, keeping only the state of owned matrices."""
        structure = [{k: g[k] for k in GROUP_STRUCTURE if k in g} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, keys in zip(self.param_groups, structure, strict=True):
            group.update(keys)
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self.sharding.drop_unowned(self.state, self.matrix_params())
