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
(:class:`optimizers.distributed.OwnerSharding`, LPT over the ranks); the owners' new values
broadcast to every rank (ZeRO-0) or written back into the ranks' flat partitions (ZeRO ≥ 1, below);
the time of the matrix phase and the load-imbalance collective.
The update rule, with Δ the subclass's direction, λ the decoupled weight decay and s a
per-matrix learning-rate scale::

    W ← W·(1 − lr·λ) − lr·s·Δ

Checkpoints: ``state_dict`` gathers the owners' per-matrix state on every rank (a collective when
sharded) and ``load_state_dict`` keeps only the owned entries. Metrics: :meth:`MatrixOptimizer.step_metrics`.

**ZeRO stages 1–3.** DeepSpeed then replaces each param group's parameters by one flat fp32
partition per rank and calls ``step()`` once per group (ZeRO-1/2: with only that group in
``param_groups``; ZeRO-3: with the other groups emptied). :func:`optimizers.deepspeed_zero.initialize`
reads where every matrix's pieces lie and calls :meth:`MatrixOptimizer.attach_zero`; from then on
the AdamW groups step element-wise on their partitions, and the matrix group's call gathers each
owned matrix whole on its owner (:class:`optimizers.zero_partitions.ZeroPartitions`), runs the same
per-matrix math on it as at ZeRO-0, and writes the new values back into the partitions. The
per-matrix state is keyed by the owner's persistent handle tensors and saved per rank (DeepSpeed
writes one optimizer file per rank at ZeRO ≥ 1). Without the attachment a flat partition reaching
the matrix math is refused, never updated as a vector.

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
  gradient matrices, so under ZeRO ≥ 1 the engine must be created by
  :func:`optimizers.deepspeed_zero.initialize`) and ``time_metric`` (the ``step_metrics`` key of
  the matrix phase's seconds).

The math must key its state by the tensors it is handed (``OwnedMatrix.param``, or
:meth:`MatrixOptimizer.matrix_tensors` for a library optimizer), never by ``param_groups``' tensors,
which are flat partitions under ZeRO ≥ 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import nn

from .adamw import adamw_step_
from .distributed import OwnerSharding, to_device
from .layer_types import param_ndim
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
from .zero_partitions import ZeroPartitions

FRAME_SETTINGS: tuple[str, ...] = (
    "adamw_lr", "adamw_betas", "adamw_eps", "adamw_types", "no_decay_types", "distribution", "bucket_cap_mb",
)
"""Settings the frame consumes at construction; every other setting is a matrix-group hyperparameter."""
GROUP_STRUCTURE: tuple[str, ...] = ("kind", "name", "param_names", "layer_types")
"""Group keys fixed at construction: a loaded checkpoint restores hyperparameters, never these."""
ZERO_MATRIX_STATE = "zero_matrix_state"
"""State-dict key of a rank's owned per-matrix state under ZeRO ≥ 1 (matrix position → state)."""


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
        self.matrix_sources: list[torch.Tensor] = self.matrix_params()
        """The matrix parameters as constructed (the model's own tensors), by position: what an
        engine's partition layout is read for."""
        self.zero: ZeroPartitions | None = None
        """The ZeRO ≥ 1 partition exchange, once attached (:meth:`attach_zero`)."""
        self.matrix_steps = 0
        """Matrix phases run (one per optimizer step: a test counts them against the steps taken)."""
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
        """The tensors of the matrix groups, in group order: the matrices (the sharding's positions),
        or under ZeRO ≥ 1 the flat partitions DeepSpeed put in their place."""
        return [p for g in self.matrix_groups() for p in g["params"]]

    def matrix_tensors(self) -> list[torch.Tensor]:
        """The tensors the per-matrix math updates, one per matrix position: the matrix parameters
        (or the engine's fp32 copies of them) at ZeRO-0; under ZeRO ≥ 1 the persistent handles,
        which hold the whole matrix on its owner during a step and are empty otherwise."""
        return list(self.zero.handles) if self.zero is not None else self.matrix_params()

    def matrix_items(self) -> list[tuple[dict[str, Any], torch.Tensor]]:
        """``(group, tensor)`` for every matrix position (tensors of :meth:`matrix_tensors`)."""
        groups = [g for g in self.matrix_groups() for _ in g["param_names"]]
        return list(zip(groups, self.matrix_tensors(), strict=True))

    def attach_zero(self, partitions: ZeroPartitions) -> None:
        """Run the matrix groups on ZeRO ≥ 1 flat partitions through ``partitions`` (module
        docstring); called by :func:`optimizers.deepspeed_zero.initialize` once the engine exists."""
        if self.settings.distribution != "sharded":
            raise ValueError(
                f"{type(self).__name__}: distribution={self.settings.distribution!r} computes every matrix on every "
                "rank from full gradients, which ZeRO ≥ 1 partitions do not hold; use distribution: sharded"
            )
        if len(self.matrix_groups()) > 1:
            raise ValueError(f"{type(self).__name__}: ZeRO ≥ 1 supports one matrix param group "
                             f"(got {len(self.matrix_groups())})")
        if partitions.shapes != self.sharding.shapes or partitions.owners != self.sharding.owners:
            raise ValueError("the ZeRO partition exchange was built for other matrices or owners")
        self.zero = partitions

    def _check_matrix_grad(self, p: torch.Tensor, name: str) -> None:
        if p.grad is None:
            return
        if param_ndim(p) < 2 or p.grad.ndim < 2:
            raise RuntimeError(
                f"{type(self).__name__} needs whole gradient matrices; parameter {name!r} arrived with shape "
                f"{tuple(p.grad.shape)} (a ZeRO ≥ 1 flat partition without its layout?): create the engine "
                "with optimizers.deepspeed_zero.initialize"
            )
        if p.grad.is_sparse:
            raise RuntimeError(f"parameter {name!r}: {type(self).__name__} does not support sparse gradients")

    def _owned_matrices(self, params: Sequence[torch.Tensor]) -> list[OwnedMatrix]:
        """The matrices with a gradient that this rank owns; refuses rewritten groups and flat grads."""
        for g in self.matrix_groups():
            if len(g["param_names"]) != len(g["params"]):
                raise RuntimeError(
                    f"{type(self).__name__}'s param groups were rewritten (a ZeRO ≥ 1 flat partition?) and no "
                    "partition layout is attached; it needs whole gradient matrices: create the engine with "
                    "optimizers.deepspeed_zero.initialize"
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
        if self.zero is None:
            self._step_matrices()
        else:
            self._step_zero_matrices()
        return loss

    def _step_matrices(self) -> None:
        """Whole matrices in ``param_groups`` (ZeRO-0): owned ones here, then the values broadcast."""
        params = self.matrix_params()
        owned = self._owned_matrices(params)
        timer = StepTimer()
        if params:
            with timer.measure(params[0].device):
                self.step_owned(owned)
        self.sharding.sync_(params)
        self._finish_matrix_phase(timer)

    def _step_zero_matrices(self) -> None:
        """The matrix group's flat partition (ZeRO ≥ 1): whole owned matrices gathered, stepped and
        written back (:class:`ZeroPartitions`). DeepSpeed also calls ``step()`` for the other groups;
        those calls carry no matrix partition and do nothing here."""
        present = [g for g in self.matrix_groups() if g["params"]]
        if not present:
            return
        group = present[0]
        if len(present) != 1 or len(group["params"]) != 1 or group["params"][0].ndim != 1:
            raise RuntimeError(
                f"{type(self).__name__}: expected the matrix group as one flat ZeRO partition, got "
                f"{[tuple(p.shape) for g in present for p in g['params']]}"
            )
        flat = group["params"][0]
        timer = StepTimer()
        with self.zero.whole_matrices(flat) as handles:
            owned = [OwnedMatrix(h, h.grad, group, group["param_names"][i], group["layer_types"][i]) for i, h in handles]
            with timer.measure(flat.device):
                self.step_owned(owned)
        self._finish_matrix_phase(timer)

    def _finish_matrix_phase(self, timer: StepTimer) -> None:
        if self.sharding.world > 1:
            self.sharding.record_load(timer.seconds())
        self._last_timer = timer
        self.matrix_steps += 1

    def step_metrics(self) -> dict[str, float]:
        """``time_metric`` (seconds of this rank's matrix phase in the last step: momentum,
        preconditioning and the update of its owned matrices), ``comm_time_s``,
        ``load_imbalance`` and ``bytes_communicated`` (see :mod:`optimizers.distributed`).

        On CUDA the time comes from events resolved here, so ``step()`` itself never waits for
        the GPU to report timings (except, with world > 1, for the load-imbalance collective).
        """
        seconds = self._last_timer.seconds() if self._last_timer is not None else 0.0
        metrics = self.sharding.metrics()
        if self.zero is not None:  # the partition exchange replaces the broadcasts
            for key, value in self.zero.metrics().items():
                metrics[key] += value
        return {self.time_metric: seconds, **metrics}

    # --- checkpoints ----------------------------------------------------------------------------------

    def _state_keys(self) -> list[int]:
        """torch's state-dict index of each matrix parameter (flat order over all groups)."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return [index[id(p)] for p in self.matrix_params()]

    def state_dict(self) -> dict[str, Any]:
        """ZeRO-0: full state on every rank, the owners' matrix states gathered (a collective when
        sharded: call it on every rank, as DeepSpeed does). ZeRO ≥ 1: this rank's state only (its
        AdamW partitions and its owned matrices, under ``zero_matrix_state`` by position), since
        DeepSpeed saves one file per rank."""
        if self.zero is None:
            sd = super().state_dict()
            sd["state"] = self.gathered_state(sd["state"], self._state_keys())
            return sd
        handles = self.zero.handles
        owned = {i: self.state.pop(h) for i, h in enumerate(handles) if h in self.state}
        try:
            sd = super().state_dict()  # torch maps only tensors in param_groups: the handles are not
        finally:
            for i, value in owned.items():
                self.state[handles[i]] = value
        sd[ZERO_MATRIX_STATE] = owned
        return sd

    def gathered_state(self, state: dict[Any, Any], keys: Sequence[Any]) -> dict[Any, Any]:
        """``state`` with the owners' matrix entries (``keys[i]`` for matrix ``i``) merged in at
        ZeRO-0 (a collective when sharded); unchanged under ZeRO ≥ 1 (per-rank files)."""
        return state if self.zero is not None else self.sharding.gather_state(state, keys)

    def drop_unowned(self, state: dict[Any, Any], keys: Sequence[Any]) -> None:
        """Delete the entries of matrices this rank does not own after loading a gathered (ZeRO-0)
        state; nothing to do under ZeRO ≥ 1, whose files hold only this rank's state."""
        if self.zero is None:
            self.sharding.drop_unowned(state, keys)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load (hyperparameters and state from the checkpoint), keeping this optimizer's
        group structure, filling hyperparameters the checkpoint lacks (an older version's) from
        this optimizer's settings and, when sharded, keeping only the state of owned matrices."""
        state_dict = dict(state_dict)
        zero_state = state_dict.pop(ZERO_MATRIX_STATE, None)
        if (zero_state is None) != (self.zero is None):
            raise ValueError(
                f"{type(self).__name__}: a checkpoint saved at "
                f"{'ZeRO-0' if zero_state is None else 'ZeRO ≥ 1'} cannot be loaded at "
                f"{'ZeRO-0' if self.zero is None else 'ZeRO ≥ 1'} (its matrix state is laid out differently)"
            )
        structure = [{k: g[k] for k in GROUP_STRUCTURE if k in g} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, keys in zip(self.param_groups, structure, strict=True):
            group.update(keys)
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if self.zero is None:
            self.drop_unowned(self.state, self.matrix_params())
            return
        device = self.matrix_params()[0].device if self.matrix_params() else torch.device("cpu")
        for i, value in zero_state.items():
            if i in self.zero.owned:
                self.state[self.zero.handles[i]] = to_device(value, device)
