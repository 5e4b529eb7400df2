"""Atomic writes of the result tables: the one place that writes specbench's Parquet files.

A crash must never leave a half-written file visible: every file is written to a temporary
name in the destination directory and moved into place with ``os.replace`` (atomic on POSIX
filesystems), by :func:`replace_atomically`. Tables are typed by their declaration in
:mod:`bench.results.schema` and stamped with its version. A file in the staging tree of an
object-store storage is then uploaded (:func:`bench.results.remote.after_write`).

Trials (rank 0 only), the profiler, and the commands that derive tables from trial files
(``layer_fits``, consolidation, :mod:`bench.results.upgrade`) all write through here.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
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
    """Rows → Arrow table with every column of ``TABLES[name]`` first (typed as declared, null
    where a row has no value) and any extra columns (``config.*``, ``opt_*``) after them,
    inferred. Stamped with :data:`SCHEMA_VERSION` in a column and in the metadata."""
    base = TABLES[name]
    rows = [{**r, "schema_version": SCHEMA_VERSION} for r in rows]
    columns: dict[str, pa.Array] = {}
    for field in base:
        values = [r.get(field.name) for r in rows]
        columns[field.name] = pa.array(_nulls_for_nan(values, field.type), type=field.type)
    extras = sorted({k for r in rows for k in r} - set(base.names))
    for key in extras:
        values = [_scalar(r.get(key)) for r in rows]
        columns[key] = pa.array(_nulls_for_nan(values, None))
    table = pa.table(columns)
    return table.replace_schema_metadata({METADATA_KEY: str(SCHEMA_VERSION).encode()})


def _nulls_for_nan(values: list[Any], dtype: pa.DataType | None) -> list[Any]:
    """NaN is a float: in a column of another type (or of mixed inferred values, as rows coming
    from a DataFrame have) it means "missing" and becomes null. Float columns keep their NaN."""
    if dtype is not None and pa.types.is_floating(dtype):
        return values
    is_nan = [isinstance(v, float) and math.isnan(v) for v in values]
    if not any(is_nan):
        return values
    if dtype is None and all(nan or v is None or isinstance(v, float) for v, nan in zip(values, is_nan, strict=True)):
        return values  # an inferred float column
    return [None if nan else v for v, nan in zip(values, is_nan, strict=True)]


def _scalar(value: Any) -> Any:
    """Parquet columns need one type: nested values are stored as JSON text."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


def replace_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path`` and move it into place; the
    temporary file is removed if ``write`` fails. Uploads the file when it lies in an active
    object-store staging tree."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    remote.after_write(path)
    return path


def write_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write an Arrow table as Parquet, atomically."""
    return replace_atomically(path, lambda tmp: pq.write_table(table, tmp))


def write_rows(name: str, rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows of table ``name`` (:func:`to_table`), atomically."""
    return write_atomic(to_table(name, rows), path)


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a per-trial file written by :func:`write_rows` (empty when it does not exist),
    without the ``schema_version`` column, ready to be extended and written again."""
    path = Path(path)
    if not path.is_file():
        return []
    return pq.read_table(path).drop_columns(["schema_version"]).to_pylist()
def write_frame(name: str, frame: Any, path: str | os.PathLike) -> Path:
    """Write a pandas DataFrame of table ``name`` like :func:`write_rows` (the derived tables:
    ``layer_fits``, consolidated files); pandas' missing values become nulls."""
    return write_rows(name, frame.to_dict("records"), path)


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
    return replace_atomically(path, lambda tmp: Path(tmp).write_text(text))
