"""The DeepSpeed configuration of a trial, derived from ``training:`` in the sweep YAML.

The learning-rate schedule is a multiplicative ``LambdaLR`` handed to ``deepspeed.initialize``
(DeepSpeed steps it at each gradient-accumulation boundary) rather than DeepSpeed's
``WarmupLR``/``WarmupDecayLR``: those set one absolute lr for every param group, which would
erase the separate lr of the AdamW group that matrix optimizers carry inside them.

The ZeRO settings a given optimizer needs (a matrix optimizer at ZeRO ≥ 1: one ZeRO-3 sub-group per
param group and DeepSpeed's permission for a client optimizer it does not know; DeepSpeed's Muon at
ZeRO-3: no reduce-scatter) come from `optimizers.deepspeed_zero.zero_config`, which owns what the
suite knows about DeepSpeed's internals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.config import TrainingConfig
from optimizers.deepspeed_zero import zero_config


def deepspeed_config(tcfg: TrainingConfig, world_size: int, optimizer: str = "adamw") -> dict[str, Any]:
    """The DeepSpeed config of a trial of ``optimizer`` (a registry name) on ``world_size`` ranks."""
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
    # Always written: DeepSpeed's own default is 1.0, so leaving the key out for "no clipping"
    # would clip at 1.0.
    cfg["gradient_clipping"] = tcfg.grad_clip if tcfg.grad_clip is not None else 0.0
    extra = zero_config(optimizer, tcfg.zero_stage)
    cfg["zero_optimization"].update(extra.pop("zero_optimization", {}))
    cfg.update(extra)
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
