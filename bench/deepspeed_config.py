"""The DeepSpeed configuration of a trial, derived from ``training:`` in the sweep YAML.

The learning-rate schedule is a multiplicative ``LambdaLR`` handed to ``deepspeed.initialize``
(DeepSpeed steps it at each gradient-accumulation boundary) rather than DeepSpeed's
``WarmupLR``/``WarmupDecayLR``: those set one absolute lr for every param group, which would
erase the separate lr of the AdamW group that matrix optimizers carry inside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.config import TrainingConfig


def deepspeed_config(tcfg: TrainingConfig, world_size: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tcfg.micro_batch_size,
        "gradient_accumulation_steps": tcfg.grad_accum,
        "train_batch_size": tcfg.micro_batch_size * tcfg.grad_accum * world_size,
        "zero_optimization": {"stage": tcfg.zero_stage},
        "bf16": {"enabled": tcfg.precision == "bf16"},
        # Off: it prints a timing line on every step. The loop times the all-reduce itself.
        "wall_clock_breakdown": False,
        "steps_per_print": 1 << 30,
    }
    if tcfg.grad_clip is not None:
        cfg["gradient_clipping"] = tcfg.grad_clip
    return cfg


def lr_lambda(tcfg: TrainingConfig) -> Callable[[int], float]:
    """Multiplier of every group's peak lr at optimizer step ``t`` (0-based):
    linear warm-up over ``warmup_steps`` then constant / cosine / linear decay to
    ``min_lr_ratio`` at the last step."""
    sched = tcfg.lr_schedule
    warmup, total, floor = sched.warmup_steps, tcfg.steps, sched.min_lr_ratio

    def factor(t: int) -> float:
        if warmup > 0 and t < warmup:
            return (t + 1) / warmup
        if sched.kind == "constant":
            return 1.0
        span = max(1, total - warmup)
        progress = min(1.0, (t - warmup) / span)
        if sched.kind == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * (1.0 - progress)

    return factor
