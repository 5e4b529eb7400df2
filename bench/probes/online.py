"""Mode ``online``: the Kronecker quantities from a training step's own forward and backward.

K-FAC implementations amortise their factors by reading the statistics off the training step's
own passes every N steps instead of running extra batches. `OnlineCapture` does the same for the
probe: armed around one training step (the trial arms it at each scheduled probe step), its
forward hooks keep each probed module's input and register a hook on the output that keeps the
output gradient when the step's backward reaches it; a hook on the loss records the factor c by
which the backward scales it (DeepSpeed divides by the gradient-accumulation steps), so that
δ = g · N_j / c is the gradient of the micro-batch's summed loss terms, as in the offline modes.
Only references are kept during the step (the one copy per layer is the out.clone() that
protects δ from in-place ops downstream); all the work happens afterwards, in :meth:`finish`,
which replays the kept rows through the two stages of `bench.probes.factors`:

1. rows → G·N = Σ_r δ_r a_rᵀ (the step's mean-loss gradient, from the rows: no parameter
   ``.grad`` is read, so it works under every ZeRO stage), S, the sketches;
   `bench.probes.curvature.finish_first_pass` (owner SVDs, sketch merges, K);
2. rows again → projections and Ritz Grams; `bench.probes.curvature.finish`.

Differences from the offline modes, by construction: the statistics are those of the training
micro-batches (this rank's, summed over ranks), taken in the model's training mode (dropout,
BatchNorm batch statistics) at the weights the step's gradient was computed at, i.e. before
that step's update; only layers with a row view (not grouped convolutions) are measured; there
is no exact h_k. Memory: the captured inputs and output gradients of the probed layers for the
step's micro-batches, released by :meth:`finish`. Outside training (``specbench probe``)
:func:`measure_online` runs the same capture over the probe batch, one micro-batch at a time.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from bench.distributed import all_reduce_sum_
from bench.probes.curvature import (
    SHARED,
    Counts,
    CurvatureOutput,
    LossFn,
    ProbeContext,
    finish,
    finish_first_pass,
    loss_terms,
    probe_tensors,
)
from bench.probes.factors import positions_per_sample
from bench.probes.layers import LayerSelection, UnsupportedLayer
from bench.probes.phase_timer import PhaseTimer
from bench.probes.probe_batch import ProbeBatch
from bench.probes.settings import ProbeSettings
from optimizers.layer_types import matrix_view

F64 = torch.float64


class OnlineCapture:
    """The probed modules' inputs and output gradients of one training step (module docstring).

    Usage: ``capture = OnlineCapture(model, selection, settings, device)``; per micro-batch,
    after the forward and before the backward, ``capture.watch(loss, target)``; after the step,
    ``capture.finish()`` (removes the hooks and returns the probe's rows).
    """

    def __init__(self, model: nn.Module, selection: LayerSelection, settings: ProbeSettings,
                 device: torch.device, timer: PhaseTimer | None = None) -> None:
        self.started = time.perf_counter()
        self.settings, self.device = settings, torch.device(device)
        self.timer = timer or PhaseTimer(self.device)
        rowless = [layer for layer in selection.layers if not layer.kronecker]
        self.ctx = ProbeContext.create(model, [la for la in selection.layers if la.kronecker], settings,
                                       self.device, self.timer)
        self.ctx.unsupported += [UnsupportedLayer(layer.name, layer.layer_type, "mode online measures from the "
                                                  f"layer's rows, which it has none of: {layer.note}")
                                 for layer in rowless]
        # Per module: [input, output gradient (None until the backward reaches it), rows, micro-batch].
        self.calls: dict[str, list[list[Any]]] = {mod: [] for mod in self.ctx.factors}
        self.micro: list[list[float]] = []  # per micro-batch: [samples, loss terms N_j, loss scale c]
        self.handles = [self.ctx.modules[mod].register_forward_hook(self._hook(mod)) for mod in self.ctx.factors]

    def _hook(self, mod: str):
        kind = self.ctx.factors[mod].kind

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            if not out.requires_grad:  # an evaluation forward: nothing to capture
                return out
            call = [args[0].detach(), None, positions_per_sample(kind, out) * int(out.shape[0]), len(self.micro)]

            def keep(grad: torch.Tensor) -> None:
                call[1] = grad.detach()

            out.register_hook(keep)
            self.calls[mod].append(call)
            return out.clone()  # as the offline hooks: downstream in-place ops cannot change δ

        return hook

    def watch(self, loss: torch.Tensor, target: torch.Tensor) -> None:
        """Register the micro-batch whose ``loss`` (the mean over ``target``'s terms) is about to
        be back-propagated; the backward's scale c is read off the loss's own gradient."""
        entry = [float(target.shape[0]), float(loss_terms(target)), float("nan")]

        def scale(grad: torch.Tensor) -> None:
            entry[2] = float(grad.detach().float())

        loss.register_hook(scale)
        self.micro.append(entry)

    def remove(self) -> None:
        """Remove the hooks (the capture keeps what it has)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def finish(self) -> CurvatureOutput:
        """Remove the hooks, replay the captured rows through both stages, and return the rows
        of the `curvature` and `profile` tables (every rank must call this together)."""
        self.remove()
        ctx = self.ctx
        try:
            if not ctx.by_module:
                return CurvatureOutput(unsupported=ctx.unsupported)
            gsum, used, counts = self._first_stage()
            spectra = finish_first_pass(ctx, gsum, used, counts)
            del gsum
            self._replay()
            return finish(ctx, spectra, counts, {}, self.started)
        finally:
            self.calls = {mod: [] for mod in ctx.factors}

    def _replay(self) -> None:
        """Feed every captured call to its module's factors (the current stage), as δ rows."""
        dtype = self.settings.torch_dtype
        for mod, fac in self.ctx.factors.items():
            for x, g, rows, micro in self.calls[mod]:
                if g is None:
                    continue
                _, terms, scale = self.micro[micro]
                with self.timer.measure(mod, "factor_accumulation"):
                    x = x.to(dtype) if x.is_floating_point() else x
                    fac.add(x, g.to(dtype) * (terms / scale), rows)

    def _first_stage(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, Counts]:
        """Stage 1 over the captured rows: G·N from the rows, S, sketches; summed over ranks."""
        ctx, device = self.ctx, self.device
        for mod, fac in ctx.factors.items():
            m, n = matrix_view(ctx.modules[mod].weight, None, ctx.modules[mod]).shape
            fac.rows_gradient = torch.zeros(m, n, dtype=F64, device=device)
        self._replay()
        mods = list(ctx.by_module)
        used = torch.tensor([float(any(c[1] is not None for c in self.calls[m])) for m in mods], dtype=F64,
                            device=device)
        count = torch.tensor([sum(e[0] for e in self.micro), sum(e[1] for e in self.micro)], dtype=F64, device=device)
        gsum = {mod: ctx.factors[mod].rows_gradient for mod in mods}
        with self.timer.measure(SHARED, "allreduce"):
            all_reduce_sum_([used, count] + [t for f in ctx.factors.values() for t in f.sketch_tensors()])
        samples, terms = (float(c) for c in count.tolist())
        if samples <= 0 or terms <= 0:
            raise ValueError("the online capture saw no training micro-batch (was watch() called?)")
        return gsum, used, Counts(samples, terms)  # type: ignore[return-value]


def measure_online(model: nn.Module, loss_fn: LossFn, batch: ProbeBatch, selection: LayerSelection,
                   settings: ProbeSettings, device: torch.device, timer: PhaseTimer | None = None) -> CurvatureOutput:
    """Mode ``online`` outside training: the capture over this rank's share of the probe batch,
    one forward and one backward per micro-batch, on probe copies of the parameters as in the
    offline modes (the model and its ``.grad`` are not touched)."""
    from torch.func import functional_call

    capture = OnlineCapture(model, selection, settings, device, timer)
    weights = {layer.param_name for layer in selection.layers}
    tensors = probe_tensors(model, weights, settings.torch_dtype)
    try:
        for x, y in batch.micro_batches(settings.micro_batch_size, device, settings.torch_dtype):
            with capture.timer.measure(SHARED, "grad_pass"):
                loss = loss_fn(functional_call(model, tensors, (x,), strict=False, tie_weights=True), y)
                capture.watch(loss, y)
                torch.autograd.grad(loss, [tensors[w] for w in weights], allow_unused=True)
    finally:
        capture.remove()
    return capture.finish()
