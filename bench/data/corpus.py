"""Tokenizing the rows of a text split into a token stream: in memory, or shard by shard into
part files, in parallel processes.

The rule is the same either way, so a corpus tokenized into the cache and one tokenized in
memory give the same stream (`bench.data.packing`):

1. rows are read in order; empty (or missing) texts are skipped;
2. with ``max_bytes``, rows are kept while the UTF-8 bytes kept *before* them are below the cap
   (the row that crosses it is kept whole);
3. each kept text is tokenized without special tokens and followed by the separator id.

For the cache, the kept rows are cut into contiguous shards of about ``shard_bytes`` of text;
each shard is tokenized by one worker process (``concurrent.futures`` over a spawn context)
that streams its ids into its own part file, batch by batch, so no process ever holds more than
one batch of rows and a corpus larger than memory is tokenized on a machine of any size. The
parts, in shard order, are the stream. Written by hand: ``datasets.Dataset.map(num_proc=…)``
tokenizes in parallel too, but it writes Arrow list columns into the library's own node-local
cache, which would still have to be copied into flat token files on the sweep's storage.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bench.data.packing import TokenStream
from bench.data.tokenizer import load_tokenizer, token_dtype

if TYPE_CHECKING:
    from bench.data.cache import CachedCorpus, TokenCache

#: Rows tokenized per call of the tokenizer (and the most rows a worker holds at once).
BATCH_ROWS = 1000
#: Text per shard (one part file, one task of the worker pool) unless the cache says otherwise.
SHARD_BYTES = 64 << 20


class TextRows(Protocol):
    """The rows of one split: texts by position and their UTF-8 sizes (picklable: shards are
    tokenized in other processes)."""

    def __len__(self) -> int: ...

    def texts(self, start: int, stop: int) -> Sequence[str | bytes | None]: ...

    def byte_lengths(self) -> np.ndarray: ...


@dataclass(frozen=True)
class ListRows:
    """Documents held in memory (the built-in corpus: raw bytes of files)."""

    docs: Sequence[str | bytes]

    def __len__(self) -> int:
        return len(self.docs)

    def texts(self, start: int, stop: int) -> Sequence[str | bytes]:
        return self.docs[start:stop]

    def byte_lengths(self) -> np.ndarray:
        return np.array([len(d.encode("utf-8") if isinstance(d, str) else d) for d in self.docs], dtype=np.int64)


@dataclass(frozen=True)
class ArrowRows:
    """A text column of a `datasets.Dataset` (memory-mapped Arrow: pickling it names its files)."""

    ds: Any
    column: str

    def __len__(self) -> int:
        return len(self.ds)

    def texts(self, start: int, stop: int) -> Sequence[str | None]:
        return self.ds[start:stop][self.column]

    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes per row, computed by Arrow in batches (nothing decoded into Python)."""
        import pyarrow.compute as pc

        out = [np.zeros(0, dtype=np.int64)]
        for batch in self.ds.select_columns([self.column]).with_format("arrow").iter(batch_size=1 << 16):
            out.append(pc.binary_length(batch[self.column]).fill_null(0).to_numpy(zero_copy_only=False))
        return np.concatenate(out).astype(np.int64)


def with_separators(docs: Sequence[Sequence[int] | np.ndarray], eos_id: int, dtype: np.dtype) -> np.ndarray:
    """``docs`` as one stream: each document's ids followed by ``eos_id``, as ``dtype``."""
    pieces: list[np.ndarray] = []
    sep = np.array([eos_id], dtype=dtype)
    for doc in docs:
        pieces += [np.asarray(doc).astype(dtype, copy=False), sep]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def plan_shards(rows: TextRows, max_bytes: int | None, shard_bytes: int) -> list[tuple[int, int]]:
    """Contiguous row ranges ``[start, stop)`` covering the rows kept under ``max_bytes`` (rule 2
    of the module docstring), each holding about ``shard_bytes`` of text."""
    total = np.cumsum(rows.byte_lengths())
    stop = len(total)
    if max_bytes is not None and stop and total[-1] >= max_bytes:
        stop = int(np.searchsorted(total, max_bytes, side="left")) + 1
    if stop == 0:
        return []
    kept = total[stop - 1]
    cuts = np.searchsorted(total[:stop], np.arange(shard_bytes, kept, shard_bytes), side="left") + 1
    bounds = sorted({0, *map(int, cuts), stop})
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def encode_rows(rows: TextRows, start: int, stop: int, tokenizer: str) -> Iterator[tuple[np.ndarray, int]]:
    """(stream piece, documents in it) for rows ``[start, stop)``, ``BATCH_ROWS`` rows at a time."""
    tok = load_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    for a in range(start, stop, BATCH_ROWS):
        texts = [t for t in rows.texts(a, min(a + BATCH_ROWS, stop)) if t]
        if texts:
            yield with_separators(tok.encode_docs(texts), tok.eos_id, dtype), len(texts)


