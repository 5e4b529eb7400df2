"""Find and read the Parquet tables of one or several sweeps.

Two layouts hold the same tables (``runs``, ``steps``, ``curvature``, ``layer_fits``,
``profile``):

- per trial, as the training code writes them: ``<results>/<sweep>/trials/<trial_id>/<table>.parquet``
  (the source of truth);
- consolidated, one file per table: ``<dir>/<table>.parquet`` with ``sweep_name`` and ``trial_id``
  columns, as ``specbench consolidate`` writes them (default ``<sweep>/consolidated/``) and as the
  measured examples under ``analysis/reports/`` are committed.

:func:`locate` decides which one a path holds; every reader here accepts either. This module is
the only place in ``analysis`` that touches the file system layout; everything downstream works
on pandas DataFrames, joined on :data:`TRIAL_PATH`.

Schema discipline: a file must carry exactly :data:`SCHEMA_VERSION` (older and newer files are
refused with a message saying what to do) and hold every :data:`REQUIRED_COLUMNS` column of its
table, non-null; nothing downstream guesses a missing column. ``analysis`` never imports the
training code, so the version and the required columns are duplicated from
``bench.results.schema`` on purpose (see docs/ARCHITECTURE.md); a test checks that they agree.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: The schema version this reader reads (same value as ``bench.results.schema.SCHEMA_VERSION``).
SCHEMA_VERSION = 4
#: Parquet key-value metadata key holding the schema version of a file.
METADATA_KEY = b"specbench.schema_version"
#: Per table, the columns a file must hold, non-null (``bench.results.schema.REQUIRED``).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": (
        "sweep_name", "trial_id", "optimizer", "optimizer_label", "optimizer_entry", "tuning_index",
        "tuning_stage", "model", "dataset", "task", "metric_name", "metric_goal", "seed_index", "status",
    ),
    "steps": ("trial_id", "step"),
    "curvature": ("trial_id", "step", "layer", "layer_type", "k"),
    "layer_fits": ("sweep_name", "trial_id", "step", "layer", "layer_type"),
    "profile": ("op",),
}  # fmt: skip
TABLES = tuple(REQUIRED_COLUMNS)
#: What a file of an older version should be given to.
UPGRADE_COMMAND = "python -m bench.results.upgrade"

#: Column added to every loaded table: the trial's directory relative to the results directory,
#: always ending in ``<sweep>/trials/<trial_id>`` (for consolidated files, the directory the
#: trial had). It is the join key between tables, because trial ids alone may repeat across
#: sweeps, and it is what reports print: never an absolute path of this machine.
TRIAL_PATH = "trial_path"
#: State reported for a trial without a ``runs`` row (still running, or killed hard).
INCOMPLETE = "running/incomplete"


class ResultsNotFound(FileNotFoundError):
    """The results path does not exist or holds neither trial directories nor table files."""


class SchemaVersionError(RuntimeError):
    """A results file was written at another schema version than this reader's."""


class ResultsReadError(RuntimeError):
    """A results file cannot be read as a table of this version (corrupt, or columns missing)."""


