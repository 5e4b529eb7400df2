"""Per-layer curvature quantities of docs/science/quantities.md on a fixed probe batch, in the probe's modes.

For each probed layer with weight matrix W (m × n, the out × in view of
`optimizers.layer_types.matrix_view`) and the **mean** loss L of the probe batch — the mean over
its N loss terms (N = B samples for a classifier, B·T tokens for a language model; see
:func:`loss_terms`):

1. **first pass** — G = ∇_W L accumulated over micro-batches (S_j = N_j · mean loss_j, so
   G = Σ_j ∇S_j / N), summed over ranks; module hooks (`bench.probes.factors`) feed the
   Frequent Directions sketches of the δ and A rows and S = Σ_r ‖δ_r‖‖a_r‖ / N. Then, on each
   module's owner rank (`bench.probes.owners`): the SVD G = U Σ Vᵀ with K = min(top_k,
   numerical rank) (`bench.probes.spectrum`: σ_k counts when above ε · max(m, n) · S), and the
   merge of the ranks' sketches into one basis per factor side (`bench.probes.sketch`).
2. **second pass** — module hooks accumulate the projections x_r = u_kᵀδ_r, y_r = v_kᵀa_r and
   the Rayleigh–Ritz Grams; in mode ``full`` each micro-batch (a *block*) also gets K double
   backwards per layer, h_k = vec(D_k)ᵀ H vec(D_k) with D_k = u_k v_kᵀ (`bench.probes.hvp`;
   zeros outside the q/k/v block for fused QKV views), kept per block for the bootstrap of α,
   and optionally on a sub-sample of the batch (``h_samples``). Mode ``kronecker`` runs this
   pass without create_graph and without HVPs (a backward to the layer outputs only).
3. **columns**, on the owner rank: λ^δ, λ^A (top eigenvalues of C_δ = δᵀδ/N, C_A = AᵀA/R, from
   the sketches, with their error bounds), and

       h^kron_k = (u_kᵀ C_δ u_k)(v_kᵀ C_A v_k),  u_kᵀC_δu_k = Σ_r x_r²·(R/R′)/N,  v_kᵀC_Av_k = Σ_r y_r²/R′
       ρ^δ_k = u_kᵀ C_δ u_k / λ^δ_k,  ρ^A_k = v_kᵀ C_A v_k / λ^A_k   (rank-matched; NaN if λ ≤ 0)
       Φ_k = ρ^δ_k ρ^A_k,  Λ_k = λ^δ_k λ^A_k   (so h^kron_k = Φ_k Λ_k)
       χ_k = h_k / h^kron_k
       concentration_k = mean_r(x_r² y_r²) / (mean_r x_r² · mean_r y_r²)

   and the bootstrap interval of α (`bench.probes.measured_alpha.alpha_interval`); shared with
   every rank.

Mode ``online`` (`bench.probes.online`) replays the rows a training step's own hooks captured
through the same two stages and the same :func:`finish_first_pass` / :func:`finish_second_pass`.

The model runs through ``torch.func.functional_call`` with detached (or dtype-cast) copies of its
parameters, of which only the probed weights require grad: the model's parameters, their
``.grad`` and any optimizer or DeepSpeed hooks on them are never touched, and no gradient is
computed for biases, norms or embeddings. Sums run in float64 whatever the probe dtype.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from bench.distributed import all_reduce_sum_
from bench.probes.factors import ModuleFactors
from bench.probes.hvp import HVPMethod
from bench.probes.layers import LayerSelection, ProbedLayer, UnsupportedLayer
from bench.probes.measured_alpha import alpha_interval
from bench.probes.owners import assign_owners, owns, share_
from bench.probes.phase_timer import PhaseTimer
from bench.probes.probe_batch import ProbeBatch
from bench.probes.settings import ProbeSettings
from bench.probes.spectrum import Spectrum, cap, leading_triplets
from optimizers.distributed import rank_and_world
from optimizers.layer_types import from_matrix_view, matrix_view

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
F64 = torch.float64

#: Shared (not per-layer) work is recorded in the profile table under this layer name.
SHARED = "*"

#: Columns of the curvature table produced here (the trial adds trial_id and step).
CURVATURE_COLUMNS: tuple[str, ...] = (
    "layer", "layer_type", "module", "depth", "shape_m", "shape_n", "k", "sigma", "h", "h_kron",
    "rho_delta", "rho_A", "phi", "lambda_delta", "lambda_A", "lam", "chi", "concentration",
    "samples", "loss_terms", "positions", "grad_check", "probe_mode", "h_samples", "alpha_lo", "alpha_hi",
    "term_scale", "lambda_delta_bound", "lambda_A_bound",
)

#: Phases of the per-module profile rows.
LAYER_PHASES = ("grad_svd", "hvp", "factor_accumulation", "eigh")
#: Phases of the shared profile rows (layer ``"*"``).
SHARED_PHASES = ("order", "grad_pass", "hvp_graph", "factor_pass", "allreduce")
#: Per-view Kronecker columns, K values each (packed in this order to share them).
KRON_COLUMNS = ("h_kron", "rho_delta", "rho_A", "phi", "lambda_delta", "lambda_A", "lam", "concentration")
#: Per-layer values packed before the Kronecker columns.
LAYER_VALUES = ("alpha_lo", "alpha_hi", "has_kron", "positions", "grad_check", "lambda_delta_bound", "lambda_A_bound")

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
class Counts:
    """Global counts of a probe: samples B, loss terms N, and the loss terms behind h (N_h)."""

    samples: float
    terms: float
    h_terms: float = _NAN


@dataclass
class ProbeContext:
    """What both passes and their finishing steps share, in every mode: the probed layers by
    module, the owner rank of each module, the Kronecker accumulators and the timer."""

    settings: ProbeSettings
    device: torch.device
    timer: PhaseTimer
    modules: dict[str, nn.Module]
    by_module: dict[str, list[ProbedLayer]]
    owners: dict[str, int]
    factors: dict[str, ModuleFactors]
    unsupported: list[UnsupportedLayer] = field(default_factory=list)

    @classmethod
    def create(cls, model: nn.Module, layers: list[ProbedLayer], settings: ProbeSettings, device: torch.device,
               timer: PhaseTimer) -> ProbeContext:
        by_module: dict[str, list[ProbedLayer]] = {}
        for layer in layers:
            by_module.setdefault(layer.module_name, []).append(layer)
        modules = dict(model.named_modules())
        shapes = {mod: (sum(x.shape[0] for x in ls), ls[0].shape[1]) for mod, ls in by_module.items()}
        factors = {}
        for mod, ls in by_module.items():
            kron = [layer for layer in ls if layer.kronecker]
            if kron:
                factors[mod] = ModuleFactors.create(modules[mod], mod, kron, settings.spatial_subsample, timer,
                                                    settings.sketch_size, device)
        return cls(settings, device, timer, modules, by_module, assign_owners(shapes), factors)

    def hooks(self) -> list[Any]:
        """Register the factors' forward hooks (remove the returned handles when done)."""
        return [self.modules[mod].register_forward_hook(f.forward_hook) for mod, f in self.factors.items()]

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The factors' hooks ignore the forward passes run inside (the HVPs' own)."""
        for f in self.factors.values():
            f.enabled = False
        try:
            yield
        finally:
            for f in self.factors.values():
                f.enabled = True


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


def _directions(spectra: list[Spectrum], module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
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


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, NaN where den ≤ 0 (a zero eigenvalue has no meaningful alignment ratio)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.full_like(num, _NAN))


@dataclass
class _Passes:
    """The offline modes' passes over the probe batch: the model run functionally on probe
    tensors (`probe_tensors`), the probed weights by module, the loss and the batch."""

    ctx: ProbeContext
    model: nn.Module
    loss_fn: LossFn
    batch: ProbeBatch
    pnames: dict[str, str]  # module → its weight's parameter name
    tensors: dict[str, torch.Tensor]

    def weight(self, mod: str) -> torch.Tensor:
        return self.tensors[self.pnames[mod]]

    def summed_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """S_j = N_j · mean loss of micro-batch j."""
        out = functional_call(self.model, self.tensors, (x,), strict=False, tie_weights=True)
        return loss_terms(y) * self.loss_fn(out, y)

    def micro_batches(self, batch: ProbeBatch | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.ctx.settings
        return (batch or self.batch).micro_batches(s.micro_batch_size, self.ctx.device, s.torch_dtype)

    def outputs(self) -> list[torch.Tensor]:
        return [o for f in self.ctx.factors.values() for o in f.outputs]

    def consume(self, ograds: list[torch.Tensor | None]) -> None:
        """Hand each module's output gradients (in the order of :meth:`outputs`) to its factors."""
        for f in self.ctx.factors.values():
            n_out = len(f.outputs)
            f.consume(ograds[:n_out])
            ograds = ograds[n_out:]


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
    (already ordered and filtered; see `bench.probes.layers`) in mode ``full`` or ``kronecker``.
    ``model`` must be in the mode the probe wants (eval) and on ``device``; every rank of a
    process group must call this together. ``started`` (a ``time.perf_counter()`` value) is where
    the shared ``total`` profile row starts.
    """
    t0 = time.perf_counter() if started is None else started
    timer = timer or PhaseTimer(device)
    if settings.mode == "online":
        raise ValueError("mode 'online' is measured from training steps (bench.probes.online), not here")
    ctx = ProbeContext.create(model, selection.layers, settings, device, timer)
    if not ctx.by_module:
        return CurvatureOutput()
    pnames = {mod: layers[0].param_name for mod, layers in ctx.by_module.items()}
    passes = _Passes(ctx, model, loss_fn, batch, pnames, probe_tensors(model, set(pnames.values()), settings.torch_dtype))
    gsum, used, counts = _gradient_pass(passes)
    spectra = finish_first_pass(ctx, gsum, used, counts)
    del gsum  # the summed gradients are not needed past their SVDs
    methods: dict[str, HVPMethod] = {}
    if settings.mode == "full":
        methods = _curvature_pass(passes, spectra, counts)
    else:
        _factor_pass(passes, batch)
    return finish(ctx, spectra, counts, methods, t0)


def finish(ctx: ProbeContext, spectra: dict[str, list[Spectrum]], counts: Counts, methods: dict[str, HVPMethod],
           started: float) -> CurvatureOutput:
    """The second pass's finishing step, then the rows and the profile rows (every mode)."""
    results = finish_second_pass(ctx, spectra, counts)
    out = CurvatureOutput(unsupported=ctx.unsupported)
    for specs in spectra.values():
        for spec in specs:
            out.curvature_rows += _layer_rows(spec, results[spec.layer.name], ctx.settings, counts, out.unsupported)
    out.profile_rows = _profile_rows(ctx.timer, spectra, methods, ctx.settings, ctx.device, time.perf_counter() - started)
    return out


