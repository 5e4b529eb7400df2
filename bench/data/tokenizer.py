"""A byte-level tokenizer: every UTF-8 byte is a token, plus one document separator.

It needs no vocabulary file and no download, round-trips any text exactly, and keeps the
embedding and output layers small (257 rows), which suits CPU runs and tests. A learned (BPE)
tokenizer can be named instead for hub datasets; see `bench.data.hub`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class ByteTokenizer:
    """Token ids 0..255 are the bytes of the UTF-8 encoding; id 256 (`eos_id`) ends a document."""

    vocab_size: int = 257
    eos_id: int = 256

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no separator is added)."""
        return list(text.encode("utf-8"))

    def encode_array(self, data: str | bytes) -> np.ndarray:
        """Like `encode`, as a uint8 array without a Python list in between (fast for corpora)."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        return np.frombuffer(raw, dtype=np.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; separators are dropped.

        Byte sequences that are not valid UTF-8 (a model's samples may contain them) decode to
        U+FFFD rather than raising, so decoding never fails on generated text.
        """
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i <= self.eos_id]
        if bad:
            raise ValueError(f"token ids outside the byte vocabulary 0..{self.eos_id}: {bad[:5]}")
        return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.vocab_size
