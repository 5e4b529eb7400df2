"""Atomic Parquet writes of the result tables.

A crash must never leave a half-written file visible: every file is written to a temporary
name in the destination directory and moved into place with ``os.replace`` (atomic on POSIX
filesystems). Only rank 0 calls these functions. A file in the staging tree of an object-store
storage is then uploaded (:func:`bench.results.remote.after_write`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.results import remote
from bench.results.schema import METADATA_KEY, SCHEMA_VERSION, TABLES


def trial_dir(storage: str | os.PathLike, sweep_name: str, trial_id: str) -> Path:
    """Where one trial's files live: ``<storage>/<sweep>/trials/<trial_id>/`` (for an object-store
    URI, in this machine's staging tree: :mod:`bench.results.remote`)."""
    return remote.local_root(storage) / sweep_name / "trials" / trial_id


def to_table(name: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows → Arrow table with the fixed columns of ``TABLES[name]`` first (typed as declared)
    and any extra columns (``config.*``, ``opt_*``) after them, inferred."""
    base = TABLES[name]
    rows = [{**r, "schema_version": SCHEMA_VERSION} for r in rows]
    columns: dict[str, pa.Array] = {}
    for field in base:
        columns[field.name] = pa.array([r.get(field.name) for r in rows], type=field.type)
    extras = sorted({k for r in rows for k in r} - set(base.names))
    for key in extras:
        values = [r.get(key) for r in rows]
        columns[key] = pa.array([_scalar(v) for v in values])
    table = pa.table(columns)
    return table.replace_schema_metadata({METADATA_KEY: str(SCHEMA_VERSION).encode()})


def _scalar(value: Any) -> Any:
    """Parquet columns need one type: nested values are stored as JSON text."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def write_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    remote.after_write(path)
    return path


def write_rows(name: str, rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    return write_atomic(to_table(name, rows), path)


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a per-trial file written by :func:`write_rows` (empty when it does not exist),
    without the ``schema_version`` column, ready to be extended and written again."""
    path = Path(path)
    if not path.is_file():
        return []
    return pq.read_table(path).drop_columns(["schema_version"]).to_pylist()


def flatten(prefix: str, value: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (``config.training.steps``); lists become JSON."""
    out = {} if out is None else out
    if isinstance(value, Mapping):
        for key, sub in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = _scalar(value)
    return out


def write_atomic_text(text: str, path: str | os.PathLike) -> Path:
    """Atomically replace a small text file (JSON sidecars such as ``sweep.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    remote.after_write(path)
    return path