def _gradient_pass(passes: _Passes) -> tuple[dict[str, torch.Tensor], torch.Tensor, Counts]:
    """1. G·N = Σ_j ∇S_j per module (its matrix view, float64), which modules received a gradient,
    and the sample and loss-term counts B, N; the hooks sketch the rows. All summed over ranks."""
    ctx = passes.ctx
    device, timer = ctx.device, ctx.timer
    mods = list(ctx.by_module)
    gsum = {mod: torch.zeros(*matrix_view(passes.weight(mod), None, ctx.modules[mod]).shape,
                             dtype=F64, device=device) for mod in mods}
    used = torch.zeros(len(mods), dtype=F64, device=device)
    count = torch.zeros(2, dtype=F64, device=device)  # [samples B, loss terms N]
    handles = ctx.hooks()
    try:
        for x, y in passes.micro_batches():
            with timer.measure(SHARED, "grad_pass"):
                s = passes.summed_loss(x, y)
                weights = [passes.weight(m) for m in mods]
                grads = torch.autograd.grad(s, weights + passes.outputs(), allow_unused=True)
                for i, (mod, g) in enumerate(zip(mods, grads[: len(mods)], strict=True)):
                    if g is not None:
                        gsum[mod] += matrix_view(g, None, ctx.modules[mod]).to(F64)
                        used[i] = 1.0
            passes.consume(list(grads[len(mods) :]))
            count += torch.tensor([x.shape[0], loss_terms(y)], dtype=F64, device=device)
            del s, grads
    finally:
        _release(handles, ctx)
    with timer.measure(SHARED, "allreduce"):
        all_reduce_sum_([*gsum.values(), used, count] + [t for f in ctx.factors.values() for t in f.sketch_tensors()])
    samples, terms = (float(c) for c in count.tolist())
    if samples <= 0 or terms <= 0:
        raise ValueError("the probe batch is empty")
    return gsum, used, Counts(samples, terms)


