"""The curvature probe's entry point: `run_probe` (docs/science/quantities.md quantities for every layer).

    from bench.probes import ProbeSettings, run_probe
    result = run_probe(engine.module, workload.loss, workload.split("train"),
                       ProbeSettings(batch_size=2048), device)
    result.curvature_rows   # → `curvature` table (add trial_id, step)
    result.profile_rows     # → `profile` table (add trial_id, step)
    result.unsupported      # layers not (fully) probed, with reasons

Every rank of an initialised process group must call `run_probe` at the same point with the same
arguments; each processes its share of the probe batch and all get the same (global) rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset

from bench.batching import fetch
from bench.probes.curvature import SHARED, LossFn, measure_curvature, probe_tensors
from bench.probes.layers import UnsupportedLayer, filter_layers, order_by_forward, select_layers
from bench.probes.phase_timer import PhaseTimer
from bench.probes.probe_batch import ProbeBatch
from bench.probes.settings import ProbeSettings

__all__ = ["ProbeResult", "ProbeSettings", "eval_mode", "exact_float32", "run_probe"]


@dataclass
class ProbeResult:
    """What one probe produced (identical on every rank).

    Attributes:
        curvature_rows: one dict per (layer, k) with the columns of
            `bench.probes.curvature.CURVATURE_COLUMNS`, values float64 (ints for shape/k/depth).
        profile_rows: per probed module and phase (grad_svd, hvp, factor_accumulation, eigh, total),
            plus shared phases under layer ``"*"`` (order, grad_pass, hvp_graph, allreduce, total).
        unsupported: weight-bearing modules not probed (``partial=False``) or probed without
            Kronecker quantities (``partial=True``), each with a reason.
    """

    curvature_rows: list[dict[str, Any]] = field(default_factory=list)
    profile_rows: list[dict[str, Any]] = field(default_factory=list)
    unsupported: list[UnsupportedLayer] = field(default_factory=list)

    def unsupported_rows(self) -> list[dict[str, Any]]:
        """``unsupported`` as plain dicts (name, layer_type, reason, partial)."""
        return [vars(u).copy() for u in self.unsupported]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode (BatchNorm uses running statistics, dropout is off: the
    probed loss is a deterministic function of the weights), then restore each module's own
    ``training`` flag, which ``model.train(flag)`` alone would not do for mixed states."""
    flags = {mod: mod.training for mod in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for mod, flag in flags.items():
            mod.training = flag


@contextmanager
def exact_float32() -> Iterator[None]:
    """Turn off TF32 for the probe's matrix products and convolutions, then restore the flags.

    cuDNN convolutions default to TF32 on Ampere and later GPUs (10-bit mantissa), which made a
    float32 probe's conv gradients and HVPs disagree with its exact float32 factor products by
    up to 1e-3 relative (measured on an H200); the probe is a measurement and should be as exact
    as its dtype says. No effect on CPU.
    """
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def run_probe(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset | ProbeBatch,
    settings: ProbeSettings | None = None,
    device: torch.device | str | None = None,
) -> ProbeResult:
    """Measure the docs/science/quantities.md quantities of every probeable layer of ``model``.

    Args:
        model: the bare module (for DeepSpeed, ``engine.module``), on ``device``. It is not
            modified: parameters are read through ``torch.func.functional_call``, ``.grad`` is not
            touched, and train/eval flags are restored.
        loss_fn: ``(output, target) -> scalar``, the **mean** of the loss over the elements of
            ``target`` (one term per class label, or per next token): a workload's
            ``Workload.loss`` (`bench.workload`; see `bench.probes.curvature.loss_terms`).
        dataset: a split without random augmentation (the probe batch is drawn from it with
            ``settings.seed``), or a ready `ProbeBatch`.
        settings: `ProbeSettings` (defaults when None).
        device: where the micro-batches go (default: the device of the model's first parameter).
    """
    settings = settings or ProbeSettings()
    started = time.perf_counter()
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    batch = dataset if isinstance(dataset, ProbeBatch) else ProbeBatch.from_dataset(
        dataset, settings.batch_size, settings.seed)
    timer = PhaseTimer(device)
    with eval_mode(model), exact_float32():
        selection = select_layers(model, settings.max_factor_dim)
        with timer.measure(SHARED, "order"):
            # Forward order (depth) from one sample, the same on every rank: cheap and collective-free.
            x0, _ = fetch(batch.dataset, [batch.indices[0]])
            if x0.is_floating_point():
                x0 = x0.to(settings.torch_dtype)
            tensors = probe_tensors(model, set(), settings.torch_dtype)
            selection = order_by_forward(
                model, selection, lambda: functional_call(model, tensors, (x0.to(device),), strict=False))
        selection = filter_layers(selection, settings.layers, settings.max_layers)
        out = measure_curvature(model, loss_fn, batch, selection, settings, device, timer, started)
    return ProbeResult(out.curvature_rows, out.profile_rows, selection.unsupported + out.unsupported)
