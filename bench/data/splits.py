"""Deterministic train/val/test splits drawn from a seed.

The same seed gives the same split on every machine and every rank, which is what lets N
data-parallel workers partition one global order without talking to each other. Indices come back
sorted so that a split's storage order does not depend on the permutation (shuffling is the data
loader's job, with its own seed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Split = tuple[np.ndarray, np.ndarray, np.ndarray]


def fraction_problems(val_fraction: object, test_fraction: object) -> list[str]:
    """Human-readable problems with a pair of held-out fractions (empty when valid)."""
    problems = []
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{name} must be a number in [0, 1), got {value!r}")
        elif not 0.0 <= float(value) < 1.0:
            problems.append(f"{name} must be in [0, 1), got {value!r}")
    if not problems and float(val_fraction) + float(test_fraction) >= 1.0:  # type: ignore[arg-type]
        problems.append(
            f"val_fraction + test_fraction must leave examples for training, got {val_fraction} + {test_fraction}"
        )
    return problems


def _validate(val_fraction: float, test_fraction: float) -> None:
    problems = fraction_problems(val_fraction, test_fraction)
    if problems:
        raise ValueError("; ".join(problems))


def random_split(n: int, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Split ``range(n)`` into sorted (train, val, test) index arrays by a seeded permutation.

    The held-out sizes are ``round(n * fraction)``; everything else is training data.
    """
    _validate(val_fraction, test_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    val, test, train = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
    return np.sort(train), np.sort(val), np.sort(test)


def stratified_split(
    labels: Sequence[int] | np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Split example indices so that every class keeps (about) its share in each split.

    Each class is permuted on its own and cut at ``round(n_class * fraction)``, so split sizes
    can differ from ``n * fraction`` by at most about one example per class; a class too small
    to give every split a member keeps its examples in training.
    """
    _validate(val_fraction, test_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    # Classes are visited in sorted order so the draws from ``rng`` are the same for equal inputs.
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val, n_test = round(len(idx) * val_fraction), round(len(idx) * test_fraction)
        if n_val + n_test >= len(idx):
            n_val = n_test = 0
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val : n_val + n_test])
        parts[0].append(idx[n_val + n_test :])
    train, val, test = (np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts)
    return train, val, test