def finish_first_pass(ctx: ProbeContext, gsum: dict[str, torch.Tensor], used: torch.Tensor,
                      counts: Counts) -> dict[str, list[Spectrum]]:
    """After the first pass (``gsum``, ``used`` and the factors' first-pass sums already summed
    over ranks): merge each module's sketches and take the SVDs of G = gsum / N on its owner,
    share both with every rank, and hand the directions to the factors. Layers without a
    gradient, or with an exactly zero one, go to ``ctx.unsupported``."""
    _merge_sketches(ctx)
    spectra: dict[str, list[Spectrum]] = {}
    for i, mod in enumerate(ctx.by_module):
        if used[i] == 0:
            ctx.unsupported += [UnsupportedLayer(layer.name, layer.layer_type, "the weight does not reach the loss "
                                                 "(no gradient)") for layer in ctx.by_module[mod]]
            continue
        for layer, spec in zip(ctx.by_module[mod], _module_spectra(ctx, mod, gsum[mod], counts.terms), strict=True):
            if spec is None:
                ctx.unsupported.append(UnsupportedLayer(layer.name, layer.layer_type,
                                                        "the gradient is exactly zero on the probe batch"))
            else:
                spectra.setdefault(mod, []).append(spec)
    dtype = ctx.settings.torch_dtype
    for mod, fac in ctx.factors.items():
        by_layer = {s.layer.name: s for s in spectra.get(mod, [])}
        dirs = []
        for view in fac.views:
            spec = by_layer.get(view.layer.name)
            m, n = view.layer.shape
            dirs.append((spec.u.to(dtype), spec.v.to(dtype)) if spec is not None else
                        (torch.zeros(m, 0, dtype=dtype, device=ctx.device), torch.zeros(n, 0, dtype=dtype, device=ctx.device)))
        fac.set_directions(dirs)
    return spectra


