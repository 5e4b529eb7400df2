"""Spectral Newton (docs/science/spectral_newton.md): the project's own optimizer.

For a matrix parameter W (conv kernels as out × (in·kh·kw)) with gradient g:

    buf ← μ·buf + g                                 (momentum buffer, SGD form)
    G   ← g + μ·buf  (Nesterov, as Muon)   or   buf  (plain heavy ball)
    G   ← G / s      s = 1, ‖G‖_F or σ₁(G)           (``normalize``: none | frobenius | spectral)
    Δ   ← U diag(σ_k / (σ_k^α + d)) Vᵀ               (T applied in G's singular basis)
    Δ   ← Δ · ρ / RMS(Δ)                             (only if ``rms_match`` = ρ is set)
    W   ← W · (1 − lr·λ) − lr·Δ                      (decoupled weight decay λ)

Biases, norms, embeddings, the output head and every non-matrix parameter are updated by AdamW
inside the same optimizer object (param groups of kind ``adamw``; the frame of every matrix
optimizer, :mod:`optimizers.matrix_base`, which also applies the decayed update and distributes
the work), so the training loop, DeepSpeed and LR schedulers see one optimizer. Matrices of equal
shape (after orienting every matrix tall, which T permits since it commutes with transposition)
are transformed in one batched call per step.

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

Learning rates: each group's ``lr`` is its real learning rate: the matrix group starts at
``lr``, the AdamW groups at ``adamw_lr``. ``torch.optim.lr_scheduler`` schedulers (LambdaLR,
cosine, OneCycle with per-group maxima, DeepSpeed's WarmupCosineLR) record every group's initial
lr and multiply it by a common factor, so both scale proportionally and the ratio
``adamw_lr / lr`` is preserved. Schedulers that assign one *absolute* value to every group
(DeepSpeed's WarmupLR/WarmupDecayLR with a scalar ``warmup_max_lr``) would break that ratio: give
them per-group lists or use a multiplicative schedule.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .alpha_policy import check_alpha, resolve_alpha
from .matrix_base import MatrixOptimizer, OwnedMatrix
from .settings import SpectralNewtonSettings
from .spectral import compute_dtype, spectral_norm_estimate, spectral_transform_with_stats

STEP_STATS: tuple[str, ...] = ("fallbacks", "zeroed", "matrices", "ns_steps")


class SpectralNewton(MatrixOptimizer):
    """Spectral Newton with an AdamW side-car for non-matrix parameters (docs/science/spectral_newton.md).

    Settings: :class:`optimizers.settings.SpectralNewtonSettings` (``lr``, ``momentum`` μ,
    ``nesterov``, ``weight_decay`` λ, ``method`` (``svd`` | ``gram`` | ``solve`` | ``polar``, see
    :mod:`optimizers.spectral`), ``alpha``, ``damping`` d, ``normalize``, ``rms_match``,
    ``alpha_policy``, ``alpha_table`` (:mod:`optimizers.alpha_policy`), ``power_iters`` and the
    shared matrix-optimizer settings). All but the shared ones are matrix-group hyperparameters.
    """

    settings_model = SpectralNewtonSettings
    time_metric = "spectral_time_s"

    def __init__(self, params: Iterable[Any], **settings: Any) -> None:
        super().__init__(params, **settings)
        self.measured_alpha: dict[str, float] = {}
        """α per parameter name from the curvature probe (the ``measured`` policy)."""
        self.last_step_stats: dict[str, float] = {}
        """Details of the last step: fallbacks, zeroed, matrices, ns_steps (max over buckets)."""

    # --- α ------------------------------------------------------------------------------------------

    def set_measured_alpha(self, alphas: Mapping[str, float]) -> None:
        """Set per-parameter α (by parameter name) for the ``measured`` policy.

        Names must be parameters of this optimizer; values must be finite and > 0. Values for
        AdamW parameters are stored but unused. Unmeasured parameters keep the table's α.
        """
        known = {n for g in self.param_groups for n in g["param_names"]}
        unknown = [n for n in alphas if n not in known]
        if unknown:
            raise ValueError(f"set_measured_alpha: {unknown[0]!r} is not a parameter of this optimizer")
        for name, value in alphas.items():
            self.measured_alpha[name] = check_alpha(value, f"measured alpha for {name!r}")

    def _alpha(self, group: Mapping[str, Any], name: str, layer_type: str) -> float:
        return resolve_alpha(
            group["alpha_policy"], group["alpha"], group["alpha_table"], self.measured_alpha, name, layer_type
        )

    def alpha_for(self, name: str) -> float:
        """The α the next step uses for parameter ``name`` (for logging and tests)."""
        for g in self.matrix_groups():
            if name in g["param_names"]:
                return self._alpha(g, name, g["layer_types"][g["param_names"].index(name)])
        raise KeyError(name)

    # --- the per-matrix math --------------------------------------------------------------------------

    def init_state(self, grad: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        """The momentum buffer (none when μ = 0)."""
        if not group["momentum"]:
            return {}
        return {"momentum_buffer": torch.zeros_like(grad, memory_format=torch.preserve_format)}

    def _update_input(self, m: OwnedMatrix) -> torch.Tensor:
        """Momentum: buf ← μ·buf + g; returns g + μ·buf (Nesterov) or buf."""
        mu = m.group["momentum"]
        if mu == 0:
            return m.grad
        buf = self.matrix_state(m)["momentum_buffer"]
        buf.mul_(mu).add_(m.grad)
        return m.grad.add(buf, alpha=mu) if m.group["nesterov"] else buf

    def step_owned(self, matrices: Sequence[OwnedMatrix]) -> None:
        """T of every owned matrix, batched over equal (tall-oriented) shapes within a group."""
        stats = dict.fromkeys(STEP_STATS, 0)
        buckets: dict[tuple[Any, ...], list[tuple[OwnedMatrix, torch.Tensor, bool]]] = defaultdict(list)
        for m in matrices:
            u = self._update_input(m)
            mat = u.reshape(u.shape[0], -1)  # conv: out × (in·kh·kw); GPT-2 Conv1D: in × out, T is
            transposed = mat.shape[0] < mat.shape[1]  # transpose-equivariant so storage order is moot
            if transposed:
                mat = mat.mT
            buckets[(id(m.group), tuple(mat.shape), mat.dtype, mat.device)].append((m, mat, transposed))
        for items in buckets.values():
            group = items[0][0].group
            G = torch.stack([mat for _, mat, _ in items]).to(compute_dtype(items[0][1].dtype))
            G = self._normalized(G, group)
            alphas = torch.tensor([self._alpha(group, m.name, m.layer_type) for m, _, _ in items], dtype=G.dtype,
                                  device=G.device)
            res = spectral_transform_with_stats(G, alphas, group["damping"], group["method"])
            stats["fallbacks"] += res.fallbacks
            stats["zeroed"] += res.zeroed
            stats["matrices"] += len(items)
            stats["ns_steps"] = max(stats["ns_steps"], res.ns_steps)
            for (m, _, transposed), upd in zip(items, self._rms_matched(res.update, group), strict=True):
                self.apply_update_(m, upd.mT if transposed else upd)
        self.last_step_stats = {k: float(v) for k, v in stats.items()}

    @staticmethod
    def _normalized(G: torch.Tensor, group: Mapping[str, Any]) -> torch.Tensor:
        """G / s per matrix, s = ‖G‖_F or σ₁ (power iteration); zero matrices stay zero."""
        if group["normalize"] == "none":
            return G
        if group["normalize"] == "frobenius":
            scale = torch.linalg.matrix_norm(G, ord="fro")
        else:
            scale = spectral_norm_estimate(G, group["power_iters"])
        return G / scale.clamp_min(torch.finfo(G.dtype).tiny)[:, None, None]

    @staticmethod
    def _rms_matched(update: torch.Tensor, group: Mapping[str, Any]) -> torch.Tensor:
        """Scale each matrix to RMS = ρ = ``rms_match`` (RMS = ‖Δ‖_F / √(mn)); zero updates stay zero.

        For a full-rank orthogonal Δ = U Vᵀ, RMS = 1/√max(m, n), so this equals Muon/Moonlight's
        0.2·√max(m, n) scaling with ρ = 0.2; for SN's non-flat spectra it is the exact RMS.
        """
        rho = group["rms_match"]
        if rho is None:
            return update
        rms = update.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
        return update * (rho / rms.clamp_min(torch.finfo(update.dtype).tiny))

    # --- metrics and checkpoints ----------------------------------------------------------------------

    def step_metrics(self) -> dict[str, float]:
        """The frame's metrics (``spectral_time_s`` for the matrix phase) plus ``fallbacks``:
        matrices whose requested method failed in the last step (this rank's)."""
        return {**super().step_metrics(), "fallbacks": self.last_step_stats.get("fallbacks", 0.0)}

    def state_dict(self) -> dict[str, Any]:
        """The frame's state dict plus the measured α values (so a resumed run keeps them)."""
        return {**super().state_dict(), "measured_alpha": dict(self.measured_alpha)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        measured = state_dict.pop("measured_alpha", {})
        super().load_state_dict(state_dict)
        self.measured_alpha = {}
        self.set_measured_alpha(measured)
