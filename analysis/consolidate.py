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

from analysis.dataset import (
    METADATA_KEY,
    SCHEMA_VERSION,
    TRIAL_PATH,
    find_trial_dirs,
    load_table,
    read_trial_file,
)

TABLES = ("runs", "steps", "curvature", "layer_fits", "profile")


def _write_parquet(frame, path: Path) -> None:
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    arrow = arrow.replace_schema_metadata({METADATA_KEY: str(SCHEMA_VERSION).encode()})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(arrow, tmp)
        os.replace(tmp, path)  # atomic: readers never see a half-written file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_layer_fits(results_path: str | os.PathLike[str]) -> list[Path]:
    """Fit every trial's ``curvature.parquet`` into its ``layer_fits.parquet`` (PAPER.md §2
    conventions, :func:`analysis.curvature.layer_fits_from_curvature`). Rewritten each time, so
    it always matches the curvature rows on disk; returns the files written."""
    from analysis.curvature import layer_fits_from_curvature

    written = []
    for trial in find_trial_dirs(results_path):
        curv_path = trial / "curvature.parquet"
        if not curv_path.is_file():
            continue
        fits = layer_fits_from_curvature(read_trial_file(curv_path).to_pandas())
        if fits.empty:
            continue
        path = trial / "layer_fits.parquet"
        _write_parquet(fits.drop(columns=[TRIAL_PATH], errors="ignore"), path)
        written.append(path)
    return written


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
        path = out / f"{table}.parquet"
        _write_parquet(frame, path)
        written[table] = (path, len(frame))
    return written
