"""Discover and read the per-trial Parquet files of one or several sweeps.

The training code writes, per trial, ``<results>/<sweep>/trials/<trial_id>/<table>.parquet``
(``runs``, ``steps`` and later ``curvature``, ``layer_fits``, ``profile``). This module is the
only place in ``analysis`` that touches the file system layout; everything downstream works on
pandas DataFrames.

``analysis`` reads only Parquet and never imports the training code, so the schema version it
understands is duplicated here on purpose (see docs/ARCHITECTURE.md): a reader must be able to
refuse a newer dataset even when the writer's package is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Newest schema version this reader understands (same value as the writer's
#: ``bench.results.schema.SCHEMA_VERSION``; duplicated because analysis must not import bench).
SCHEMA_VERSION = 1
#: Parquet key-value metadata key holding the schema version of a file.
METADATA_KEY = b"specbench.schema_version"

#: Column added to every loaded table: the absolute path of the trial directory a row came from.
#: It is the join key between tables, because trial ids alone may repeat across sweeps.
TRIAL_PATH = "trial_path"
#: State reported for a trial directory without a ``runs`` row (still running, or killed hard).
INCOMPLETE = "running/incomplete"


class ResultsNotFound(FileNotFoundError):
    """The results path does not exist or holds no ``trials/<trial_id>/`` directories."""


class SchemaVersionError(RuntimeError):
    """A results file was written by a newer specbench than this reader understands."""


class ResultsReadError(RuntimeError):
    """A results file exists but cannot be read as Parquet (corrupt or not a specbench file)."""


def find_trial_dirs(results_path: str | os.PathLike[str]) -> list[Path]:
    """Return every trial directory under ``results_path``, sorted.

    ``results_path`` may be a sweep directory (``<results>/<sweep>``), a parent holding several
    sweeps (searched recursively for ``trials/`` folders), a ``trials/`` folder, or a single
    trial directory.

    Raises:
        ResultsNotFound: the path does not exist or contains no trial directory.
    """
    root = Path(results_path).expanduser()
    if not root.exists():
        raise ResultsNotFound(f"results path {root} does not exist")
    if not root.is_dir():
        raise ResultsNotFound(f"results path {root} is not a directory")
    root = root.resolve()

    if root.parent.name == "trials":  # the user pointed at one trial
        return [root]
    trials_dirs = [root] if root.name == "trials" else []
    trials_dirs += sorted(p for p in root.rglob("trials") if p.is_dir())
    found = {child for trials in trials_dirs for child in trials.iterdir() if child.is_dir()}
    if not found:
        raise ResultsNotFound(
            f"no trials found under {root} (expected <sweep>/trials/<trial_id>/ directories)"
        )
    return sorted(found)


def _sweep_dir_name(trial_dir: Path) -> str:
    """Name of the sweep directory above ``trials/`` (the fallback for a missing sweep_name)."""
    return trial_dir.parent.parent.name


def check_schema_version(path: Path, schema: pa.Schema) -> None:
    """Raise :class:`SchemaVersionError` if the file metadata says it is newer than we read.

    A file without the metadata key is accepted: the column check in :func:`read_trial_file`
    still applies, and refusing unlabelled files would break hand-made fixtures for no gain.
    """
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return
    try:
        version = int(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as exc:
        raise SchemaVersionError(f"results at {path} carry an unreadable schema version {raw!r}") from exc
    _refuse_newer(path, version)


def _refuse_newer(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"results at {path} were written with schema version {version}; "
            f"this specbench reads up to {SCHEMA_VERSION} — upgrade specbench"
        )


def read_trial_file(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read one per-trial Parquet file after checking its schema version.

    The version is checked twice, as the writer stores it twice: first in the footer metadata
    (before any row is read), then in the ``schema_version`` column (covers files whose
    metadata was lost, e.g. rewritten by another tool).

    Args:
        path: the Parquet file.
        columns: read only these columns (those absent from the file are skipped here and
            appear as nulls after concatenation).
    """
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise ResultsReadError(f"cannot read results file {path}: {exc}") from exc
    check_schema_version(path, schema)

    read_cols = None
    if columns is not None:
        wanted = list(dict.fromkeys([*columns, "schema_version"]))
        read_cols = [c for c in wanted if c in schema.names]
    try:
        table = pq.read_table(path, columns=read_cols)
    except (pa.ArrowException, OSError) as exc:
        raise ResultsReadError(f"cannot read results file {path}: {exc}") from exc

    if "schema_version" in table.column_names and table.num_rows:
        newest = pc.max(table["schema_version"]).as_py()
        if newest is not None:
            _refuse_newer(path, int(newest))
        if columns is not None and "schema_version" not in columns:
            table = table.drop_columns(["schema_version"])
    # Writer metadata would only conflict across files during concatenation.
    return table.replace_schema_metadata(None)


def _iter_table_files(trial_dirs: Sequence[Path], table: str) -> Iterator[tuple[Path, Path]]:
    for trial_dir in trial_dirs:
        path = trial_dir / f"{table}.parquet"
        if path.is_file():
            yield trial_dir, path


