"""One whole ``optimizer.step()`` of every optimizer on a catalogue model: ``op = optimizer_step``.

What training runs: each optimizer is built by ``optimizers.build(name, model, **settings)`` on a
real instance of the model (:func:`bench.profile.shapes.build_model`: timm's ResNet / ViT, or
GPT-2 transformer blocks), with fixed random gradients, and ``step()`` is timed whole — the
matrix work (Spectral Newton's route, Muon's Newton–Schulz, Shampoo's roots, SOAP's eigenbases)
and the AdamW side-car on biases, norms, embeddings and the head alike.

Every optimizer steps its own copy of the model (same seed, so the same initial weights); the
steps are *interleaved* — one step of every optimizer per round — so that load changes on a
shared machine hit all of them alike, and each is reported as the median over rounds after
``warmup`` untimed ones, divided by the baseline's (AdamW's) median of the same job
(``ratio_to_baseline``) and by the reference's (Muon's, ``ratio_to_reference``).

Shampoo and SOAP do periodic work (inverse roots / eigenbasis refresh) every F steps (default
10). To measure it without running 10 steps per sample they run here with F = 2, so regular and
refresh steps alternate, and ``seconds`` is the amortised cost at the configured (or default) F,
((F − 1)·regular + refresh)/F, with both parts in ``regular_step_s`` / ``refresh_step_s``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.profile.config import OptimizerStepConfig, StepOptimizer
from bench.profile.kernels import quantile
from bench.timing import synchronize

#: Optimizers with periodic work: the setting that sets their period.
PERIODIC: dict[str, str] = {"shampoo": "preconditioning_frequency", "soap": "precondition_frequency"}
#: The period they run with here (refresh every other step).
MEASURED_PERIOD = 2


def set_gradients(model: torch.nn.Module, seed: int) -> None:
    """Fixed gradients 10⁻³·N(0, 1), the same for every copy of the model."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = (1e-3 * torch.randn(p.shape, generator=gen)).to(p.device)


def method_of(entry: StepOptimizer) -> str | None:
    """The per-matrix method in the profiler's vocabulary: Spectral Newton's route, Muon's ``ns5``."""
    import optimizers

    settings = optimizers.settings_model(entry.name).model_validate(entry.settings)
    if entry.name == "spectral_newton":
        return str(settings.method)
    if entry.name == "muon":
        return f"ns{settings.ns_steps}"
    return None


def _period(entry: StepOptimizer) -> int | None:
    """The period an amortised step is reported at (the entry's setting, else the default)."""
    import optimizers

    key = PERIODIC.get(entry.name)
    if key is None:
        return None
    return int(getattr(optimizers.settings_model(entry.name).model_validate(entry.settings), key))


def measure_optimizer_steps(
    model_name: str,
    cfg: OptimizerStepConfig,
    device: torch.device,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time ``cfg.repeats`` steps of every optimizer of ``cfg`` on ``model_name``, interleaved;
    one row per optimizer (see the module docstring)."""
    import optimizers
    from bench.profile.shapes import GPT2_MODELS, build_model
    from optimizers.param_groups import MATRIX, assign_parameters

    entries = []
    for entry in cfg.optimizers:
        torch.manual_seed(seed)  # every optimizer starts from the same weights
        model = build_model(model_name, "cpu", cfg.blocks, cfg.dim).to(device)
        set_gradients(model, seed + 1)
        settings = dict(entry.settings)
        if entry.name in PERIODIC:
            settings[PERIODIC[entry.name]] = MEASURED_PERIOD
        entries.append((entry, model, optimizers.build(entry.name, model, **settings)))
    samples: dict[str, list[tuple[int, float]]] = {e.display(): [] for e, _, _ in entries}
    for step in range(cfg.warmup + cfg.repeats):
        for entry, _, opt in entries:  # interleaved: every optimizer sees the same machine load
            synchronize(device)
            t0 = time.perf_counter()
            opt.step()
            synchronize(device)
            if step >= cfg.warmup:
                samples[entry.display()].append((step, time.perf_counter() - t0))
        if log:
            log(f"  {model_name}: step {step + 1}/{cfg.warmup + cfg.repeats}")
    model = entries[0][1]
    groups = assign_parameters(model)
    common = {
        "op": "optimizer_step", "phase": "step", "model": model_name, "shape_set": model_name,
        "blocks": cfg.blocks if model_name in GPT2_MODELS else None,
        "dim": cfg.dim if model_name in GPT2_MODELS else None,
        "count": sum(p.numel() for p in model.parameters()), "matrices": sum(g == MATRIX for g in groups.values()),
        "dtype": "fp32", "device": device.type,
        "threads": torch.get_num_threads(), "repeats": cfg.repeats, "warmup": cfg.warmup, "batch": 1,
        "status": "ok", "baseline": cfg.baseline, "reference": cfg.reference,
    }  # fmt: skip
    rows = [{**common, **_summary(entry, samples[entry.display()])} for entry, _, _ in entries]
    by_label = {r["label"]: r["seconds"] for r in rows}
    for r in rows:
        r["ratio_to_baseline"] = r["seconds"] / by_label[cfg.baseline]
        if cfg.reference is not None:
            r["ratio_to_reference"] = r["seconds"] / by_label[cfg.reference]
    return rows


def _summary(entry: StepOptimizer, samples: list[tuple[int, float]]) -> dict[str, Any]:
    """Median, spread and, for periodic optimizers, the amortised step at their period."""
    values = sorted(t for _, t in samples)
    row: dict[str, Any] = {
        "optimizer": entry.name, "label": entry.display(), "method": method_of(entry),
        "seconds": statistics.median(values), "seconds_min": values[0], "seconds_p25": quantile(values, 0.25),
        "seconds_p75": quantile(values, 0.75),
    }  # fmt: skip
    period = _period(entry)
    if period is not None:
        # Steps alternate regular and refresh (period 2): the slower parity is the refresh.
        by_parity = [statistics.median(t for s, t in samples if s % 2 == k) for k in (0, 1)]
        regular, refresh = min(by_parity), max(by_parity)
        row.update(seconds=((period - 1) * regular + refresh) / period, regular_step_s=regular,
                   refresh_step_s=refresh, period=period)
    return row
