"""Write the tables derived from a sweep's per-trial files: each trial's ``layer_fits`` and the
consolidated one-file-per-table copy.

``analysis.consolidate`` computes them (analysis reads Parquet and never writes it);
``bench.results.writer`` writes them, like every other result file: atomically, typed by the
schema and stamped with its version.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.consolidate import consolidated_tables, layer_fits_by_trial
from analysis.dataset import locate
from bench.results.writer import to_table, write_atomic, write_frame

# Refitting the same curvature rows in another process can change a fit in its last bits (LAPACK's
# least squares takes alignment-dependent code paths), which would rewrite committed result files
# with nothing but noise in them. Fits that agree to this relative tolerance count as unchanged.
FIT_NOISE_RTOL = 1e-12


def write_layer_fits(results_path: str | os.PathLike[str]) -> list[Path]:
    """Fit every trial's ``curvature.parquet`` into its ``layer_fits.parquet``, so that it always
    matches the curvature rows on disk. A file that already holds the same fits (floats equal to
    :data:`FIT_NOISE_RTOL`, everything else exactly, same schema version) is left untouched: a
    repeated ``specbench report`` changes no committed file. Returns every trial's
    ``layer_fits.parquet`` (none for a consolidated directory)."""
    paths = []
    for trial, fits in layer_fits_by_trial(results_path):
        path, table = trial / "layer_fits.parquet", to_table("layer_fits", fits.to_dict("records"))
        if not _holds(path, table):
            write_atomic(table, path)
        paths.append(path)
    return paths


def _holds(path: Path, table: pa.Table) -> bool:
    """Whether ``path`` already holds ``table`` up to floating-point noise (:data:`FIT_NOISE_RTOL`)."""
    try:
        old = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return False  # absent or unreadable: write it
    if old.schema != table.schema or old.schema.metadata != table.schema.metadata:
        return False  # another version or other columns
    for name in table.column_names:
        new_col, old_col = table.column(name), old.column(name)
        if pa.types.is_floating(new_col.type):
            a = new_col.to_numpy(zero_copy_only=False).astype(np.float64)
            b = old_col.to_numpy(zero_copy_only=False).astype(np.float64)
            if not np.allclose(a, b, rtol=FIT_NOISE_RTOL, atol=0.0, equal_nan=True):
                return False
        elif not new_col.equals(old_col):
            return False
    return True


def consolidate(
    results_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> dict[str, tuple[Path, int]]:
    """Write ``<out_dir>/<table>.parquet`` for every table that has rows; returns
    ``{table: (path, rows)}``. Default ``out_dir``: ``<results>/consolidated``."""
    res = locate(results_path)  # the clear error when there is nothing to consolidate
    out = Path(out_dir) if out_dir is not None else res.root / "consolidated"
    return {table: (write_frame(table, frame, out / f"{table}.parquet"), len(frame))
            for table, frame in consolidated_tables(res).items()}