def load_table(
    results_path: str | os.PathLike[str],
    table: str,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Concatenate ``<table>.parquet`` of every trial under ``results_path`` into one DataFrame.

    Files may differ in their extra columns (``config.*`` in runs, ``opt_*`` in steps): the
    union of columns is returned, missing values are null, and numeric types are widened where
    trials disagree (e.g. an ``opt_*`` metric logged as int in one trial, float in another).

    Every row gets a ``trial_path`` column (absolute trial directory, the safe join key across
    sweeps); ``trial_id`` and ``sweep_name`` are filled from the directory names when a file
    lacks them.

    Args:
        results_path: a sweep directory or a parent of several sweeps (see
            :func:`find_trial_dirs`).
        table: table name, e.g. ``"runs"``, ``"steps"``, ``"curvature"``.
        columns: optional subset of columns to read (saves memory on large ``steps`` tables).

    Returns:
        The concatenated table; an empty DataFrame when no trial has a file for ``table``.

    Raises:
        ResultsNotFound: the path does not exist or contains no trials.
        SchemaVersionError: a file was written with a newer schema version.
        ResultsReadError: a file is not readable Parquet.
    """
    trial_dirs = find_trial_dirs(results_path)
    parts: list[pa.Table] = []
    for trial_dir, path in _iter_table_files(trial_dirs, table):
        part = read_trial_file(path, columns)
        n = part.num_rows
        part = part.append_column(TRIAL_PATH, pa.array([str(trial_dir)] * n, pa.string()))
        if "trial_id" not in part.column_names:
            part = part.append_column("trial_id", pa.array([trial_dir.name] * n, pa.string()))
        if "sweep_name" not in part.column_names:
            sweep = _sweep_dir_name(trial_dir)
            part = part.append_column("sweep_name", pa.array([sweep] * n, pa.string()))
        parts.append(part)
    if not parts:
        return pd.DataFrame()
    # "permissive" unifies differing column sets and widens int/float mismatches.
    combined = pa.concat_tables(parts, promote_options="permissive")
    frame = combined.to_pandas()
    if columns is not None:
        keep = [c for c in columns if c in frame.columns]
        keep += [c for c in (TRIAL_PATH, "trial_id", "sweep_name") if c not in keep]
        frame = frame[keep]
    return frame


def _num_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise ResultsReadError(f"cannot read results file {path}: {exc}") from exc


def trial_states(results_path: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per trial directory with its state, so nothing unfinished goes unseen.

    ``state`` is the ``runs`` status (``completed`` / ``diverged`` / ``failed``) when the trial
    wrote its runs row, else ``running/incomplete``: the runs row is written last, so a
    directory with steps but no runs row is a trial still running or one killed before it
    could record its end (the "torn" case). Those are reported, never dropped.

    Columns: ``sweep_name``, ``trial_id``, ``trial_path``, ``state``, ``error``, ``has_runs``,
    ``has_steps``, ``n_steps_logged`` (rows in steps.parquet), ``last_step``, and, when a runs
    row exists, ``optimizer_label``, ``model``, ``dataset``, ``seed_index``, ``seed``,
    ``steps_completed``.
    """
    trial_dirs = find_trial_dirs(results_path)
    rows = []
    for trial_dir in trial_dirs:
        steps_path = trial_dir / "steps.parquet"
        has_steps = steps_path.is_file()
        n_logged, last_step = 0, None
        if has_steps:
            n_logged = _num_rows(steps_path)
            if n_logged:
                step_table = read_trial_file(steps_path, columns=["step"])
                if "step" in step_table.column_names:
                    last_step = pc.max(step_table["step"]).as_py()
        rows.append(
            {
                "sweep_name": _sweep_dir_name(trial_dir),
                "trial_id": trial_dir.name,
                TRIAL_PATH: str(trial_dir),
                "has_steps": has_steps,
                "n_steps_logged": n_logged,
                "last_step": last_step,
            }
        )
    states = pd.DataFrame(rows)

    runs = load_table(results_path, "runs")
    info_cols = [
        "status", "error", "optimizer_label", "model", "dataset",
        "seed_index", "seed", "steps_completed",
    ]  # fmt: skip
    if runs.empty:
        runs = pd.DataFrame(columns=[TRIAL_PATH])
    # The runs table holds one row per trial; keep the last if a retry appended a second.
    runs = runs.drop_duplicates(TRIAL_PATH, keep="last")
    runs = runs[[TRIAL_PATH, *[c for c in info_cols if c in runs.columns]]]
    states = states.merge(runs, on=TRIAL_PATH, how="left")
    for col in info_cols:
        if col not in states.columns:
            states[col] = None

    states["has_runs"] = states[TRIAL_PATH].isin(set(runs[TRIAL_PATH]))
    status = states["status"].astype("object")
    states["state"] = status.where(states["has_runs"] & status.notna(), INCOMPLETE)
    # A runs row without a status should not happen; call it what it claims to be: unknown.
    states.loc[states["has_runs"] & status.isna(), "state"] = "unknown"
    states = states.drop(columns=["status"])
    front = ["sweep_name", "trial_id", "state", "error", "optimizer_label", "model", "dataset"]
    rest = [c for c in states.columns if c not in front]
    return states[front + rest].sort_values(["sweep_name", "trial_id"], ignore_index=True)
