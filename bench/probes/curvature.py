"""Per-layer curvature quantities of docs/science/quantities.md on a fixed probe batch.

For each probed layer with weight matrix W (m × n, the out × in view of
`optimizers.layer_types.matrix_view`) and the **mean** loss L of the probe batch — the mean over
its N loss terms (N = B samples for a classifier, B·T tokens for a language model; see
:func:`loss_terms`):

1. **gradient pass** — G = ∇_W L accumulated over micro-batches (S_j = N_j · mean loss_j, so
   G = Σ_j ∇S_j / N), summed over ranks; SVD G = U Σ Vᵀ; K = min(top_k, numerical rank of G),
   with the numerical rank counting σ > σ_1 · max(m, n) · eps(probe dtype); σ_k is also kept up to
   ``gamma_window`` for the γ fits of §2.
2. **curvature pass** — per micro-batch one forward and one ``create_graph`` backward, then for
   each layer K double backwards give h_k = vec(D_k)ᵀ H vec(D_k) (`bench.probes.hvp`) with
   D_k = u_k v_kᵀ embedded in the weight tensor (zeros outside the q/k/v block for fused QKV
   views); h_k = Σ_j ⟨D_k, ∇²S_j D_k⟩ / N. Module hooks on the same pass accumulate the Kronecker
   factors and the concentration sums (`bench.probes.factors`, which documents the δ and C_δ
   scaling).
3. **factor spectra** — C_δ = δᵀδ/N, C_A = AᵀA/R, eigenvalues λ^δ, λ^A descending (eigvalsh), and

       h^kron_k = (u_kᵀ C_δ u_k)(v_kᵀ C_A v_k)
       ρ^δ_k = u_kᵀ C_δ u_k / λ^δ_k,  ρ^A_k = v_kᵀ C_A v_k / λ^A_k   (rank-matched; NaN if λ ≤ 0)
       Φ_k = ρ^δ_k ρ^A_k,  Λ_k = λ^δ_k λ^A_k   (so h^kron_k = Φ_k Λ_k)
       χ_k = h_k / h^kron_k
       concentration_k = mean_r(x_r² y_r²) / (mean_r x_r² · mean_r y_r²),  x_r = u_kᵀδ_r, y_r = v_kᵀa_r

The model runs through ``torch.func.functional_call`` with detached (or dtype-cast) copies of its
parameters, of which only the probed weights require grad: the model's parameters, their
``.grad`` and any optimizer or DeepSpeed hooks on them are never touched, and no gradient is
computed for biases, norms or embeddings. Sums run in float64 whatever the probe dtype.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from bench.distributed import all_reduce_sum_, broadcast_
from bench.probes.factors import ModuleFactors, ViewSums
from bench.probes.hvp import HVPMethod
from bench.probes.layers import LayerSelection, ProbedLayer, UnsupportedLayer
from bench.probes.phase_timer import PhaseTimer
from bench.probes.probe_batch import ProbeBatch
from bench.probes.settings import ProbeSettings
from optimizers.distributed import rank_and_world
from optimizers.layer_types import from_matrix_view, matrix_view

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Shared (not per-layer) work is recorded in the profile table under this layer name.
SHARED = "*"

#: Columns of the curvature table produced here (the trial adds trial_id and step).
CURVATURE_COLUMNS: tuple[str, ...] = (
    "layer", "layer_type", "module", "depth", "shape_m", "shape_n", "k", "sigma", "h", "h_kron",
    "rho_delta", "rho_A", "phi", "lambda_delta", "lambda_A", "lam", "chi", "concentration",
    "samples", "loss_terms", "positions", "grad_check",
)

#: Phases of the per-module profile rows.
LAYER_PHASES = ("grad_svd", "hvp", "factor_accumulation", "eigh")
#: Phases of the shared profile rows (layer ``"*"``).
SHARED_PHASES = ("order", "grad_pass", "hvp_graph", "allreduce")

_NAN = math.nan


def loss_terms(target: torch.Tensor) -> int:
    """N_j, the number of terms the micro-batch's mean loss averages: one per target element
    (a class label per image, a next token per position). S_j = N_j · loss_j is then the sum of
    the per-term losses, and the probe's mean loss is L = Σ_j S_j / Σ_j N_j."""
    return int(target.numel())