@dataclass(frozen=True)
class Results:
    """A results directory and where its tables are (:func:`locate`).

    Attributes:
        root: the directory given, resolved.
        trial_dirs: the per-trial directories (per-trial layout), sorted.
        tables_dir: the directory of ``<table>.parquet`` files (consolidated layout), else None.
    """

    root: Path
    trial_dirs: tuple[Path, ...] = ()
    tables_dir: Path | None = None

    def key_of(self, trial_dir: Path) -> str:
        """:data:`TRIAL_PATH` of a trial directory: relative to the root, or to the sweep's
        parent when the root is the sweep itself, its ``trials/`` or the trial."""
        sweep_dir = trial_dir.parent.parent
        inside = self.root in (sweep_dir, trial_dir.parent, trial_dir)
        return trial_dir.relative_to(sweep_dir.parent if inside else self.root).as_posix()

    def sweep_of(self, trial_dir: Path) -> str:
        """The sweep a trial directory belongs to: the ``name`` its sweep recorded in
        ``<sweep>/sweep.json``, else the sweep directory's name. The record wins because a
        sweep's directory may be renamed (a carried run, ``--name``) while its runs rows keep
        the sweep's own name; a row's ``sweep_name`` must join the same trial either way."""
        sweep_dir = trial_dir.parent.parent
        try:  # keyed on the file's mtime: a sweep started afresh under the same path re-reads it
            stamp = (sweep_dir / "sweep.json").stat().st_mtime_ns
        except OSError:
            return sweep_dir.name
        return _recorded_sweep_name(sweep_dir, stamp)

    def table_file(self, table: str) -> Path | None:
        """The consolidated file of ``table`` (None in the per-trial layout or when absent)."""
        if self.tables_dir is None:
            return None
        path = self.tables_dir / f"{table}.parquet"
        return path if path.is_file() else None

    def has(self, table: str) -> bool:
        """Whether any file of ``table`` exists."""
        if self.tables_dir is not None:
            return self.table_file(table) is not None
        return any((d / f"{table}.parquet").is_file() for d in self.trial_dirs)


