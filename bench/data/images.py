"""Turning the image cells of a table into normalized float tensors.

Image columns arrive in several forms depending on how a dataset was written: decoded PIL images
(a `datasets.Image` feature), undecoded ``{"bytes", "path"}`` structs (an encoded image in a
Parquet file written without Hugging Face metadata), or plain nested arrays (H×W, H×W×C, C×H×W,
or a flat square). `ImageTransform` accepts all of them and produces a C×H×W float tensor with a
fixed channel count and size, normalized per channel, so that a batch always stacks.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

#: Per-channel statistics of ImageNet, for ``normalize: imagenet`` (the usual choice for
#: architectures whose defaults were tuned on it).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SINGLE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _open_encoded(cell: dict[str, Any]) -> Any:
    """PIL image from an undecoded ``{"bytes": ..., "path": ...}`` cell."""
    from PIL import Image

    if cell.get("bytes") is not None:
        return Image.open(io.BytesIO(cell["bytes"]))
    if cell.get("path"):
        return Image.open(cell["path"])
    raise ValueError("image cell has neither bytes nor a path")


def _is_pil(x: Any) -> bool:
    return hasattr(x, "mode") and hasattr(x, "convert") and hasattr(x, "size")


def _array_to_chw(arr: np.ndarray) -> np.ndarray:
    """Guess the layout of an array image and return it as C×H×W."""
    if arr.ndim == 1:
        side = int(round(len(arr) ** 0.5))
        if side * side != len(arr):
            raise ValueError(f"a flat image must have a square number of pixels, got {len(arr)}")
        return arr.reshape(1, side, side)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        # Channels-first when the leading axis looks like a channel count and the last does not.
        if arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            return arr
        return np.moveaxis(arr, -1, 0)
    raise ValueError(f"cannot read an image of shape {arr.shape}")


def raw_to_tensor(cell: Any, channels: int | None = None) -> torch.Tensor:
    """Float C×H×W tensor of one image cell; uint8 pixels are scaled to [0, 1].

    With ``channels`` given, grey images are repeated to 3 channels, alpha is dropped and colour
    images are averaged to 1 channel, so that mixed-mode datasets still batch.
    """
    from torchvision.transforms.v2 import functional as F

    if isinstance(cell, dict):
        cell = _open_encoded(cell)
    if _is_pil(cell):
        if channels is None:
            channels = 1 if cell.mode in _SINGLE_CHANNEL_MODES else 3
        cell = cell.convert("L" if channels == 1 else "RGB")
        x = F.pil_to_tensor(cell)
    else:
        arr = _array_to_chw(np.asarray(cell))
        x = torch.from_numpy(np.ascontiguousarray(arr))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if channels is not None and x.shape[0] != channels:
        if x.shape[0] == 4:
            x = x[:3]
        if channels == 3 and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        elif channels == 1 and x.shape[0] == 3:
            x = x.mean(dim=0, keepdim=True)
    return x


def infer_channels(cell: Any) -> int:
    """1 for grey images, 3 otherwise (alpha is dropped)."""
    if isinstance(cell, dict):
        cell = _open_encoded(cell)
    if _is_pil(cell):
        return 1 if cell.mode in _SINGLE_CHANNEL_MODES else 3
    c = _array_to_chw(np.asarray(cell)).shape[0]
    return 3 if c == 4 else c


@dataclass
class ImageTransform:
    """cell → float C×H×W tensor: fixed channels, optional square resize, per-channel normalize."""

    channels: int
    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def unnormalized(self, cell: Any) -> torch.Tensor:
        """The tensor before normalization (what the statistics are estimated on)."""
        from torchvision.transforms.v2 import functional as F

        x = raw_to_tensor(cell, self.channels)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.resize(x, [self.size, self.size], antialias=True)
        return x

    def __call__(self, cell: Any) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        x = self.unnormalized(cell)
        if self.mean is not None and self.std is not None:
            x = F.normalize(x, list(self.mean), list(self.std))
        return x.contiguous()


def channel_stats(
    transform: ImageTransform, cells: Sequence[Any]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over ``cells`` (a sample of the training split)."""
    xs = torch.stack([transform.unnormalized(c) for c in cells])  # N, C, H, W
    mean = xs.mean(dim=(0, 2, 3))
    std = xs.std(dim=(0, 2, 3)).clamp_min(1e-6)  # a constant channel must not divide by zero
    return tuple(mean.tolist()), tuple(std.tolist())


class ImageColumnDataset(Dataset):
    """Rows ``indices`` of a table (anything indexable by int giving a dict) as (image, label).

    Images are decoded and transformed on access, so a large dataset is never held in memory
    as tensors; labels are precomputed integers. ``decodes_on_access`` tells the trial's input
    pipeline to decode ahead of the loop in background workers (`bench.data.loader`).
    """

    decodes_on_access = True

    def __init__(
        self,
        table: Any,
        image_column: str,
        labels: np.ndarray,
        indices: np.ndarray,
        transform: ImageTransform,
    ) -> None:
        if len(labels) != len(indices):
            raise ValueError(f"{len(labels)} labels for {len(indices)} rows")
        self.table = table
        self.image_column = image_column
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.table[int(self.indices[i])]
        return self.transform(row[self.image_column]), self.labels[i]
