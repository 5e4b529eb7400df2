"""A dataset plug-in: ``factory(seed, **dataset_args) -> bench.data.DataBundle``.

``stripes``: 1 × s × s grey images of a sinusoidal grating in one of four orientations (0°, 45°,
90°, 135°; the class) with random phase and frequency, plus Gaussian pixel noise. Synthetic, so
it needs no download; generated from ``seed`` (the trial's data seed), so every rank and every
attempt sees the same examples.
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated

import torch
from pydantic import Field
from torch.utils.data import TensorDataset

from bench.data import DataBundle, TaskInfo

ORIENTATIONS = (0.0, 45.0, 90.0, 135.0)


def stripes(
    seed: int,
    size: Annotated[int, Field(ge=40, description="examples in all three splits together")] = 1200,
    image_size: Annotated[int, Field(ge=4, le=64, description="side of the square images")] = 8,
    noise: Annotated[float, Field(ge=0, description="standard deviation of the pixel noise")] = 0.5,
) -> DataBundle:
    """Four-way orientation classification; 70 % train, 15 % validation, 15 % test."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(ORIENTATIONS), (size,), generator=gen)
    theta = torch.tensor(ORIENTATIONS)[labels] * math.pi / 180
    freq = 0.6 + 0.6 * torch.rand(size, generator=gen)
    phase = 2 * math.pi * torch.rand(size, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
    proj = xs * torch.cos(theta)[:, None, None] + ys * torch.sin(theta)[:, None, None]
    images = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    images = (images + noise * torch.randn(images.shape, generator=gen)).unsqueeze(1).float()
    n_val = n_test = int(0.15 * size)
    n_train = size - n_val - n_test
    splits = [TensorDataset(images[a:b], labels[a:b])
              for a, b in ((0, n_train), (n_train, n_train + n_val), (n_train + n_val, size))]
    task = TaskInfo(kind="classification", num_classes=len(ORIENTATIONS), input_shape=(1, image_size, image_size))
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    return DataBundle(task, *splits, fingerprint=digest, meta={"generator": "stripes", "size": size})