@dataclass
class CurvatureOutput:
    curvature_rows: list[dict[str, Any]] = field(default_factory=list)
    profile_rows: list[dict[str, Any]] = field(default_factory=list)
    unsupported: list[UnsupportedLayer] = field(default_factory=list)


@dataclass
class _Spectrum:
    """SVD of one layer's gradient, restricted to what the probe uses."""

    layer: ProbedLayer
    sigma: torch.Tensor  # σ_1..σ_Kσ (float64), Kσ = max(K, gamma window) ≤ rank
    u: torch.Tensor  # m × K (float64)
    v: torch.Tensor  # n × K (float64)
    h_sum: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.h_sum = torch.zeros(self.u.shape[1], dtype=torch.float64, device=self.u.device)

    @property
    def k(self) -> int:
        return int(self.u.shape[1])


def probe_tensors(model: nn.Module, probed: set[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Parameters and buffers for ``functional_call``: detached aliases (copies when ``dtype``
    differs), floating ones cast to ``dtype``; the weights in ``probed`` become fresh leaves that
    require grad."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        out[name] = t.requires_grad_(True) if name in probed else t
    for name, b in model.named_buffers():
        if b is not None and b.is_floating_point() and b.dtype != dtype:
            out[name] = b.detach().to(dtype)
    return out


def _directions(spectra: list[_Spectrum], module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """All D_k of a module's layers as (ΣK, *weight.shape): u_k v_kᵀ in the layer's row block of
    the out × in view (zeros elsewhere), mapped back to the weight's layout."""
    m_total, n = matrix_view(weight, None, module).shape
    blocks = []
    for spec in spectra:
        start, stop = spec.layer.rows
        d = torch.zeros(spec.k, m_total, n, dtype=weight.dtype, device=weight.device)
        d[:, start:stop, :] = torch.einsum("ik,jk->kij", spec.u, spec.v).to(weight.dtype)
        blocks.append(d)
    dm = torch.cat(blocks)
    return torch.stack([from_matrix_view(dm[i], weight.shape, module) for i in range(dm.shape[0])])


def _svd(g: torch.Tensor, layer: ProbedLayer, settings: ProbeSettings) -> tuple[torch.Tensor, ...]:
    """Leading singular triplets of one layer's mean-loss gradient and the sizes to keep.

    Returns ``(sigma, u, v, k, k_sigma)`` with up to ``max(top_k, gamma_window)`` triplets and
    K = min(top_k, rank), Kσ = min(max(K, gamma_window), rank) (0, 0 for a zero gradient); the
    numerical rank counts σ > σ_1 · max(m, n) · eps(probe dtype).
    """
    start, stop = layer.rows
    block = g[start:stop]
    u, s, vh = torch.linalg.svd(block, full_matrices=False)
    cap = min(max(settings.top_k, settings.gamma_window or 0), s.numel())
    if s.numel() == 0 or not float(s[0]) > 0.0:
        return s[:cap], u[:, :cap], vh[:cap].T, 0, 0
    tol = float(s[0]) * max(block.shape) * torch.finfo(settings.torch_dtype).eps
    rank = int((s > tol).sum())
    k = min(settings.top_k, rank)
    return s[:cap], u[:, :cap], vh[:cap].T, k, min(max(k, settings.gamma_window or 0), rank)


def _descending_eigvals(c: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(c).flip(0)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, NaN where den ≤ 0 (a zero eigenvalue has no meaningful alignment ratio)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.full_like(num, _NAN))


@dataclass
class _Passes:
    """What the two passes over the probe batch share: the model run functionally on probe
    tensors (`probe_tensors`), the probed weights by module, the loss and the batch."""

    model: nn.Module
    loss_fn: LossFn
    batch: ProbeBatch
    settings: ProbeSettings
    device: torch.device
    timer: PhaseTimer
    modules: dict[str, nn.Module]
    by_module: dict[str, list[ProbedLayer]]  # probed layers (q/k/v views share a module)
    pnames: dict[str, str]  # module → its weight's parameter name
    tensors: dict[str, torch.Tensor]

    def weight(self, mod: str) -> torch.Tensor:
        return self.tensors[self.pnames[mod]]

    def summed_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """S_j = N_j · mean loss of micro-batch j."""
        out = functional_call(self.model, self.tensors, (x,), strict=False, tie_weights=True)
        return loss_terms(y) * self.loss_fn(out, y)

    def micro_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batch.micro_batches(self.settings.micro_batch_size, self.device, self.settings.torch_dtype)


def measure_curvature(
    model: nn.Module,
    loss_fn: LossFn,
    batch: ProbeBatch,
    selection: LayerSelection,
    settings: ProbeSettings,
    device: torch.device,
    timer: PhaseTimer | None = None,
    started: float | None = None,
) -> CurvatureOutput:
    """Curvature rows, profile rows and newly found unsupported layers for ``selection.layers``
    (already ordered and filtered; see `bench.probes.layers`). ``model`` must be in the mode the
    probe wants (eval) and on ``device``; every rank of a process group must call this together.
    ``started`` (a ``time.perf_counter()`` value) is where the shared ``total`` profile row starts.
    """
    t0 = time.perf_counter() if started is None else started
    timer = timer or PhaseTimer(device)
    by_module: dict[str, list[ProbedLayer]] = {}
    for layer in selection.layers:
        by_module.setdefault(layer.module_name, []).append(layer)
    result = CurvatureOutput()
    if not by_module:
        return result
    pnames = {mod: layers[0].param_name for mod, layers in by_module.items()}
    passes = _Passes(model, loss_fn, batch, settings, device, timer, dict(model.named_modules()), by_module, pnames,
                     probe_tensors(model, set(pnames.values()), settings.torch_dtype))
    gsum, used, samples, terms = _gradient_pass(passes)
    spectra = _spectra(passes, gsum, used, terms, result.unsupported)
    del gsum  # the summed gradients are not needed past their SVDs
    factors, methods = _curvature_pass(passes, spectra)
    for mod, specs in spectra.items():
        kron = _kronecker_columns(passes, mod, specs, factors.get(mod), samples, terms)
        for spec in specs:
            result.curvature_rows += _layer_rows(spec, kron.get(spec.layer.name), settings, samples, terms,
                                                 result.unsupported)
    result.profile_rows = _profile_rows(timer, spectra, methods, settings, device, time.perf_counter() - t0)
    return result


def _gradient_pass(passes: _Passes) -> tuple[dict[str, torch.Tensor], torch.Tensor, float, float]:
    """1. G·N = Σ_j ∇S_j per module (its matrix view, float64), which modules received a gradient,
    and the sample and loss-term counts B, N; all summed over ranks."""
    device, timer = passes.device, passes.timer
    mods = list(passes.by_module)
    gsum = {mod: torch.zeros(*matrix_view(passes.weight(mod), None, passes.modules[mod]).shape,
                             dtype=torch.float64, device=device) for mod in mods}
    used = torch.zeros(len(mods), dtype=torch.float64, device=device)
    count = torch.zeros(2, dtype=torch.float64, device=device)  # [samples B, loss terms N]
    for x, y in passes.micro_batches():
        with timer.measure(SHARED, "grad_pass"):
            s = passes.summed_loss(x, y)
            grads = torch.autograd.grad(s, [passes.weight(m) for m in mods], allow_unused=True)
            for i, (mod, g) in enumerate(zip(mods, grads, strict=True)):
                if g is not None:
                    gsum[mod] += matrix_view(g, None, passes.modules[mod]).to(torch.float64)
                    used[i] = 1.0
        count += torch.tensor([x.shape[0], loss_terms(y)], dtype=torch.float64, device=device)
    with timer.measure(SHARED, "allreduce"):
        all_reduce_sum_([*gsum.values(), used, count])
    samples, terms = (float(c) for c in count.tolist())
    if samples <= 0 or terms <= 0:
        raise ValueError("the probe batch is empty")
    return gsum, used, samples, terms


def _spectra(passes: _Passes, gsum: dict[str, torch.Tensor], used: torch.Tensor, terms: float,
             unsupported: list[UnsupportedLayer]) -> dict[str, list[_Spectrum]]:
    """The SVD of each probed layer's G = gsum / N, cut to K and Kσ, identical on every rank.
    Layers without a gradient go to ``unsupported``."""
    timer, device = passes.timer, passes.device
    svds: list[tuple[str, ProbedLayer, tuple[torch.Tensor, ...]]] = []
    for i, mod in enumerate(passes.by_module):
        if used[i] == 0:
            unsupported += [UnsupportedLayer(layer.name, layer.layer_type, "the weight does not "
                                             "reach the loss (no gradient)") for layer in passes.by_module[mod]]
            continue
        with timer.measure(mod, "grad_svd"):
            g = gsum[mod] / terms
            svds += [(mod, layer, _svd(g, layer, passes.settings)) for layer in passes.by_module[mod]]
            del g
    with timer.measure(SHARED, "allreduce"):
        # Rank 0 decides K and Kσ and its singular vectors are used everywhere: every rank holds the
        # same all-reduced G, but a σ at the rank tolerance or a degenerate σ could still make two
        # ranks' SVDs disagree, and the HVP directions must be identical on all ranks for the sums
        # to mean anything (and for the tensors of the collectives to have equal sizes).
        sizes = torch.tensor([[k, ks] for *_, (_, _, _, k, ks) in svds], dtype=torch.float64,
                             device=device).reshape(-1, 2)
        broadcast_([sizes])
        spectra: dict[str, list[_Spectrum]] = {}
        for (mod, layer, (sig, u, v, _, _)), (k, ks) in zip(svds, sizes.long().tolist(), strict=True):
            if ks == 0:
                unsupported.append(UnsupportedLayer(
                    layer.name, layer.layer_type, "the gradient is exactly zero on the probe batch"))
                continue
            spectra.setdefault(mod, []).append(
                _Spectrum(layer, sig[:ks].clone(), u[:, :k].contiguous(), v[:, :k].contiguous()))
        broadcast_([t for specs in spectra.values() for sp in specs for t in (sp.sigma, sp.u, sp.v)])
    return spectra


def _module_factors(passes: _Passes, spectra: dict[str, list[_Spectrum]]) -> dict[str, ModuleFactors]:
    """Kronecker-factor accumulators of the modules with at least one Kronecker-capable view."""
    dtype, device = passes.settings.torch_dtype, passes.device
    factors: dict[str, ModuleFactors] = {}
    for mod, specs in spectra.items():
        views = [
            ViewSums(s.layer, s.u.to(dtype), s.v.to(dtype),
                     torch.zeros(s.layer.shape[0], s.layer.shape[0], dtype=torch.float64, device=device),
                     *(torch.zeros(s.k, dtype=torch.float64, device=device) for _ in range(4)))
            for s in specs if s.layer.kronecker
        ]
        if views:
            factors[mod] = ModuleFactors(passes.modules[mod], mod, specs[0].layer.kind, views,
                                         passes.settings.spatial_subsample, passes.timer)
    return factors


def _curvature_pass(passes: _Passes, spectra: dict[str, list[_Spectrum]]
                    ) -> tuple[dict[str, ModuleFactors], dict[str, HVPMethod]]:
    """2. Per micro-batch one forward and one ``create_graph`` backward; K HVPs per layer add to
    ``h_sum``, and the forward hooks accumulate the Kronecker factors; all summed over ranks."""
    timer, settings = passes.timer, passes.settings
    methods = {mod: HVPMethod(mod, settings.hvp_method, settings.hvp_batch) for mod in spectra}
    factors = _module_factors(passes, spectra)
    handles = [passes.modules[mod].register_forward_hook(f.forward_hook) for mod, f in factors.items()]
    try:
        for x, y in passes.micro_batches():
            with timer.measure(SHARED, "hvp_graph"):
                s = passes.summed_loss(x, y)
                weights = [passes.weight(m) for m in spectra]
                outs = [o for f in factors.values() for o in f.outputs]
                grads = torch.autograd.grad(s, weights + outs, create_graph=True, allow_unused=True)
            wgrads = dict(zip(spectra, grads[: len(weights)], strict=True))
            ograds = list(grads[len(weights) :])
            for mod, specs in spectra.items():
                if wgrads[mod] is not None:
                    with timer.measure(mod, "hvp"):
                        weight = passes.weight(mod)
                        q = methods[mod].run(wgrads[mod], weight, _directions(specs, passes.modules[mod], weight))
                        offset = 0
                        for spec in specs:
                            spec.h_sum += q[offset : offset + spec.k]
                            offset += spec.k
                if mod in factors:
                    n_out = len(factors[mod].outputs)
                    factors[mod].consume_output_grads(ograds[:n_out])
                    ograds = ograds[n_out:]
            del s, grads, wgrads, ograds, outs
    finally:
        for h in handles:
            h.remove()
        for f in factors.values():
            f.outputs.clear()
    with timer.measure(SHARED, "allreduce"):
        all_reduce_sum_([s.h_sum for specs in spectra.values() for s in specs]
                        + [t for f in factors.values() for t in f.tensors()])
    return factors, methods


def _kronecker_columns(passes: _Passes, mod: str, specs: list[_Spectrum], fac: ModuleFactors | None,
                       samples: float, terms: float) -> dict[str, dict[str, torch.Tensor]]:
    """3. The factor spectra of one module and, per Kronecker view (layer name), the columns
    h^kron, ρ^δ, ρ^A, Φ, λ^δ, λ^A, Λ, concentration, positions per sample and the gradient check."""
    kron: dict[str, dict[str, torch.Tensor]] = {}
    if fac is None or not float(fac.counts[1]) > 0:
        return kron
    with passes.timer.measure(mod, "eigh"):
        rows_full, rows_kept = float(fac.counts[0]), float(fac.counts[1])
        c_a = fac.saa / rows_kept
        lam_a = _descending_eigvals(c_a)
        for view in fac.views:
            c_d = view.sdd * (rows_full / rows_kept) / terms
            lam_d = _descending_eigvals(c_d)
            spec = next(s for s in specs if s.layer is view.layer)
            k = spec.k
            qd = torch.einsum("ik,ij,jk->k", spec.u, c_d, spec.u)
            qa = torch.einsum("ik,ij,jk->k", spec.v, c_a, spec.v)
            rho_d, rho_a = _ratio(qd, lam_d[:k]), _ratio(qa, lam_a[:k])
            conc = _ratio(rows_kept * view.x2y2, view.x2 * view.y2)
            check = (view.xy * (rows_full / rows_kept) / terms - spec.sigma[:k]).abs().max()
            scale = (view.xy.abs().sum() * (rows_full / rows_kept) / terms).clamp_min(float(spec.sigma[0]))
            kron[view.layer.name] = {
                "h_kron": qd * qa, "rho_delta": rho_d, "rho_A": rho_a, "phi": rho_d * rho_a,
                "lambda_delta": lam_d[:k], "lambda_A": lam_a[:k], "lam": lam_d[:k] * lam_a[:k],
                "concentration": conc, "positions": torch.tensor(rows_full / samples),
                "grad_check": check / scale,
            }
    return kron


def _layer_rows(spec: _Spectrum, kv: dict[str, torch.Tensor] | None, settings: ProbeSettings, samples: float,
                terms: float, unsupported: list[UnsupportedLayer]) -> list[dict[str, Any]]:
    """The rows of one layer, its Kronecker columns dropped (NaN, and the layer reported as
    partially probed) when the hooks' factors disagree with the weight gradient."""
    layer = spec.layer
    tol = 1e-6 if settings.torch_dtype == torch.float64 else 1e-2
    if kv is not None and settings.spatial_subsample == 1 and float(kv["grad_check"]) > tol:
        unsupported.append(UnsupportedLayer(
            layer.name, layer.layer_type, f"hooks saw inputs/output gradients inconsistent with "
            f"the weight gradient (|δᵀA/N − G| along u_k, v_k is {float(kv['grad_check']):.2e} of "
            "its scale): the module changes its input in place or applies its weight outside "
            "the hooked call; Kronecker columns are NaN", partial=True))
        kv = None
    return _rows(layer, spec, spec.h_sum / terms, kv, samples, terms)


def _rows(layer: ProbedLayer, spec: _Spectrum, h: torch.Tensor, kv: dict[str, torch.Tensor] | None,
          samples: float, terms: float) -> list[dict[str, Any]]:
    """One curvature row per k ≤ Kσ; h and Kronecker columns are NaN beyond K (γ window)."""
    rows = []
    for i in range(spec.sigma.numel()):
        in_k = i < spec.k

        def col(key: str, i: int = i, in_k: bool = in_k) -> float:
            return float(kv[key][i]) if (kv is not None and in_k) else _NAN

        h_i = float(h[i]) if in_k else _NAN
        h_kron = col("h_kron")
        rows.append({
            "layer": layer.name, "layer_type": layer.layer_type, "module": layer.module_name,
            "depth": layer.depth, "shape_m": layer.shape[0], "shape_n": layer.shape[1], "k": i + 1,
            "sigma": float(spec.sigma[i]), "h": h_i, "h_kron": h_kron,
            "rho_delta": col("rho_delta"), "rho_A": col("rho_A"), "phi": col("phi"),
            "lambda_delta": col("lambda_delta"), "lambda_A": col("lambda_A"), "lam": col("lam"),
            "chi": h_i / h_kron if (in_k and h_kron != 0.0 and not math.isnan(h_kron)) else _NAN,
            "concentration": col("concentration"), "samples": samples, "loss_terms": terms,
            "positions": float(kv["positions"]) if kv is not None else _NAN,
            "grad_check": float(kv["grad_check"]) if kv is not None else _NAN,
        })
    return rows


def _profile_rows(timer: PhaseTimer, spectra: dict[str, list[_Spectrum]], methods: dict[str, HVPMethod],
                  settings: ProbeSettings, device: torch.device, wall: float) -> list[dict[str, Any]]:
    """Rows of the ``profile`` table (``op = "curvature_probe"``, columns of
    `bench.results.schema.PROFILE`): per probed module — q/k/v views share their fused module's
    rows, since one double backward serves all three — phases grad_svd, hvp, factor_accumulation,
    eigh and their sum ``total``; and shared work under layer ``"*"``: order, grad_pass (first
    pass forward+backward), hvp_graph (second pass forward + create_graph backward), allreduce
    and ``total`` (wall time of the whole probe). ``k`` is the number of directions."""
    _, world = rank_and_world()
    short = {"float32": "fp32", "float64": "fp64"}[settings.dtype]
    common = {
        "op": "curvature_probe", "status": "ok", "dtype": short, "compute_dtype": short,
        "device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ranks": world, "threads": torch.get_num_threads(), "top_k": settings.top_k,
        "batch_size": settings.batch_size, "micro_batch_size": settings.micro_batch_size,
        "memory_kind": timer.memory_kind, "torch_version": torch.__version__,
    }
    # SVD and eigendecompositions always run in float64 (see the module docstring).
    f64 = {"grad_svd": "fp64", "eigh": "fp64"}
    rows: list[dict[str, Any]] = []
    for mod, specs in spectra.items():
        m = sum(s.layer.shape[0] for s in specs)
        n = specs[0].layer.shape[1]
        base = {**common, "layer": mod, "layer_type": "attn_qkv" if len(specs) > 1 else specs[0].layer.layer_type,
                "shape": f"{m}x{n}", "shape_m": m, "shape_n": n, "k": sum(s.k for s in specs)}
        total, peak = 0.0, _NAN
        for phase in LAYER_PHASES:
            sec, mem = timer.get(mod, phase)
            total += sec
            peak = mem if math.isnan(peak) else (peak if math.isnan(mem) else max(peak, mem))
            method = {"hvp": methods[mod].label, "grad_svd": "svd", "eigh": "eigvalsh"}.get(phase, "hooks")
            rows.append({**base, "phase": phase, "method": method, "seconds": sec, "peak_memory_bytes": mem,
                         "compute_dtype": f64.get(phase, short)})
        rows.append({**base, "phase": "total", "method": "", "seconds": total, "peak_memory_bytes": peak})
    base = {**common, "layer": SHARED, "layer_type": "", "shape": "", "shape_m": 0, "shape_n": 0, "k": 0}
    for phase in SHARED_PHASES:
        sec, mem = timer.get(SHARED, phase)
        rows.append({**base, "phase": phase, "method": "", "seconds": sec, "peak_memory_bytes": mem})
    rows.append({**base, "phase": "total", "method": "", "seconds": wall, "peak_memory_bytes": _NAN})
    return rows