def _term_scale(ctx: ProbeContext, layer: ProbedLayer, terms: float) -> float:
    """S = Σ_r ‖δ_r‖‖a_r‖ / N of a layer (kept rows scaled by R/R′), NaN without hooks."""
    fac = ctx.factors.get(layer.module_name)
    if fac is None:
        return _NAN
    view = next(v for v in fac.views if v.layer is layer)
    rows, kept = (float(c) for c in fac.first_counts.tolist())
    return float(view.norms) * (rows / kept) / terms if kept > 0 else _NAN


def _module_spectra(ctx: ProbeContext, mod: str, gsum: torch.Tensor, terms: float) -> list[Spectrum | None]:
    """The kept triplets of one module's layers, computed by its owner and shared."""
    settings, device = ctx.settings, ctx.device
    layers = ctx.by_module[mod]
    caps = [cap(layer, settings.top_k, settings.gamma_window) for layer in layers]
    packed = [[torch.zeros(3, dtype=F64, device=device), torch.zeros(c, dtype=F64, device=device),
               torch.zeros(layer.shape[0], c, dtype=F64, device=device),
               torch.zeros(layer.shape[1], c, dtype=F64, device=device)] for layer, c in zip(layers, caps, strict=True)]
    if owns(ctx.owners, mod):
        with ctx.timer.measure(mod, "grad_svd"):
            g = gsum / terms
            eps = torch.finfo(settings.torch_dtype).eps
            for layer, (info, sig, u, v) in zip(layers, packed, strict=True):
                scale = _term_scale(ctx, layer, terms)
                s, uu, vv, k, ks = leading_triplets(g[layer.rows[0] : layer.rows[1]], settings.top_k,
                                                    settings.gamma_window, scale, eps)
                info.copy_(torch.tensor([k, ks, scale], dtype=F64))
                sig[: s.numel()], u[:, : uu.shape[1]], v[:, : vv.shape[1]] = s, uu, vv
    with ctx.timer.measure(SHARED, "allreduce"):
        share_({mod: [t for p in packed for t in p]}, ctx.owners)
    out: list[Spectrum | None] = []
    for layer, (info, sig, u, v) in zip(layers, packed, strict=True):
        k, ks = int(info[0]), int(info[1])
        out.append(None if ks == 0 else Spectrum(layer, sig[:ks].clone(), u[:, :k].contiguous(), v[:, :k].contiguous(),
                                                 extra={"term_scale": float(info[2])}))
    return out


