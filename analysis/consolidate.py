"""The tables derived from a sweep's per-trial files: each trial's ``layer_fits`` and the
consolidated one-file-per-table copy.

Only the contents are computed here (analysis reads Parquet, it does not write it); the
commands write them with the one atomic, versioned writer, ``bench.results.writer``
(``launchers/derived_tables.py``). The per-trial files stay the source of truth: both derived
forms can be rebuilt at any time — after a crash, during a sweep, or after trials were added.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from analysis.dataset import TABLES, TRIAL_PATH, Results, load_table, locate, read_trial_file


def layer_fits_by_trial(results_path: str | os.PathLike[str]) -> list[tuple[Path, pd.DataFrame]]:
    """``(trial directory, its layer_fits)`` for every trial with ``curvature.parquet``, fitted
    with the docs/science/fits.md conventions (:func:`analysis.curvature.layer_fits_from_curvature`).

    Empty for a consolidated directory (its fits are computed when read,
    :func:`analysis.curvature.load_layer_fits`).
    """
    from analysis.curvature import layer_fits_from_curvature

    res = locate(results_path)
    out = []
    for trial in res.trial_dirs:
        curv_path = trial / "curvature.parquet"
        if not curv_path.is_file():
            continue
        curv = read_trial_file(curv_path).to_pandas().assign(sweep_name=res.sweep_of(trial))
        fits = layer_fits_from_curvature(curv)
        if not fits.empty:
            out.append((trial, fits))
    return out


def consolidated_tables(results_path: str | os.PathLike[str] | Results) -> dict[str, pd.DataFrame]:
    """``{table: rows}`` for every table with rows under ``results_path``, each row naming its
    ``sweep_name`` and ``trial_id`` (the relative :data:`~analysis.dataset.TRIAL_PATH` is
    dropped: it depends on where the files are read from)."""
    res = results_path if isinstance(results_path, Results) else locate(results_path)
    tables = {}
    for table in TABLES:
        frame = load_table(res, table)
        if not frame.empty:
            tables[table] = frame.drop(columns=[TRIAL_PATH])
    return tables
