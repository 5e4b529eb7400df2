"""Seed derivation: one root seed determines every trial, rank and data-stream seed.

Seeds are derived by hashing the parent seed with a purpose label (as numpy's SeedSequence
spawns children), so adding an optimizer to a sweep never shifts the seeds of the others, and
seed index ``i`` gives every optimizer the same initial weights and data order (paired
comparisons).
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive_seed(parent: int, *labels: object) -> int:
    """A 63-bit child seed of ``parent`` for the purpose named by ``labels``."""
    text = ":".join([str(parent), *map(str, labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def trial_seed(sweep_seed: int, seed_index: int) -> int:
    """Seed of every trial with this seed index (shared across optimizers and settings)."""
    return derive_seed(sweep_seed, "trial", seed_index)


def model_init_seed(seed: int) -> int:
    """Seed of the model's initial weights: identical on every rank."""
    return derive_seed(seed, "model-init")


def data_seed(seed: int) -> int:
    """Seed of the data stream (splits and shuffling order): identical on every rank, so the
    ranks partition one global order."""
    return derive_seed(seed, "data")


def rank_seed(seed: int, rank: int) -> int:
    """Seed of per-rank randomness (dropout, augmentation)."""
    return derive_seed(seed, "rank", rank)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    import torch  # here only: the derivations above are read where torch is not needed (the CLI's checks)

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
