"""Packing token streams into fixed-length language-model examples.

A split of a corpus is one *token stream*: its documents concatenated, each followed by the
separator id. Block ``b`` of width ``W = seq_len + 1`` is the window ``[b·W, (b+1)·W)`` of the
stream; an example is ``(block[:-1], block[1:])``, so the target at position t is the token after
input position t. The tail that does not fill a block is dropped. Held-out splits are whole
blocks chosen by a seed (`bench.data.splits.random_split`), never individual tokens, so no
example straddles two splits.

Blocks are *views*: nothing is copied when a stream is cut or split, and the same stream serves
every ``seq_len``. That is what lets a tokenized corpus live once on disk as read-only
memory-mapped parts (`bench.data.cache`) and be shared by every trial and rank, while a corpus
tokenized in memory goes through exactly the same windows (same examples, same order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.data.splits import random_split


class TokenStream:
    """One token stream held in consecutive parts: in-memory arrays, or read-only memory maps of
    a cache's part files. Reading a window never loads more than the window."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.ends = np.cumsum([len(p) for p in self.parts], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` (a copy; may span parts)."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) outside a stream of {len(self)} tokens")
        out = []
        i = int(np.searchsorted(self.ends, start, side="right"))
        while length > 0:
            begin = start - (int(self.ends[i - 1]) if i else 0)
            piece = self.parts[i][begin : begin + length]
            out.append(np.asarray(piece))
            start += len(piece)
            length -= len(piece)
            i += 1
        return out[0].copy() if len(out) == 1 else np.concatenate(out)


class TokenBlocks(Dataset):
    """Blocks of a stream as ``(input_ids, next_token_targets)`` pairs of long tensors of length
    ``seq_len``: item ``i`` is block ``indices[i]`` (every block in order when ``indices`` is None)."""

    def __init__(self, stream: TokenStream, seq_len: int, indices: np.ndarray | None = None) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.stream = stream
        self.seq_len = int(seq_len)
        n = num_blocks(stream, seq_len)
        self.indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise IndexError(f"block indices outside 0..{n - 1}")

    def __len__(self) -> int:
        return len(self.indices)

    def block(self, i: int) -> torch.Tensor:
        """Item ``i``'s whole block (``seq_len + 1`` ids) as a long tensor."""
        width = self.seq_len + 1
        return torch.from_numpy(self.stream.read(int(self.indices[i]) * width, width).astype(np.int64))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.block(i)
        return block[:-1], block[1:]


def num_blocks(stream: TokenStream, seq_len: int) -> int:
    """Whole blocks of ``seq_len + 1`` tokens in ``stream`` (the tail is dropped)."""
    return len(stream) // (seq_len + 1)


def split_streams(
    train: TokenStream, val: TokenStream | None, test: TokenStream | None, seq_len: int,
    val_fraction: float, test_fraction: float, seed: int,
) -> tuple[TokenBlocks, TokenBlocks, TokenBlocks]:
    """(train, val, test) blocks: a source's own held-out streams are used whole; a missing one is
    carved out of the training blocks by a seeded permutation (``random_split``), so every seed
    index of a sweep has its own held-out blocks while all of them read one stream."""
    if val is not None and test is not None:
        return TokenBlocks(train, seq_len), TokenBlocks(val, seq_len), TokenBlocks(test, seq_len)
    keep, carved_val, carved_test = random_split(
        num_blocks(train, seq_len), val_fraction if val is None else 0.0, test_fraction if test is None else 0.0, seed
    )
    return (
        TokenBlocks(train, seq_len, keep),
        TokenBlocks(train, seq_len, carved_val) if val is None else TokenBlocks(val, seq_len),
        TokenBlocks(train, seq_len, carved_test) if test is None else TokenBlocks(test, seq_len),
    )