def _merge_sketches(ctx: ProbeContext) -> None:
    """Each sketched factor side: the ranks' sketches stacked (one collective per module), merged
    on the module's owner into one basis Q, which every rank then uses (`bench.probes.sketch`)."""
    rank, world = rank_and_world()
    for mod, fac in ctx.factors.items():
        sketched = [s for s in (fac.sketch, *(v.delta for v in fac.views)) if not s.exact]
        if not sketched:
            continue
        stacks = []
        if world > 1:
            with ctx.timer.measure(SHARED, "allreduce"):
                for s in sketched:
                    buf = torch.zeros(world, s.size, s.dim, dtype=F64, device=ctx.device)
                    buf[rank] = s.padded_rows()
                    stacks.append(buf)
                shrink = torch.tensor([s.shrinkage for s in sketched], dtype=F64, device=ctx.device)
                all_reduce_sum_([*stacks, shrink])
        if owns(ctx.owners, mod):
            with ctx.timer.measure(mod, "eigh"):
                for i, s in enumerate(sketched):
                    if world > 1:
                        s.merge(stacks[i].reshape(-1, s.dim), float(shrink[i]))
                    s.freeze()
        else:
            for s in sketched:
                s.set_basis(torch.zeros(s.dim, s.size, dtype=F64, device=ctx.device))
        with ctx.timer.measure(SHARED, "allreduce"):
            share_({mod: [s.basis for s in sketched]}, ctx.owners)  # type: ignore[misc]


def _curvature_pass(passes: _Passes, spectra: dict[str, list[Spectrum]], counts: Counts) -> dict[str, HVPMethod]:
    """2. (mode full) Per block of the h sample one forward and one ``create_graph`` backward, K
    HVPs per layer into the block's row of ``h_blocks``, and the hooks' projections; the rest of
    the batch (when ``h_samples`` is set) gets the projections only. All summed over ranks."""
    ctx = passes.ctx
    timer, settings = ctx.timer, ctx.settings
    methods = {mod: HVPMethod(mod, settings.hvp_method, settings.hvp_batch) for mod in spectra}
    h_part, rest = passes.batch.subset(settings.h_samples)
    n_blocks = len(h_part.blocks(settings.micro_batch_size))
    for spec in (s for specs in spectra.values() for s in specs):
        spec.h_blocks = torch.zeros(n_blocks, spec.k, dtype=F64, device=ctx.device)
    block_terms = torch.zeros(n_blocks, dtype=F64, device=ctx.device)
    handles = ctx.hooks()
    try:
        for b, x, y in h_part.my_blocks(settings.micro_batch_size, ctx.device, settings.torch_dtype):
            graph = _BlockGraph(passes, x, y, list(spectra))
            with timer.measure(SHARED, "hvp_graph"):
                # One forward and one backward for the hooks; with create_graph only when some
                # layer differentiates it (reverse over reverse), the weights' gradients with it.
                graph.build(any(methods[m].needs_graph for m in spectra))
            for mod in spectra:
                with timer.measure(mod, "hvp"), ctx.paused():
                    weight = passes.weight(mod)
                    q = methods[mod].run(_directions(spectra[mod], ctx.modules[mod], weight),
                                         partial(graph.gradient, mod), graph.loss_of(mod), weight)
                offset = 0
                for spec in spectra[mod]:
                    spec.h_blocks[b] += q[offset : offset + spec.k]  # type: ignore[index]
                    offset += spec.k
            passes.consume(graph.output_grads)
            block_terms[b] += loss_terms(y)
            del graph
        _project(passes, rest)
    finally:
        _release(handles, ctx)
    with timer.measure(SHARED, "allreduce"):
        all_reduce_sum_([block_terms] + [s.h_blocks for specs in spectra.values() for s in specs])  # type: ignore[misc]
    counts.h_terms = float(block_terms.sum())
    for spec in (s for specs in spectra.values() for s in specs):
        spec.block_terms = block_terms
    return methods