def tokenize_in_memory(rows: TextRows, tokenizer: str, max_bytes: int | None) -> np.ndarray:
    """The whole stream of a split as one array (no cache: every process tokenizes for itself)."""
    dtype = token_dtype(load_tokenizer(tokenizer).vocab_size)
    pieces = [piece for a, b in plan_shards(rows, max_bytes, SHARD_BYTES) for piece, _ in encode_rows(rows, a, b, tokenizer)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def write_shard(rows: TextRows, start: int, stop: int, tokenizer: str, path: str) -> dict[str, Any]:
    """Tokenize rows ``[start, stop)`` into the part file ``path`` (runs in a worker process).

    Returns the part's record: tokens, documents and the sha256 of its bytes.
    """
    digest = hashlib.sha256()
    tokens = documents = 0
    with open(path, "wb") as out:
        for piece, docs in encode_rows(rows, start, stop, tokenizer):
            data = piece.tobytes()
            out.write(data)
            digest.update(data)
            tokens += len(piece)
            documents += docs
        out.flush()
        os.fsync(out.fileno())
    return {"tokens": tokens, "documents": documents, "sha256": digest.hexdigest()}


def _write_shard(task: tuple[TextRows, int, int, str, str]) -> dict[str, Any]:
    return write_shard(*task)


def tokenize_to_parts(rows: TextRows, tokenizer: str, max_bytes: int | None, directory: Path, workers: int,
                      shard_bytes: int = SHARD_BYTES) -> list[dict[str, Any]]:
    """Tokenize a split into ``directory/00000.bin, …`` (one part per shard, in stream order) with
    up to ``workers`` processes; returns the parts' records (``file`` relative to ``directory``'s
    parent, so a manifest can name them)."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(rows, max_bytes, shard_bytes)
    tasks = [(rows, a, b, tokenizer, str(directory / f"{i:05d}.bin")) for i, (a, b) in enumerate(shards)]
    if workers > 1 and len(tasks) > 1:
        # spawn: the caller may be a training rank with threads and a process group of its own.
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=get_context("spawn")) as pool:
            records = list(pool.map(_write_shard, tasks))
    else:
        records = [_write_shard(t) for t in tasks]
    return [{"file": f"{directory.name}/{Path(t[4]).name}", **r} for t, r in zip(tasks, records, strict=True)]


@dataclass
class Tokenized:
    """The token streams of a corpus's splits (``train``, and ``val``/``test`` when the source
    has them), from the cache or from memory."""

    streams: dict[str, TokenStream]
    vocab_size: int
    eos_id: int
    key: str | None = None  # the cache entry, None when tokenized in memory
    meta: dict[str, Any] = field(default_factory=dict)  # what the builder recorded (cache only)
    digests: dict[str, str] = field(default_factory=dict)  # sha256 of each stream, when asked for

    @classmethod
    def from_entry(cls, entry: CachedCorpus) -> Tokenized:
        """The streams of a cache entry, memory-mapped."""
        splits = entry.manifest["splits"]
        return cls({name: entry.stream(name) for name in splits}, entry.manifest["vocab_size"],
                   entry.manifest["eos_id"], entry.key, entry.manifest.get("meta", {}),
                   {name: s.get("sha256", "") for name, s in splits.items()})


def tokenize_splits(splits: Mapping[str, TextRows | None], tokenizer: str, max_bytes: int | None,
                    cache: TokenCache | None, fields: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                    digests: bool = False) -> Tokenized:
    """Tokenize ``splits`` (rows by split name; None: the source lacks it) in this process, or
    through ``cache`` under the entry ``fields`` describe (built once, then memory-mapped).
    ``digests``: also return each stream's sha256 (stored in the entry when it is built)."""
    tok = load_tokenizer(tokenizer)
    present = {name: rows for name, rows in splits.items() if rows is not None}
    if cache is None:
        arrays = {name: tokenize_in_memory(rows, tokenizer, max_bytes) for name, rows in present.items()}
        sums = {name: hashlib.sha256(a.tobytes()).hexdigest() for name, a in arrays.items()} if digests else {}
        return Tokenized({name: TokenStream([a]) for name, a in arrays.items()}, tok.vocab_size, tok.eos_id,
                         digests=sums)

    def build(directory: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, rows in present.items():
            parts = tokenize_to_parts(rows, tokenizer, max_bytes, directory / name, cache.workers, cache.shard_bytes)
            out[name] = {"parts": parts, "tokens": sum(p["tokens"] for p in parts),
                         "documents": sum(p["documents"] for p in parts)}
            if digests:
                out[name]["sha256"] = files_sha256([directory / p["file"] for p in parts])
        return {"splits": out, "dtype": token_dtype(tok.vocab_size).str, "vocab_size": tok.vocab_size,
                "eos_id": tok.eos_id, "meta": dict(meta or {})}

    entry = cache.ensure(fields, build)
    return Tokenized.from_entry(entry)


def files_sha256(paths: Sequence[Path]) -> str:
    """sha256 of the files' bytes in order (a stream stored in parts)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()
