"""sklearn:digits: shapes, split sizes, standardization and determinism from the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data import load_dataset
from bench.data.splits import random_split, stratified_split


@pytest.fixture(scope="module")
def bundle():
    return load_dataset("sklearn:digits", {}, seed=0)


def test_task_and_item_shapes(bundle) -> None:
    task = bundle.task
    assert (task.kind, task.num_classes, task.input_shape, task.metric_name) == (
        "classification",
        10,
        (1, 8, 8),
        "accuracy",
    )
    x, y = bundle.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0


def test_split_sizes(bundle) -> None:
    sizes = bundle.sizes()
    assert sum(sizes.values()) == 1797
    # 15 % each, rounded per class: within one example per class of 1797 × 0.15.
    assert abs(sizes["val"] - 1797 * 0.15) <= 10 and abs(sizes["test"] - 1797 * 0.15) <= 10
    for split in (bundle.val, bundle.test):
        assert set(split.tensors[1].tolist()) == set(range(10))  # stratified: every class present


def test_standardized_with_train_statistics(bundle) -> None:
    x = bundle.train.tensors[0]
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert bundle.meta["normalize_std"] > 0


def test_fractions_are_settable() -> None:
    sizes = load_dataset("sklearn:digits", {"val_fraction": 0.1, "test_fraction": 0.2}, seed=0).sizes()
    assert abs(sizes["val"] - 180) <= 10 and abs(sizes["test"] - 359) <= 10


def test_same_seed_same_split_other_seed_other_split(bundle) -> None:
    again = load_dataset("sklearn:digits", {}, seed=0)
    other = load_dataset("sklearn:digits", {}, seed=1)
    assert torch.equal(bundle.test.tensors[0], again.test.tensors[0])
    assert torch.equal(bundle.train.tensors[1], again.train.tensors[1])
    assert bundle.fingerprint == again.fingerprint == other.fingerprint  # same data, different split
    assert not torch.equal(bundle.test.tensors[0], other.test.tensors[0])


def test_splits_are_disjoint_and_cover() -> None:
    labels = np.repeat(np.arange(5), 20)
    for train, val, test in (stratified_split(labels, 0.2, 0.1, 3), random_split(100, 0.2, 0.1, 3)):
        assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
        assert (len(val), len(test)) == (20, 10)
    train, val, test = stratified_split(labels, 0.2, 0.1, 3)
    assert np.bincount(labels[val]).tolist() == [4] * 5


def test_bad_fractions_raise() -> None:
    with pytest.raises(ValueError, match="must leave examples"):
        random_split(10, 0.5, 0.5, 0)