class _BlockGraph:
    """One block of the HVP pass: its forward and backward (the hooks' output gradients), the
    ``create_graph`` weight gradients the reverse-over-reverse methods differentiate (built at
    once, or on demand after a fallback), and S as a function of one layer's weight (forward
    over reverse)."""

    def __init__(self, passes: _Passes, x: torch.Tensor, y: torch.Tensor, mods: list[str]) -> None:
        self.passes, self.x, self.y, self.mods = passes, x, y, mods
        self.output_grads: list[torch.Tensor | None] = []
        self.grads: dict[str, torch.Tensor | None] | None = None

    def build(self, create_graph: bool) -> None:
        p = self.passes
        s = p.summed_loss(self.x, self.y)
        outs = p.outputs()
        weights = [p.weight(m) for m in self.mods] if create_graph else []
        grads = torch.autograd.grad(s, weights + outs, create_graph=create_graph, allow_unused=True)
        if create_graph:
            self.grads = dict(zip(self.mods, grads[: len(weights)], strict=True))
        self.output_grads = [g.detach() if g is not None else None for g in grads[len(weights) :]]

    def gradient(self, mod: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇_W S with create_graph, W) of one module (the hooks are paused meanwhile)."""
        if self.grads is None:
            p = self.passes
            s = p.summed_loss(self.x, self.y)
            grads = torch.autograd.grad(s, [p.weight(m) for m in self.mods], create_graph=True, allow_unused=True)
            self.grads = dict(zip(self.mods, grads, strict=True))
        grad = self.grads[mod]
        weight = self.passes.weight(mod)
        return (grad if grad is not None else torch.zeros_like(weight)), weight

    def loss_of(self, mod: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """S of this block as a function of ``mod``'s weight, every other tensor a constant."""
        p = self.passes
        name = p.pnames[mod]
        fixed = {k: v.detach() for k, v in p.tensors.items()}

        def loss(w: torch.Tensor) -> torch.Tensor:
            out = functional_call(p.model, {**fixed, name: w}, (self.x,), strict=False, tie_weights=True)
            return loss_terms(self.y) * p.loss_fn(out, self.y)

        return loss



def _release(handles: list, ctx: ProbeContext) -> None:
    """Remove the probe's hooks and drop the activations and output gradients they captured, so
    that nothing of the probe batch outlives a pass (also after a failure inside it)."""
    for h in handles:
        h.remove()
    for f in ctx.factors.values():
        f.inputs.clear()
        f.outputs.clear()

def _project(passes: _Passes, batch: ProbeBatch) -> None:
    """The projections of ``batch`` (this rank's shard): forward, backward to the probed layers'
    outputs only (no weight gradient, no graph kept), hooks."""
    if not passes.ctx.factors or batch.size == 0:
        return
    for x, y in passes.micro_batches(batch):
        with passes.ctx.timer.measure(SHARED, "factor_pass"):
            s = passes.summed_loss(x, y)
            outs = passes.outputs()
            grads = torch.autograd.grad(s, outs, allow_unused=True)
        passes.consume(list(grads))
        del s, grads, outs


def _factor_pass(passes: _Passes, batch: ProbeBatch) -> None:
    """2. (mode kronecker) The projection pass over the whole batch, hooks registered."""
    handles = passes.ctx.hooks()
    try:
        _project(passes, batch)
    finally:
        _release(handles, passes.ctx)


def finish_second_pass(ctx: ProbeContext, spectra: dict[str, list[Spectrum]], counts: Counts
                       ) -> dict[str, dict[str, torch.Tensor]]:
    """3. The second pass's sums over ranks, then per layer on its module's owner: the α
    interval and the Kronecker columns (:data:`LAYER_VALUES`, :data:`KRON_COLUMNS`), shared."""
    with ctx.timer.measure(SHARED, "allreduce"):
        all_reduce_sum_([t for f in ctx.factors.values() for t in f.project_tensors()])
    results: dict[str, dict[str, torch.Tensor]] = {}
    for mod, specs in spectra.items():
        packed = [torch.zeros(len(LAYER_VALUES) + len(KRON_COLUMNS) * s.k, dtype=F64, device=ctx.device)
                  for s in specs]
        if owns(ctx.owners, mod):
            with ctx.timer.measure(mod, "eigh"):
                kron = _kronecker_columns(ctx.factors.get(mod), specs, counts)
                for spec, buf in zip(specs, packed, strict=True):
                    buf.copy_(_pack(spec, kron.get(spec.layer.name), ctx.settings))
        with ctx.timer.measure(SHARED, "allreduce"):
            share_({mod: packed}, ctx.owners)
        for spec, buf in zip(specs, packed, strict=True):
            values = dict(zip(LAYER_VALUES, buf[: len(LAYER_VALUES)], strict=True))
            cols = buf[len(LAYER_VALUES) :].view(len(KRON_COLUMNS), spec.k)
            values.update(zip(KRON_COLUMNS, cols, strict=True))
            results[spec.layer.name] = values
    return results


