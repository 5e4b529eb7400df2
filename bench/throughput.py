"""Throughput and model FLOP utilisation (MFU) of a trial.

MFU = (model FLOPs per second per device) / (the device's peak FLOP/s), with *model* FLOPs those
of one forward and backward pass of the model as written — no activation recomputation, no
optimizer work — the definition of PaLM (Chowdhery et al., 2022, App. B). Instead of the
6·N + 12·L·d·T closed form, which only holds for a standard decoder, the FLOPs are counted once
per trial by ``torch.utils.flop_counter.FlopCounterMode`` on a one-sample forward and backward of
the real model, so convolutions, attention and any architecture are covered by the same rule.

The peak is, in order: the config's ``resources.peak_tflops``; the vendor's dense peak for a
known GPU at the training precision; on CPU (no published number for an arbitrary host) a
float32 matmul rate measured at the start of the trial on the worker's own threads — the
practical ceiling, labelled ``measured-matmul`` so that nobody mistakes it for a datasheet peak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from optimizers.timing import synchronize

#: Dense (no sparsity) peak TFLOP/s by GPU name fragment and precision, from the vendors'
#: datasheets. fp32 means IEEE fp32 on CUDA cores; DeepSpeed's fp32 runs do not enable TF32.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},  # SXM; the PCIe card is lower (756 / 51)
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp32": 91.6},
    "A10": {"bf16": 125.0, "fp32": 31.2},
    "V100": {"bf16": 125.0, "fp32": 15.7},  # V100 has no bf16; 125 is its fp16 tensor-core peak
}


@dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s and where the number comes from."""

    flops_per_s: float
    source: str  # config | datasheet:<GPU> | measured-matmul


def count_train_flops(model: nn.Module, sample: torch.Tensor, loss_fn) -> float:
    """FLOPs of one forward and backward pass on ``sample`` (a batch of one), counted by torch.

    ``loss_fn(output)`` turns the model output into a scalar. Gradients produced here are
    discarded (set to None) so the caller's training starts from untouched parameters.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    was_training = model.training
    # Eval mode: a train-mode forward would update BatchNorm's running statistics with this one
    # sample, changing the model the trial then trains. The matmul/conv FLOPs counted are the same.
    model.eval()
    with counter:
        loss_fn(model(sample)).backward()
    model.train(was_training)
    for p in model.parameters():
        p.grad = None
    return float(counter.get_total_flops())


#: ``Peak.source`` (and ``runs.peak_flops_source``) of a peak timed on the trial's own device.
MEASURED_PEAK = "measured-matmul"


def measure_matmul_peak(device: torch.device, size: int = 1024, repeats: int = 10) -> float:
    """float32 FLOP/s of the fastest of ``repeats`` size×size matmuls after one warm-up call.

    The fastest call, not the median: a peak is what the device can do, and on a shared machine
    the median of a few calls measures the neighbours' load (a median-based peak let MFU exceed
    1 when the trial later ran with the machine to itself).
    """
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = []
    for i in range(repeats + 1):
        synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        if i:  # the first call pays for allocation and library initialisation
            times.append(time.perf_counter() - t0)
    return 2.0 * size**3 / min(times)


def device_peak(device: torch.device, precision: str, override_tflops: float | None = None) -> Peak:
    """The peak FLOP/s MFU is measured against (see the module docstring for the order)."""
    if override_tflops is not None:
        return Peak(override_tflops * 1e12, "config")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_TFLOPS.items():
            if key in name:
                return Peak(peaks[precision] * 1e12, f"datasheet:{key}")
    return Peak(measure_matmul_peak(device), MEASURED_PEAK)


def throughput_columns(
    step_time_s: float, samples_per_step: int, tokens_per_sample: int, flops_per_sample: float,
    world_size: int, peak: Peak | None,
) -> dict[str, float]:
    """The ``steps`` table's throughput columns for a mean step time.

    ``model_flops_per_s`` is per device (the whole step's model FLOPs divided by the ranks), so
    ``mfu`` compares like with like against one device's peak.
    """
    if step_time_s <= 0:
        nan = float("nan")
        return {"samples_per_s": nan, "tokens_per_s": nan, "model_flops_per_s": nan, "mfu": nan}
    per_device = flops_per_sample * samples_per_step / step_time_s / world_size
    return {
        "samples_per_s": samples_per_step / step_time_s,
        "tokens_per_s": samples_per_step * tokens_per_sample / step_time_s if tokens_per_sample else float("nan"),
        "model_flops_per_s": per_device,
        "mfu": per_device / peak.flops_per_s if peak is not None and peak.flops_per_s > 0 else float("nan"),
    }
