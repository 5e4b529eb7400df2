"""Rebuild one Parquet file per table from the per-trial files of a sweep.

The per-trial files are the source of truth (append-only per trial, written atomically); the
consolidated files are a convenience for tools that want one file per table, and can be
rebuilt at any time — after a crash, during a sweep, or after trials were added.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.dataset import METADATA_KEY, SCHEMA_VERSION, TRIAL_PATH, find_trial_dirs, load_table

TABLES = ("runs", "steps", "curvature", "layer_fits", "profile")


def consolidate(
    results_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> dict[str, tuple[Path, int]]:
    """Write ``<out_dir>/<table>.parquet`` for every table that has rows; returns
    ``{table: (path, rows)}``. Default ``out_dir``: ``<results>/consolidated``."""
    root = Path(results_path)
    find_trial_dirs(root)  # clear error when there is nothing to consolidate
    out = Path(out_dir) if out_dir is not None else root / "consolidated"
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[Path, int]] = {}
    for table in TABLES:
        frame = load_table(root, table)
        if frame.empty:
            continue
        frame = frame.drop(columns=[TRIAL_PATH], errors="ignore")
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        arrow = arrow.replace_schema_metadata({METADATA_KEY: str(SCHEMA_VERSION).encode()})
        path = out / f"{table}.parquet"
        fd, tmp = tempfile.mkstemp(prefix=f".{table}.", suffix=".tmp", dir=out)
        os.close(fd)
        try:
            pq.write_table(arrow, tmp)
            os.replace(tmp, path)  # atomic: readers never see a half-written file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written[table] = (path, arrow.num_rows)
    return written
