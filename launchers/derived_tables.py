"""Write the tables derived from a sweep's per-trial files: each trial's ``layer_fits`` and the
consolidated one-file-per-table copy.

``analysis.consolidate`` computes them (analysis reads Parquet and never writes it);
``bench.results.writer`` writes them, like every other result file: atomically, typed by the
schema and stamped with its version.
"""

from __future__ import annotations

import os
from pathlib import Path

from analysis.consolidate import consolidated_tables, layer_fits_by_trial
from analysis.dataset import locate
from bench.results.writer import write_frame


def write_layer_fits(results_path: str | os.PathLike[str]) -> list[Path]:
    """Fit every trial's ``curvature.parquet`` into its ``layer_fits.parquet``; rewritten each
    time, so it always matches the curvature rows on disk. Returns the files written (none for a
    consolidated directory)."""
    return [write_frame("layer_fits", fits, trial / "layer_fits.parquet")
            for trial, fits in layer_fits_by_trial(results_path)]


def consolidate(
    results_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> dict[str, tuple[Path, int]]:
    """Write ``<out_dir>/<table>.parquet`` for every table that has rows; returns
    ``{table: (path, rows)}``. Default ``out_dir``: ``<results>/consolidated``."""
    res = locate(results_path)  # the clear error when there is nothing to consolidate
    out = Path(out_dir) if out_dir is not None else res.root / "consolidated"
    return {table: (write_frame(table, frame, out / f"{table}.parquet"), len(frame))
            for table, frame in consolidated_tables(res).items()}
