"""``sklearn:digits`` — the 1797 handwritten 8×8 digits that ship inside scikit-learn.

The smallest real image dataset available without a network, which makes it the workload of the
quickstart and of CI. Pixels (0..16) are scaled to [0, 1] and then standardized with the training
split's mean and standard deviation, so no statistic of the held-out splits leaks into training.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from bench.data.splits import fraction_problems, stratified_split
from bench.data.task import DataBundle, TaskInfo
from bench.problems import shown

NAMES = ("digits",)

ALLOWED_ARGS: dict[str, str] = {
    "val_fraction": "share of examples held out for validation (default 0.15)",
    "test_fraction": "share of examples held out for the final test (default 0.15)",
}

DEFAULTS: dict[str, Any] = {"val_fraction": 0.15, "test_fraction": 0.15}


def check_name(name: str) -> str | None:
    """Problem with the part after ``sklearn:``, or None."""
    if name not in NAMES:
        return f"unknown sklearn dataset {shown(name)}; available: {', '.join(NAMES)}"
    return None


def validate_args(args: dict[str, Any]) -> list[str]:
    """Problems with argument values (names are checked by the registry)."""
    merged = {**DEFAULTS, **args}
    return fraction_problems(merged["val_fraction"], merged["test_fraction"])


def load(name: str, args: dict[str, Any], seed: int) -> DataBundle:
    """Load the digits, split them by ``seed`` (stratified by class) and standardize."""
    from sklearn.datasets import load_digits  # heavy import, only when this dataset is used

    problem = check_name(name) or "; ".join(validate_args(args))
    if problem:
        raise ValueError(f"dataset 'sklearn:{name}': {problem}")
    opts = {**DEFAULTS, **args}

    raw = load_digits()
    pixels = np.asarray(raw.data, dtype=np.float32) / 16.0  # (1797, 64), values in [0, 1]
    labels = np.asarray(raw.target, dtype=np.int64)
    fingerprint = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()

    train_idx, val_idx, test_idx = stratified_split(
        labels, float(opts["val_fraction"]), float(opts["test_fraction"]), seed
    )
    # One scalar mean/std (the image has one channel); per-pixel statistics would divide by zero
    # at the border pixels that are blank in every training image.
    mean = float(pixels[train_idx].mean())
    std = float(pixels[train_idx].std())
    images = torch.from_numpy((pixels - mean) / std).reshape(-1, 1, 8, 8)
    targets = torch.from_numpy(labels)

    def subset(idx: np.ndarray) -> TensorDataset:
        index = torch.from_numpy(idx)
        return TensorDataset(images[index].clone(), targets[index].clone())

    task = TaskInfo(kind="classification", num_classes=10, input_shape=(1, 8, 8))
    meta = {"source": "sklearn.datasets.load_digits", "normalize_mean": mean, "normalize_std": std}
    return DataBundle(task, subset(train_idx), subset(val_idx), subset(test_idx), fingerprint, meta)