def _pack(spec: Spectrum, kron: dict[str, torch.Tensor] | None, settings: ProbeSettings) -> torch.Tensor:
    """One layer's shared values: α interval, then the Kronecker scalars and columns (NaN when
    the layer has none)."""
    lo, hi = _NAN, _NAN
    if spec.h_blocks is not None and spec.block_terms is not None and settings.bootstrap > 0:
        lo, hi = alpha_interval(spec.sigma[: spec.k].cpu().numpy(), spec.h_blocks.cpu().numpy(),
                                spec.block_terms.cpu().numpy(), settings.bootstrap, settings.seed)
    k = spec.k
    if kron is None:
        head = [lo, hi, 0.0, *([_NAN] * 4)]
        return torch.tensor(head + [_NAN] * (len(KRON_COLUMNS) * k), dtype=F64)
    head = [lo, hi, 1.0] + [float(kron[c]) for c in ("positions", "grad_check", "lambda_delta_bound", "lambda_A_bound")]
    return torch.cat([torch.tensor(head, dtype=F64), *(kron[c].cpu().to(F64).reshape(k) for c in KRON_COLUMNS)])


def _kronecker_columns(fac: ModuleFactors | None, specs: list[Spectrum], counts: Counts
                       ) -> dict[str, dict[str, torch.Tensor]]:
    """3. The factor spectra of one module and, per Kronecker view (layer name), the columns
    h^kron, ρ^δ, ρ^A, Φ, λ^δ, λ^A, Λ, concentration, positions per sample, the gradient check
    and the eigenvalues' error bounds."""
    kron: dict[str, dict[str, torch.Tensor]] = {}
    if fac is None or not float(fac.counts[1]) > 0:
        return kron
    rows_full, rows_kept = float(fac.counts[0]), float(fac.counts[1])
    lam_a = fac.sketch.eigenvalues() / rows_kept
    by_layer = {s.layer.name: s for s in specs}
    for view in fac.views:
        spec = by_layer.get(view.layer.name)
        if spec is None:
            continue
        k = spec.k
        scale_d = (rows_full / rows_kept) / counts.terms
        lam_d = view.delta.eigenvalues() * scale_d
        qd, qa = view.x2 * scale_d, view.y2 / rows_kept  # type: ignore[operator]
        rho_d, rho_a = _ratio(qd, lam_d[:k]), _ratio(qa, lam_a[:k])
        check = (view.xy * scale_d - spec.sigma[:k]).abs().max() if k else torch.zeros((), dtype=F64)  # type: ignore[operator]
        norm = (view.xy.abs().sum() * scale_d).clamp_min(float(spec.sigma[0]))  # type: ignore[union-attr]
        kron[view.layer.name] = {
            "h_kron": qd * qa, "rho_delta": rho_d, "rho_A": rho_a, "phi": rho_d * rho_a,
            "lambda_delta": lam_d[:k], "lambda_A": lam_a[:k], "lam": lam_d[:k] * lam_a[:k],
            "concentration": _ratio(rows_kept * view.x2y2, view.x2 * view.y2),  # type: ignore[operator]
            "positions": torch.tensor(rows_full / counts.samples), "grad_check": check / norm,
            "lambda_delta_bound": torch.tensor(view.delta.bound * scale_d),
            "lambda_A_bound": torch.tensor(fac.sketch.bound / rows_kept),
        }
    return kron