@functools.lru_cache(maxsize=256)
def _recorded_sweep_name(sweep_dir: Path, _stamp: int) -> str:
    try:
        name = json.loads((sweep_dir / "sweep.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and name else sweep_dir.name


def find_trial_dirs(results_path: str | os.PathLike[str]) -> list[Path]:
    """Every trial directory under ``results_path``, sorted (empty when there is none).

    ``results_path`` may be a sweep directory (``<results>/<sweep>``), a parent holding several
    sweeps (searched recursively for ``trials/`` folders), a ``trials/`` folder, or one trial
    directory.
    """
    root = Path(results_path).expanduser().resolve()
    if root.parent.name == "trials":  # the user pointed at one trial
        return [root]
    trials_dirs = [root] if root.name == "trials" else []
    trials_dirs += sorted(p for p in root.rglob("trials") if p.is_dir())
    return sorted({child for trials in trials_dirs for child in trials.iterdir() if child.is_dir()})


def _has_table_files(directory: Path) -> bool:
    return any((directory / f"{t}.parquet").is_file() for t in TABLES)


def locate(results_path: str | os.PathLike[str]) -> Results:
    """Which layout ``results_path`` holds: trial directories under it (preferred: they are the
    source of truth), else ``<table>.parquet`` files in it, else in its ``consolidated/``.

    Raises:
        ResultsNotFound: the path does not exist, is not a directory, or holds neither.
    """
    root = Path(results_path).expanduser()
    if not root.exists():
        raise ResultsNotFound(f"results path {root} does not exist")
    if not root.is_dir():
        raise ResultsNotFound(f"results path {root} is not a directory")
    root = root.resolve()
    trial_dirs = find_trial_dirs(root)
    if trial_dirs:
        return Results(root, trial_dirs=tuple(trial_dirs))
    for candidate in (root, root / "consolidated"):
        if candidate.is_dir() and _has_table_files(candidate):
            return Results(root, tables_dir=candidate)
    raise ResultsNotFound(
        f"no results found under {root}: expected <sweep>/trials/<trial_id>/ directories, or "
        f"consolidated <table>.parquet files ({', '.join(TABLES)}) in it or in its consolidated/"
    )


# ------------------------------------------------------------------------------ one file
def _version(schema: pa.Schema, table: pa.Table | None, path: Path) -> int | None:
    """The file's version: its metadata, else (``table`` given) its ``schema_version`` column."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is not None:
        try:
            return int(raw.decode() if isinstance(raw, bytes) else raw)
        except ValueError as exc:
            raise SchemaVersionError(f"results file {path} carries an unreadable schema version {raw!r}") from exc
    if table is not None and "schema_version" in table.column_names and table.num_rows:
        newest = pc.max(table["schema_version"]).as_py()
        return None if newest is None else int(newest)
    return None


def check_schema_version(path: Path, version: int | None) -> None:
    """Refuse a file of another version, saying what to do; a file with no version at all (a
    hand-made table) passes, and the required-column check decides."""
    if version is None or version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"results file {path} was written at schema version {version}; this specbench reads "
            f"version {SCHEMA_VERSION} — upgrade specbench"
        )
    raise SchemaVersionError(
        f"results file {path} was written at schema version {version}; this specbench reads "
        f"version {SCHEMA_VERSION} only — upgrade the file with `{UPGRADE_COMMAND} {path}` (it says "
        "what is missing when it cannot), or re-run its trials"
    )


def read_trial_file(path: Path, columns: Sequence[str] | None = None, table: str | None = None) -> pa.Table:
    """Read one Parquet file of the results after checking its version and required columns.

    Args:
        path: the file.
        columns: read only these columns (those absent from the file are skipped here and
            appear as nulls after concatenation).
        table: the table the file holds (default: its name, ``runs.parquet`` → ``runs``); the
            required columns of a known table are checked.

    Raises:
        SchemaVersionError: the file is of another version (metadata, else its column).
        ResultsReadError: unreadable, or a required column is missing or has nulls.
    """
    path = Path(path)
    name = table or path.stem
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise ResultsReadError(f"cannot read results file {path}: {exc}") from exc
    check_schema_version(path, _version(schema, None, path))
    required = REQUIRED_COLUMNS.get(name, ())
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise ResultsReadError(
            f"results file {path} lacks the column(s) {', '.join(missing)}, required in the {name} "
            f"table at schema version {SCHEMA_VERSION}"
        )
    read_cols = None
    if columns is not None:
        wanted = dict.fromkeys([*columns, *required, "schema_version"])
        read_cols = [c for c in wanted if c in schema.names]
    try:
        data = pq.read_table(path, columns=read_cols)
    except (pa.ArrowException, OSError) as exc:
        raise ResultsReadError(f"cannot read results file {path}: {exc}") from exc
    check_schema_version(path, _version(schema, data, path))  # the column, when metadata was lost
    nulls = [c for c in required if data[c].null_count]
    if nulls:
        raise ResultsReadError(
            f"results file {path} has missing values in {', '.join(nulls)}, required in the {name} "
            f"table at schema version {SCHEMA_VERSION}"
        )
    if columns is not None:
        data = data.select([c for c in data.column_names if c in columns])
    # Writer metadata would only conflict across files during concatenation.
    return data.replace_schema_metadata(None)


# ------------------------------------------------------------------------------ a table
def _with_keys(part: pa.Table, key: pa.Array, trial_id: str | None, sweep: str | None) -> pa.Table:
    n = part.num_rows
    part = part.append_column(TRIAL_PATH, key)
    if "trial_id" not in part.column_names and trial_id is not None:
        part = part.append_column("trial_id", pa.array([trial_id] * n, pa.string()))
    if "sweep_name" not in part.column_names and sweep is not None:
        part = part.append_column("sweep_name", pa.array([sweep] * n, pa.string()))
    return part


def _parts(res: Results, table: str, columns: Sequence[str] | None) -> Iterator[pa.Table]:
    """The Arrow pieces of ``table``: one per trial file, or the one consolidated file; each
    with :data:`TRIAL_PATH`, ``trial_id`` and ``sweep_name``."""
    if res.tables_dir is not None:
        path = res.table_file(table)
        if path is None:
            return
        wanted = None if columns is None else [*columns, "sweep_name", "trial_id"]
        part = read_trial_file(path, wanted, table)
        absent = [c for c in ("sweep_name", "trial_id") if c not in part.column_names or part[c].null_count]
        if absent:
            raise ResultsReadError(
                f"consolidated file {path} lacks {', '.join(absent)} on some rows: a consolidated "
                "table names the trial of every row"
            )
        key = pc.binary_join_element_wise(part["sweep_name"], "trials", part["trial_id"], "/")
        yield _with_keys(part, key, None, None)
        return
    for trial_dir in res.trial_dirs:
        path = trial_dir / f"{table}.parquet"
        if path.is_file():
            part = read_trial_file(path, columns, table)
            key = pa.array([res.key_of(trial_dir)] * part.num_rows, pa.string())
            yield _with_keys(part, key, trial_dir.name, res.sweep_of(trial_dir))


def _frame(parts: list[pa.Table], columns: Sequence[str] | None) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame()
    # "permissive" unifies differing column sets and widens int/float mismatches.
    frame = pa.concat_tables(parts, promote_options="permissive").to_pandas()
    if columns is not None:
        keep = [c for c in columns if c in frame.columns]
        keep += [c for c in (TRIAL_PATH, "trial_id", "sweep_name") if c not in keep]
        frame = frame[keep]
    return frame


def load_table(
    results_path: str | os.PathLike[str] | Results,
    table: str,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One DataFrame of ``table`` over every trial under ``results_path`` (either layout).

    Files may differ in their extra columns (``config.*`` in runs, ``opt_*`` in steps): the
    union of columns is returned, missing values are null, and numeric types are widened where
    trials disagree. Every row gets :data:`TRIAL_PATH`, ``trial_id`` and ``sweep_name`` (when a
    per-trial file lacks them: the trial directory's name and :meth:`Results.sweep_of`).

    Args:
        results_path: a sweep directory, a parent of several sweeps, a consolidated directory
            (see :func:`locate`), or a :class:`Results` already located.
        table: table name, e.g. ``"runs"``, ``"steps"``, ``"curvature"``.
        columns: optional subset of columns to read (saves memory on large ``steps`` tables).

    Returns:
        The concatenated table; an empty DataFrame when no file of ``table`` exists.

    Raises:
        ResultsNotFound: the path holds no results.
        SchemaVersionError: a file was written at another schema version.
        ResultsReadError: a file is not readable, or lacks a required column.
    """
    res = results_path if isinstance(results_path, Results) else locate(results_path)
    return _frame(list(_parts(res, table, columns)), columns)


def trial_frames(
    results_path: str | os.PathLike[str] | Results, table: str, columns: Sequence[str] | None = None
) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(trial_path, rows)`` of ``table`` per trial, reading one trial file at a time in the
    per-trial layout (so a large sweep's ``curvature`` never has to fit in memory at once)."""
    res = results_path if isinstance(results_path, Results) else locate(results_path)
    for part in _parts(res, table, columns):
        frame = _frame([part], columns)
        for key, rows in frame.groupby(TRIAL_PATH, sort=True):
            yield str(key), rows.reset_index(drop=True)


def trial_frame(
    results_path: str | os.PathLike[str] | Results, table: str, trial_path: str
) -> pd.DataFrame:
    """The rows of ``table`` of one trial (``trial_path`` as in :data:`TRIAL_PATH`); empty when
    it has none."""
    res = results_path if isinstance(results_path, Results) else locate(results_path)
    if res.tables_dir is None:
        dirs = [d for d in res.trial_dirs if res.key_of(d) == trial_path]
        res = Results(res.root, trial_dirs=tuple(dirs))
    frame = load_table(res, table)
    return frame[frame[TRIAL_PATH] == trial_path].reset_index(drop=True) if not frame.empty else frame


# ------------------------------------------------------------------------------ trial states
def _logged_steps(res: Results) -> pd.DataFrame:
    """Per trial: ``sweep_name``, ``trial_id``, :data:`TRIAL_PATH`, ``has_steps``,
    ``n_steps_logged`` (rows of steps) and ``last_step``. Per-trial layout: every trial
    directory, steps or not."""
    cols = ["sweep_name", "trial_id", TRIAL_PATH, "has_steps", "n_steps_logged", "last_step"]
    rows = []
    if res.tables_dir is None:
        for trial_dir in res.trial_dirs:
            path = trial_dir / "steps.parquet"
            has, n, last = path.is_file(), 0, None
            if has:
                steps = read_trial_file(path, columns=["step"])
                n = steps.num_rows
                last = pc.max(steps["step"]).as_py() if n else None
            rows.append([res.sweep_of(trial_dir), trial_dir.name, res.key_of(trial_dir), has, n, last])
        return pd.DataFrame(rows, columns=cols)
    steps = load_table(res, "steps", columns=["step"])
    if steps.empty:
        return pd.DataFrame(columns=cols)
    per = steps.groupby([TRIAL_PATH, "sweep_name", "trial_id"], sort=True)["step"].agg(["size", "max"]).reset_index()
    return pd.DataFrame({"sweep_name": per["sweep_name"], "trial_id": per["trial_id"], TRIAL_PATH: per[TRIAL_PATH],
                         "has_steps": True, "n_steps_logged": per["size"], "last_step": per["max"]})[cols]


def trial_states(results_path: str | os.PathLike[str] | Results) -> pd.DataFrame:
    """One row per trial with its state, so nothing unfinished goes unseen.

    ``state`` is the ``runs`` status (``completed`` / ``diverged`` / ``failed``) when the trial
    wrote its runs row, else ``running/incomplete``: the runs row is written last, so a trial
    with steps but no runs row is still running or was killed before it could record its end
    (the "torn" case). Those are reported, never dropped.

    Columns: ``sweep_name``, ``trial_id``, :data:`TRIAL_PATH`, ``state``, ``error``,
    ``has_runs``, ``has_steps``, ``n_steps_logged`` (rows in steps), ``last_step``, and, when a
    runs row exists, ``optimizer_label``, ``model``, ``dataset``, ``seed_index``, ``seed``,
    ``steps_completed``.
    """
    res = results_path if isinstance(results_path, Results) else locate(results_path)
    logged = _logged_steps(res)
    runs = load_table(res, "runs")
    info_cols = [
        "status", "error", "optimizer_label", "model", "dataset",
        "seed_index", "seed", "steps_completed",
    ]  # fmt: skip
    if runs.empty:
        runs = pd.DataFrame(columns=[TRIAL_PATH, "sweep_name", "trial_id"])
    # The runs table holds one row per trial; keep the last if a retry appended a second.
    runs = runs.drop_duplicates(TRIAL_PATH, keep="last")
    ids = pd.concat([logged[[TRIAL_PATH, "sweep_name", "trial_id"]], runs[[TRIAL_PATH, "sweep_name", "trial_id"]]])
    states = ids.drop_duplicates(TRIAL_PATH, keep="first")
    states = states.merge(logged.drop(columns=["sweep_name", "trial_id"]), on=TRIAL_PATH, how="left")
    states["has_steps"] = states["has_steps"].fillna(False).astype(bool)
    states["n_steps_logged"] = states["n_steps_logged"].fillna(0).astype(int)
    runs = runs[[TRIAL_PATH, *[c for c in info_cols if c in runs.columns]]]
    states = states.merge(runs, on=TRIAL_PATH, how="left")
    for col in info_cols:
        if col not in states.columns:
            states[col] = None

    states["has_runs"] = states[TRIAL_PATH].isin(set(runs[TRIAL_PATH]))
    status = states["status"].astype("object")
    states["state"] = status.where(states["has_runs"] & status.notna(), INCOMPLETE)
    states = states.drop(columns=["status"])
    front = ["sweep_name", "trial_id", "state", "error", "optimizer_label", "model", "dataset"]
    rest = [c for c in states.columns if c not in front]
    return states[front + rest].sort_values(["sweep_name", "trial_id"], ignore_index=True)
