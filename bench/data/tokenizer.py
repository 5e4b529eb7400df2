"""Tokenizers for language-modelling corpora: bytes, or a transformers tokenizer.

`ByteTokenizer` makes every UTF-8 byte a token, plus one document separator. It needs no
vocabulary file and no download, round-trips any text exactly, and keeps the embedding and
output layers small (257 rows), which suits CPU runs and tests. A learned (BPE) tokenizer can be
named instead for hub datasets and local files (`HubTokenizer`, `load_tokenizer`).

Both offer what packing and the token cache need: ``encode_docs`` (one id array per document),
``eos_id``, ``vocab_size`` and ``identity()``, a JSON-able description of everything that decides
the ids (for a transformers tokenizer, a digest of its serialised vocabulary, merges and
normaliser), so that a cached corpus is reused only by the tokenizer that produced it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest little-endian unsigned type holding every id of a vocabulary (uint16 up to
    65 536 ids: GPT-2's 50 257 fit; uint32 above): how token streams are stored."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode_docs(self, texts: Sequence[str | bytes]) -> list[np.ndarray]: ...

    def identity(self) -> dict[str, Any]: ...


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

    def encode_docs(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        """One uint8 id array per document."""
        return [self.encode_array(t) for t in texts]

    def identity(self) -> dict[str, Any]:
        return {"kind": "byte", "vocab_size": self.vocab_size, "eos_id": self.eos_id}

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


class HubTokenizer:
    """A transformers tokenizer (hub name or local directory) behind the same interface."""

    def __init__(self, name: str) -> None:
        from transformers import AutoTokenizer

        self.name = name
        self.tok = AutoTokenizer.from_pretrained(name)
        self.vocab_size = len(self.tok)
        eos = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.sep_token_id
        if eos is None:
            raise ValueError(f"tokenizer {name!r} has neither an eos nor a sep token to separate documents")
        self.eos_id = int(eos)

    def encode_docs(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        # verbose=False: documents longer than the model's max length are fine, they get packed.
        ids = self.tok([t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in texts],
                       add_special_tokens=False, verbose=False)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in ids]

    def identity(self) -> dict[str, Any]:
        """The tokenizer by content, not by name: a local copy of a hub tokenizer shares caches."""
        backend = getattr(self.tok, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else json.dumps(self.tok.get_vocab(), sort_keys=True)
        return {"kind": "transformers", "class": type(self.tok).__name__, "vocab_size": self.vocab_size,
                "eos_id": self.eos_id, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str) -> Tokenizer:
    """``"byte"`` or a transformers tokenizer name / local directory (loaded once per process)."""
    return ByteTokenizer() if name == "byte" else HubTokenizer(name)
