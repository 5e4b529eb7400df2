"""Global batches: ranks partition exactly what one process with the same global batch draws."""

from __future__ import annotations

import math

from bench.batching import GlobalBatchSampler, shard_range
from bench.config import LrSchedule, TrainingConfig
from bench.deepspeed_config import deepspeed_config, lr_lambda


def test_ranks_partition_the_single_process_global_batch():
    n, seed = 103, 7
    single = GlobalBatchSampler(n, seed, micro_batch=8, grad_accum=2, world_size=1, rank=0)
    ranks = [GlobalBatchSampler(n, seed, micro_batch=4, grad_accum=2, world_size=2, rank=r) for r in range(2)]
    for step in range(30):  # crosses several epoch boundaries
        want = sorted(i for m in range(2) for i in single.indices(step, m))
        got = sorted(i for s in ranks for m in range(2) for i in s.indices(step, m))
        assert got == want


def test_each_epoch_is_a_permutation_and_seed_dependent():
    n = 50
    s = GlobalBatchSampler(n, 1, micro_batch=10, grad_accum=1, world_size=1, rank=0)
    epoch0 = [i for step in range(5) for i in s.indices(step, 0)]
    assert sorted(epoch0) == list(range(n))
    other = GlobalBatchSampler(n, 2, micro_batch=10, grad_accum=1, world_size=1, rank=0)
    assert epoch0 != [i for step in range(5) for i in other.indices(step, 0)]


def test_shard_range_covers_everything_once():
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3):
            covered = [i for r in range(world) for i in shard_range(n, world, r)]
            assert covered == list(range(n))


def test_lr_schedule_warmup_then_cosine_to_floor():
    tcfg = TrainingConfig(steps=110, lr_schedule=LrSchedule(kind="cosine", warmup_steps=10, min_lr_ratio=0.1))
    f = lr_lambda(tcfg)
    assert math.isclose(f(0), 0.1) and math.isclose(f(9), 1.0)
    assert math.isclose(f(10), 1.0)
    assert math.isclose(f(60), 0.1 + 0.9 * 0.5)
    assert math.isclose(f(110), 0.1)
    lin = lr_lambda(TrainingConfig(steps=100, lr_schedule=LrSchedule(kind="linear")))
    assert math.isclose(lin(50), 0.5)
    const = lr_lambda(TrainingConfig(steps=100, lr_schedule=LrSchedule(kind="constant", warmup_steps=4)))
    assert math.isclose(const(1), 0.5) and const(50) == 1.0


def test_deepspeed_config_reflects_training_section():
    tcfg = TrainingConfig(micro_batch_size=8, grad_accum=3, zero_stage=1, precision="bf16", grad_clip=None)
    cfg = deepspeed_config(tcfg, world_size=4)
    assert cfg["train_batch_size"] == 8 * 3 * 4
    assert cfg["zero_optimization"]["stage"] == 1
    assert cfg["bf16"]["enabled"] is True
    assert cfg["gradient_clipping"] == 0.0  # written out: DeepSpeed's own default is 1.0
