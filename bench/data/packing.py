"""Packing token streams into fixed-length language-model examples.

Documents are concatenated, each followed by the separator id, and the stream is cut into
non-overlapping blocks of ``seq_len + 1`` tokens; an example is ``(block[:-1], block[1:])``, so the
target at position t is the token after input position t. The tail that does not fill a block is
dropped. Held-out splits are whole blocks chosen by a seed, never individual tokens, so no
example straddles two splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.data.splits import random_split


def pack_documents(docs: Iterable[Sequence[int] | np.ndarray], eos_id: int, seq_len: int) -> np.ndarray:
    """Concatenate ``docs`` with ``eos_id`` after each and cut into rows of ``seq_len + 1``.

    Returns an int32 array of shape ``(n_blocks, seq_len + 1)`` (possibly with zero rows).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    sep = np.array([eos_id], dtype=np.int64)
    pieces: list[np.ndarray] = []
    for doc in docs:
        pieces.append(np.asarray(doc, dtype=np.int64))
        pieces.append(sep)
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    width = seq_len + 1
    n_blocks = len(stream) // width
    # int32 halves the memory of int64 and holds any realistic vocabulary.
    return stream[: n_blocks * width].reshape(n_blocks, width).astype(np.int32)


class TokenBlocks(Dataset):
    """Packed blocks as ``(input_ids, next_token_targets)`` pairs of long tensors of length seq_len."""

    def __init__(self, blocks: np.ndarray | torch.Tensor) -> None:
        blocks = torch.as_tensor(blocks)
        if blocks.ndim != 2 or blocks.shape[1] < 2:
            raise ValueError(
                f"blocks must have shape (n, seq_len + 1) with seq_len >= 1, got {tuple(blocks.shape)}"
            )
        self.blocks = blocks

    @property
    def seq_len(self) -> int:
        return int(self.blocks.shape[1]) - 1

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.blocks[i].long()
        return block[:-1], block[1:]


def split_blocks(
    blocks: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[TokenBlocks, TokenBlocks, TokenBlocks]:
    """Assign whole blocks to (train, val, test) by a seeded permutation."""
    train, val, test = random_split(len(blocks), val_fraction, test_fraction, seed)
    return TokenBlocks(blocks[train]), TokenBlocks(blocks[val]), TokenBlocks(blocks[test])
