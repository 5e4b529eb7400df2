"""Spectral Newton (PAPER.md §5): the project's own optimizer.

For a matrix parameter W (conv kernels as out × (in·kh·kw)) with gradient g:

    buf ← μ·buf + g                                 (momentum buffer, SGD form)
    G   ← g + μ·buf  (Nesterov, as Muon)   or   buf  (plain heavy ball)
    G   ← G / s      s = 1, ‖G‖_F or σ₁(G)           (``normalize``: none | frobenius | spectral)
    Δ   ← U diag(σ_k / (σ_k^α + d)) Vᵀ               (T applied in G's singular basis)
    Δ   ← Δ · ρ / RMS(Δ)                             (only if ``rms_match`` = ρ is set)
    W   ← W · (1 − lr·λ) − lr·Δ                      (decoupled weight decay λ)

Biases, norms, embeddings, the output head and every non-matrix parameter are updated by AdamW
inside the same optimizer object (param groups of kind ``adamw``), so the training loop,
DeepSpeed and LR schedulers see one optimizer. Matrices of equal shape (after orienting every
matrix tall, which T permits since it commutes with transposition) are transformed in one
batched call per step.

Update scale: ``rms_match=None`` (default) applies the paper's raw update, whose size is set by
T and the scale of G relative to d (for raw gradients with σ ≪ √d, T ≈ σ/d: SGD-like with
lr/d; T never exceeds 1/(2√d) per direction, at σ = √d for α = 2). ``rms_match=ρ`` rescales every
update matrix to RMS(Δ) = ‖Δ‖_F/√(mn) = ρ exactly. For a full-rank orthogonal Δ = U Vᵀ this is
Muon/Moonlight's ``0.2·√max(m, n)`` factor with ρ = 0.2, chosen there to match AdamW's typical
update RMS so that AdamW learning rates carry over.

Distribution (``distribution``, :mod:`optimizers.distributed`): with ``sharded`` (the default) and
a process group of world > 1, each matrix is transformed only by its owner rank (LPT on
m·n·min(m, n)), which alone keeps its momentum buffer, and the new values are broadcast in
buckets; ``redundant`` makes every rank transform every matrix. The AdamW side-car always runs
on every rank.

Learning rates: each group's ``lr`` is its real learning rate: the spectral group starts at
``lr``, the AdamW groups at ``adamw_lr``. ``torch.optim.lr_scheduler`` schedulers (LambdaLR,
cosine, OneCycle with per-group maxima, DeepSpeed's WarmupCosineLR) record every group's initial
lr and multiply it by a common factor, so both scale proportionally and the ratio
``adamw_lr / lr`` is preserved. Schedulers that assign one *absolute* value to every group
(DeepSpeed's WarmupLR/WarmupDecayLR with a scalar ``warmup_max_lr``) would break that ratio: give
them per-group lists or use a multiplicative schedule.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .adamw import adamw_step_
from .alpha_policy import AlphaResolver
from .distributed import DEFAULT_BUCKET_CAP_MB, OwnerSharding
from .param_groups import (
    DEFAULT_ADAMW_TYPES,
    NO_DECAY_TYPES,
    assign_parameters,
    build_param_groups,
    check_coverage,
    check_groups_disjoint,
)
from .spectral import (
    METHODS,
    compute_dtype,
    spectral_norm_estimate,
    spectral_transform_with_stats,
)
from .timing import StepTimer

NORMALIZATIONS: tuple[str, ...] = ("none", "frobenius", "spectral")
GROUP_KINDS: tuple[str, ...] = ("spectral", "adamw")


_SpectralTimer = StepTimer  # the timer of the spectral transforms (optimizers.timing)


def _normalize_groups(params: Iterable[Any]) -> list[dict[str, Any]]:
    """Accept torch-style ``params`` and return group dicts with ``kind`` and ``param_names``.

    - An iterable of tensors or ``(name, tensor)`` pairs: matrices (≥ 2-D) form a ``spectral``
      group, the rest an ``adamw`` group (names default to ``param{i}``).
    - An iterable of dicts: each needs ``params``; ``kind`` defaults to ``spectral``; names and
      layer types default to ``param{i}`` / ``other``.
    """
    items = list(params)
    if not items:
        raise ValueError("SpectralNewton got an empty parameter list")
    if not isinstance(items[0], Mapping):
        named = [it if isinstance(it, tuple) else (f"param{i}", it) for i, it in enumerate(items)]
        spectral = [(n, p) for n, p in named if p.ndim >= 2]
        adamw = [(n, p) for n, p in named if p.ndim < 2]
        items = [
            {"params": [p for _, p in grp], "param_names": [n for n, _ in grp], "kind": kind, "name": kind}
            for kind, grp in (("spectral", spectral), ("adamw", adamw))
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
        group.setdefault("kind", "spectral")
        group.setdefault("name", group["kind"])
        if group["kind"] not in GROUP_KINDS:
            raise ValueError(f"group {group['name']!r}: kind must be spectral or adamw (got {group['kind']!r})")
        if group["kind"] == "spectral":
            for n, p in zip(group["param_names"], plist, strict=True):
                if p.ndim < 2:
                    raise ValueError(f"parameter {n!r} (shape {tuple(p.shape)}) is not a matrix: put it in an adamw group")
        groups.append(group)
    return groups


class SpectralNewton(torch.optim.Optimizer):
    """Spectral Newton with an AdamW side-car for non-matrix parameters (PAPER.md §5).

    Args (defaults are the registry's; see ``optimizers.settings.SpectralNewtonSettings``):
        params: param groups (dicts with ``params``, ``kind`` = spectral | adamw, optional
            ``param_names``/``layer_types``) or a flat iterable of tensors / (name, tensor)
            pairs (matrices → spectral, the rest → AdamW). :meth:`from_model` builds groups
            from a model's layer types.
        lr: learning rate of spectral groups.
        momentum: μ of the momentum buffer (0 disables it).
        nesterov: update input g + μ·buf (Muon's choice) instead of buf.
        weight_decay: decoupled weight decay λ for every group (``adamw_no_decay`` overrides 0).
        method: ``svd`` | ``gram`` | ``solve`` (α = 2 only) | ``polar``; see ``optimizers.spectral``.
        alpha: α under the ``fixed`` policy and for types missing from the table.
        damping: d in T(σ; α) = σ/(σ^α + d).
        normalize: ``none`` | ``frobenius`` | ``spectral``: divide G by 1, ‖G‖_F or σ₁ before T.
        rms_match: if set to ρ, rescale each update matrix to RMS ρ (see module docstring).
        alpha_policy: ``fixed`` | ``by_layer_type`` | ``measured`` (``optimizers.alpha_policy``).
        alpha_table: per-layer-type α overrides on top of the paper-seeded defaults.
        adamw_lr, adamw_betas, adamw_eps: AdamW hyperparameters of ``adamw`` groups.
        power_iters: power iterations for ``normalize='spectral'``.
        distribution: ``sharded`` | ``redundant`` (see the module docstring).
        bucket_cap_mb: largest broadcast buffer of the sharded mode, MiB.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        method: str = "gram",
        alpha: float = 2.0,
        damping: float = 0.1,
        normalize: str = "none",
        rms_match: float | None = None,
        alpha_policy: str = "fixed",
        alpha_table: Mapping[str, float] | None = None,
        adamw_lr: float = 1e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        power_iters: int = 10,
        distribution: str = "sharded",
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
    ) -> None:
        if lr <= 0 or adamw_lr <= 0:
            raise ValueError(f"learning rates must be > 0 (got lr={lr}, adamw_lr={adamw_lr})")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) (got {momentum})")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0 (got {weight_decay})")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)} (got {normalize!r})")
        if damping < 0 or not math.isfinite(damping):
            raise ValueError(f"damping must be a finite number ≥ 0 (got {damping})")
        if rms_match is not None and not rms_match > 0:
            raise ValueError(f"rms_match must be > 0 or None (got {rms_match})")
        if not all(0 <= b < 1 for b in adamw_betas):
            raise ValueError(f"adamw_betas must be in [0, 1) (got {adamw_betas})")
        if method == "solve" and alpha_policy == "measured":
            raise ValueError("method 'solve' needs alpha = 2, but alpha_policy 'measured' sets α per layer")
        self.alpha_resolver = AlphaResolver(alpha_policy, alpha, alpha_table)
        self.method = method
        self.damping = float(damping)
        self.normalize = normalize
        self.rms_match = rms_match
        self.power_iters = int(power_iters)

        groups = _normalize_groups(params)
        check_groups_disjoint(groups)
        for g in groups:
            if g["kind"] == "adamw":
                g.setdefault("lr", adamw_lr)
                g.setdefault("betas", tuple(adamw_betas))
                g.setdefault("eps", adamw_eps)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "betas": tuple(adamw_betas),
            "eps": adamw_eps,
        }
        super().__init__(groups, defaults)
        if method == "solve":
            for g in self.param_groups:
                if g["kind"] != "spectral":
                    continue
                for n, t in zip(g["param_names"], g["layer_types"], strict=True):
                    a = self.alpha_resolver(n, t)
                    if a != 2.0:
                        raise ValueError(
                            f"method 'solve' needs alpha = 2, but parameter {n!r} ({t}) gets alpha {a} "
                            f"under alpha_policy {alpha_policy!r}; use method 'gram' or 'polar'"
                        )
        self.sharding = OwnerSharding(self._spectral_params(), distribution, bucket_cap_mb)
        self._owned: set[int] = set()
        self._last_timer: StepTimer | None = None
        self._last_fallbacks = 0
        self.last_step_stats: dict[str, float] = {}
        """Details of the last step: fallbacks, zeroed, matrices, ns_steps (max over buckets)."""

    # --- construction from a model ------------------------------------------------------------

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        adamw_types: Iterable[str] = DEFAULT_ADAMW_TYPES,
        no_decay_types: Iterable[str] = NO_DECAY_TYPES,
        layer_types: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> SpectralNewton:
        """Group ``model``'s trainable parameters by layer type and build the optimizer.

        Types in ``adamw_types`` and non-matrix parameters go to AdamW (groups ``adamw`` and
        ``adamw_no_decay``), everything else to the ``spectral`` group. Checks that every
        trainable parameter is in exactly one group.
        """
        from .layer_types import tag_parameters

        types = dict(layer_types) if layer_types is not None else tag_parameters(model)
        assignment = assign_parameters(model, adamw_types, types)
        groups = build_param_groups(model, assignment, no_decay_types, types)
        check_coverage(model, groups)
        return cls(groups, **settings)

    # --- measured α ---------------------------------------------------------------------------

    def set_measured_alpha(self, alphas: Mapping[str, float]) -> None:
        """Set per-parameter α (by parameter name) for the ``measured`` policy.

        Names must be parameters of this optimizer; values must be finite and > 0. Values for
        AdamW parameters are stored but unused. Unmeasured parameters keep the table's α.
        """
        known = {n for g in self.param_groups for n in g["param_names"]}
        unknown = [n for n in alphas if n not in known]
        if unknown:
            raise ValueError(f"set_measured_alpha: {unknown[0]!r} is not a parameter of this optimizer")
        self.alpha_resolver.set_measured(alphas)

    def alpha_for(self, name: str) -> float:
        """The α the next step uses for parameter ``name`` (for logging and tests)."""
        for g in self.param_groups:
            if name in g["param_names"]:
                return self.alpha_resolver(name, g["layer_types"][g["param_names"].index(name)])
        raise KeyError(name)

    def _spectral_params(self) -> list[torch.Tensor]:
        """The matrices of the spectral groups, in group order (the sharding's positions)."""
        return [p for g in self.param_groups if g["kind"] == "spectral" for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus the measured α values (so a resumed run keeps them).

        When sharded, the owners' momentum buffers are gathered so that every rank returns the
        full state (a collective: call it on every rank, as DeepSpeed does).
        """
        sd = super().state_dict()
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        sd["state"] = self.sharding.gather_state(sd["state"], [index[id(p)] for p in self._spectral_params()])
        sd["measured_alpha"] = dict(self.alpha_resolver.measured)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        measured = state_dict.pop("measured_alpha", {})
        super().load_state_dict(state_dict)
        self.sharding.drop_unowned(self.state, self._spectral_params())
        self.alpha_resolver.measured = {}
        self.alpha_resolver.set_measured(measured)

    # --- metrics ------------------------------------------------------------------------------

    def step_metrics(self) -> dict[str, float]:
        """``spectral_time_s``: seconds inside this rank's spectral transforms during the last
        step; ``fallbacks``: matrices whose requested method failed in the last step (this rank's);
        ``comm_time_s``, ``load_imbalance``, ``bytes_communicated``: see
        :mod:`optimizers.distributed`.

        On CUDA the time comes from events resolved here, so ``step()`` itself never waits for
        the GPU to report timings (except, with world > 1, for the load-imbalance collective).
        """
        seconds = self._last_timer.seconds() if self._last_timer is not None else 0.0
        return {
            "spectral_time_s": seconds,
            "fallbacks": float(self._last_fallbacks),
            **self.sharding.metrics(),
        }

    # --- the step -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step over every group; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        timer = StepTimer()
        self._owned = self.sharding.owned_ids(self._spectral_params())
        stats = {"fallbacks": 0, "zeroed": 0, "matrices": 0, "ns_steps": 0}
        for group in self.param_groups:
            if group["kind"] == "adamw":
                adamw_step_(
                    group["params"],
                    self.state,
                    lr=group["lr"],
                    betas=tuple(group["betas"]),
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                )
            else:
                self._spectral_group_step(group, timer, stats)
        self.sharding.sync_(self._spectral_params())
        if self.sharding.world > 1:
            self.sharding.record_load(timer.seconds())
        self._last_timer, self._last_fallbacks = timer, stats["fallbacks"]
        self.last_step_stats = {k: float(v) for k, v in stats.items()}
        return loss

    def _update_input(self, p: torch.Tensor, group: Mapping[str, Any]) -> torch.Tensor:
        """Momentum: buf ← μ·buf + g; returns g + μ·buf (Nesterov) or buf."""
        g = p.grad
        mu = group["momentum"]
        if mu == 0:
            return g
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
        buf.mul_(mu).add_(g)
        return g.add(buf, alpha=mu) if group["nesterov"] else buf

    def _spectral_group_step(self, group: dict[str, Any], timer: StepTimer, stats: dict[str, int]) -> None:
        params: Sequence[torch.Tensor] = group["params"]
        names: Sequence[str] = group["param_names"]
        types: Sequence[str] = group["layer_types"]
        if len(names) != len(params):
            raise RuntimeError(
                "SpectralNewton's param groups were rewritten (e.g. by a ZeRO ≥ 1 flat partition); "
                "it needs whole gradient matrices: use ZeRO stage 0"
            )
        lr, wd = group["lr"], group["weight_decay"]
        # Bucket tall-oriented matrices by (shape, dtype, device) for batched transforms.
        buckets: dict[tuple[Any, ...], list[tuple[torch.Tensor, torch.Tensor, bool, float]]] = defaultdict(list)
        for p, name, ltype in zip(params, names, types, strict=True):
            if p.grad is None:
                continue
            if p.ndim < 2 or p.grad.ndim < 2:
                raise RuntimeError(
                    f"SpectralNewton needs whole gradient matrices; parameter {name!r} arrived with shape "
                    f"{tuple(p.grad.shape)} (a ZeRO ≥ 1 flat partition?): use ZeRO stage 0"
                )
            if p.grad.is_sparse:
                raise RuntimeError(f"parameter {name!r}: SpectralNewton does not support sparse gradients")
            if id(p) not in self._owned:
                continue  # another rank transforms it; its new value arrives in sharding.sync_()
            u = self._update_input(p, group)
            mat = u.reshape(u.shape[0], -1)  # conv: out × (in·kh·kw); GPT-2 Conv1D: in × out, T is
            transposed = mat.shape[0] < mat.shape[1]  # transpose-equivariant so storage order is moot
            if transposed:
                mat = mat.mT
            buckets[(tuple(mat.shape), mat.dtype, mat.device)].append((p, mat, transposed, self.alpha_resolver(name, ltype)))
            if wd:
                p.mul_(1 - lr * wd)
        for (_, _, device), items in buckets.items():
            G = torch.stack([m for _, m, _, _ in items]).to(compute_dtype(items[0][1].dtype))
            G = self._normalized(G)
            alphas = torch.tensor([a for *_, a in items], dtype=G.dtype, device=device)
            with timer.measure(device):
                res = spectral_transform_with_stats(G, alphas, self.damping, self.method)
            stats["fallbacks"] += res.fallbacks
            stats["zeroed"] += res.zeroed
            stats["matrices"] += len(items)
            stats["ns_steps"] = max(stats["ns_steps"], res.ns_steps)
            update = self._rms_matched(res.update)
            for (p, _, transposed, _), upd in zip(items, update, strict=True):
                if transposed:
                    upd = upd.mT
                p.add_(upd.reshape(p.shape).to(p.dtype), alpha=-lr)

    def _normalized(self, G: torch.Tensor) -> torch.Tensor:
        """G / s per matrix, s = ‖G‖_F or σ₁ (power iteration); zero matrices stay zero."""
        if self.normalize == "none":
            return G
        if self.normalize == "frobenius":
            scale = torch.linalg.matrix_norm(G, ord="fro")
        else:
            scale = spectral_norm_estimate(G, self.power_iters)
        return G / scale.clamp_min(torch.finfo(G.dtype).tiny)[:, None, None]

    def _rms_matched(self, update: torch.Tensor) -> torch.Tensor:
        """Scale each matrix to RMS = rms_match (RMS = ‖Δ‖_F / √(mn)); zero updates stay zero.

        For a full-rank orthogonal Δ = U Vᵀ, RMS = 1/√max(m, n), so this equals Muon/Moonlight's
        0.2·√max(m, n) scaling with ρ = 0.2; for SN's non-flat spectra it is the exact RMS.
        """
        if self.rms_match is None:
            return update
        rms = update.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
        return update * (self.rms_match / rms.clamp_min(torch.finfo(update.dtype).tiny))