def _layer_rows(spec: Spectrum, values: dict[str, torch.Tensor], settings: ProbeSettings, counts: Counts,
                unsupported: list[UnsupportedLayer]) -> list[dict[str, Any]]:
    """The rows of one layer, its Kronecker columns dropped (NaN, and the layer reported as
    partially probed) when the hooks' factors disagree with the weight gradient."""
    layer = spec.layer
    tol = 1e-6 if settings.torch_dtype == torch.float64 else 1e-2
    has_kron = float(values["has_kron"]) > 0
    if has_kron and settings.spatial_subsample == 1 and float(values["grad_check"]) > tol:
        unsupported.append(UnsupportedLayer(
            layer.name, layer.layer_type, f"hooks saw inputs/output gradients inconsistent with "
            f"the weight gradient (|δᵀA/N − G| along u_k, v_k is {float(values['grad_check']):.2e} of "
            "its scale): the module changes its input in place or applies its weight outside "
            "the hooked call; Kronecker columns are NaN", partial=True))
        has_kron = False
    if spec.h_blocks is not None:
        h = spec.h_blocks.sum(0) / counts.h_terms
    else:
        h = torch.full((spec.k,), _NAN, dtype=F64)
    per_layer = {
        "samples": counts.samples, "loss_terms": counts.terms, "probe_mode": settings.mode,
        "h_samples": (_NAN if spec.h_blocks is None else
                      float(min(settings.h_samples or counts.samples, counts.samples))),
        "alpha_lo": float(values["alpha_lo"]), "alpha_hi": float(values["alpha_hi"]),
        "term_scale": spec.extra.get("term_scale", _NAN),
        **{c: float(values[c]) if has_kron else _NAN
           for c in ("positions", "grad_check", "lambda_delta_bound", "lambda_A_bound")},
    }
    rows = []
    for i in range(spec.sigma.numel()):
        in_k = i < spec.k
        kron = {c: float(values[c][i]) if (has_kron and in_k) else _NAN for c in KRON_COLUMNS}
        h_i = float(h[i]) if in_k else _NAN
        h_kron = kron["h_kron"]
        rows.append({
            "layer": layer.name, "layer_type": layer.layer_type, "module": layer.module_name,
            "depth": layer.depth, "shape_m": layer.shape[0], "shape_n": layer.shape[1], "k": i + 1,
            "sigma": float(spec.sigma[i]), "h": h_i, **kron,
            "chi": h_i / h_kron if (in_k and h_kron != 0.0 and not math.isnan(h_kron)) else _NAN,
            **per_layer,
        })
    return rows


def _profile_rows(timer: PhaseTimer, spectra: dict[str, list[Spectrum]], methods: dict[str, HVPMethod],
                  settings: ProbeSettings, device: torch.device, wall: float) -> list[dict[str, Any]]:
    """Rows of the ``profile`` table (``op = "curvature_probe"``, columns of
    `bench.results.schema.PROFILE`, ``probe_mode`` the mode): per probed module — q/k/v views
    share their fused module's rows, since one double backward serves all three — phases
    grad_svd, hvp, factor_accumulation, eigh (sketch merges and factor eigenvalues) and their sum
    ``total``; and shared work under layer ``"*"``: order, grad_pass (first pass forward and
    backward), hvp_graph (mode full: second pass forward + create_graph backward), factor_pass
    (second pass forward and backward to the layer outputs), allreduce and ``total`` (wall time
    of the whole probe). ``k`` is the number of directions. A module's phases are timed on its
    owner rank only (zero elsewhere) except factor_accumulation and hvp, which every rank runs."""
    _, world = rank_and_world()
    short = {"float32": "fp32", "float64": "fp64"}[settings.dtype]
    common = {
        "op": "curvature_probe", "status": "ok", "dtype": short, "compute_dtype": short,
        "device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ranks": world, "threads": torch.get_num_threads(), "top_k": settings.top_k,
        "batch_size": settings.batch_size, "micro_batch_size": settings.micro_batch_size,
        "memory_kind": timer.memory_kind, "torch_version": torch.__version__, "probe_mode": settings.mode,
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
            hvp = methods[mod].label if mod in methods else ""
            method = {"hvp": hvp, "grad_svd": "svd", "eigh": "sketch+eigvalsh"}.get(phase, "hooks")
            rows.append({**base, "phase": phase, "method": method, "seconds": sec, "peak_memory_bytes": mem,
                         "compute_dtype": f64.get(phase, short)})
        rows.append({**base, "phase": "total", "method": "", "seconds": total, "peak_memory_bytes": peak})
    base = {**common, "layer": SHARED, "layer_type": "", "shape": "", "shape_m": 0, "shape_n": 0, "k": 0}
    for phase in SHARED_PHASES:
        sec, mem = timer.get(SHARED, phase)
        rows.append({**base, "phase": phase, "method": "", "seconds": sec, "peak_memory_bytes": mem})
    rows.append({**base, "phase": "total", "method": "", "seconds": wall, "peak_memory_bytes": _NAN})
    return rows
