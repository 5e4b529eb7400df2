"""``builtin:text`` — a byte-level language-modelling corpus that exists on every Python install.

The documents are the source files of Python's own standard library (code, comments and
docstrings: real, varied text), read in sorted file-name order from
``sysconfig.get_paths()["stdlib"]`` until ``max_bytes`` are collected. No download, no fixture.
The corpus depends on the Python version, so the bundle records its sha256 as ``fingerprint``
and results can tell which corpus a run used. With a token cache (`bench.data.cache`) the stream
is written once and memory-mapped by every trial.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.data.argcheck import int_problems
from bench.data.corpus import ListRows, tokenize_splits
from bench.data.packing import num_blocks, split_streams
from bench.data.splits import fraction_problems
from bench.data.task import DataBundle, TaskInfo
from bench.data.tokenizer import ByteTokenizer
from bench.problems import shown

if TYPE_CHECKING:
    from bench.data.cache import TokenCache

__all__ = ["ByteTokenizer", "check_name", "load", "read_stdlib_corpus", "validate_args"]

#: Takes the trial's token cache (bench.data.registry).
TOKENIZES = True

NAMES = ("text",)

ALLOWED_ARGS: dict[str, str] = {
    "seq_len": "tokens per example (default 64)",
    "max_bytes": "corpus size cap in bytes (default 2000000)",
    "val_fraction": "share of blocks held out for validation (default 0.05)",
    "test_fraction": "share of blocks held out for the final test (default 0.05)",
}

DEFAULTS: dict[str, Any] = {
    "seq_len": 64,
    "max_bytes": 2_000_000,
    "val_fraction": 0.05,
    "test_fraction": 0.05,
}


def check_name(name: str) -> str | None:
    """Problem with the part after ``builtin:``, or None."""
    if name not in NAMES:
        return f"unknown builtin dataset {shown(name)}; available: {', '.join(NAMES)}"
    return None


def validate_args(args: dict[str, Any]) -> list[str]:
    """Problems with argument values (names are checked by the registry)."""
    opts = {**DEFAULTS, **args}
    return (
        int_problems("seq_len", opts["seq_len"])
        + int_problems("max_bytes", opts["max_bytes"])
        + fraction_problems(opts["val_fraction"], opts["test_fraction"])
    )


def read_stdlib_corpus(max_bytes: int) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of the standard library's top-level ``*.py`` files, in sorted order,
    capped at ``max_bytes`` in total (the last file is cut to fit).

    Raw bytes, not decoded text: the byte tokenizer needs nothing more, and a file in an unusual
    encoding cannot break the loader.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    docs: list[tuple[str, bytes]] = []
    budget = max_bytes
    for path in files:
        if budget <= 0:
            break
        data = path.read_bytes()[:budget]
        if data:
            docs.append((path.name, data))
            budget -= len(data)
    if not docs:
        raise RuntimeError(
            f"builtin:text found no Python source files under {root}; this Python install ships "
            "its standard library without sources (use a local text file dataset instead)"
        )
    return docs


def _source_sha256(files: list[tuple[str, bytes]]) -> str:
    """sha256 of the selected files (names and bytes): the corpus's identity for the token cache,
    known before anything is tokenized."""
    h = hashlib.sha256()
    for name, data in files:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def load(name: str, args: dict[str, Any], seed: int, cache: TokenCache | None = None) -> DataBundle:
    """Build the corpus, tokenize it (once, into ``cache``, when given), cut it into
    ``seq_len + 1`` blocks and split whole blocks by ``seed``."""
    problem = check_name(name) or "; ".join(validate_args(args))
    if problem:
        raise ValueError(f"dataset 'builtin:{name}': {problem}")
    opts = {**DEFAULTS, **args}
    seq_len = int(opts["seq_len"])

    tok = ByteTokenizer()
    files = read_stdlib_corpus(int(opts["max_bytes"]))
    meta = {
        "source": "python stdlib sources",
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "files": len(files),
        "bytes": sum(len(data) for _, data in files),
    }
    fields = {"source": {"builtin": name, "sha256": _source_sha256(files)}, "tokenizer": tok.identity(),
              "rows": {"max_bytes": int(opts["max_bytes"])}}
    corpus = tokenize_splits({"train": ListRows([data for _, data in files])}, "byte", None, cache, fields, meta,
                             digests=True)
    stream = corpus.streams["train"]
    if num_blocks(stream, seq_len) < 3:
        raise ValueError(
            f"dataset 'builtin:{name}': max_bytes={opts['max_bytes']} gives only {num_blocks(stream, seq_len)} "
            f"blocks of {seq_len + 1} tokens; raise max_bytes or lower seq_len"
        )
    train, val, test = split_streams(stream, None, None, seq_len, float(opts["val_fraction"]),
                                     float(opts["test_fraction"]), seed)
    task = TaskInfo(kind="lm", vocab_size=tok.vocab_size, seq_len=seq_len, eos_token_id=tok.eos_id)
    # The fingerprint is the sha256 of the token stream (uint16, each document followed by the
    # separator), the same whether it was tokenized in memory or read from the cache.
    return DataBundle(task, train, val, test, fingerprint=corpus.digests["train"],
                      meta={**meta, "tokens": len(stream)}, cache_key=corpus.key)
