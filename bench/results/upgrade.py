"""Upgrade result files written at an older schema version to :data:`SCHEMA_VERSION`.

Readers refuse a file of another version (``analysis.dataset``); this rewrites one in place,
atomically, when that can be done without inventing data::

    python -m bench.results.upgrade PATH... [--table NAME] [--set COLUMN=VALUE ...] [--dry-run]

PATH is a Parquet file or a directory (searched for ``<table>.parquet`` files of the known
tables). A file whose name is not a table's needs ``--table``.

One function per version step (:data:`STEPS`; see :mod:`bench.results.schema` for the history):

- 1 → 2 (:func:`_from_v1`): the columns are the same, so the step adds nothing it has to guess.
- 2 → 3 (:func:`_from_v2`): the probe-mode columns (issue 14); every probe before version 3 was
  mode ``full``, which is written as their ``probe_mode`` (a fact of the old version, not a
  guess); the other new columns are null, as are the input-pipeline columns of issue 19
  (``steps.data_time_s``, ``runs.data_cache_key``), which an old file did not measure.
- 3 → 4 (:func:`_from_v3`): ``runs.tuning_stage`` = 0, the one-stage protocol every sweep used
  before the two-stage protocol existed (a fact of the old version).

A file is rewritten only when it holds every column of
:data:`~bench.results.schema.REQUIRED` non-null; declared columns it lacks are written as null
("not measured", which is what their absence meant); the version is stamped. A required column
missing from an old file can only come from what the user knows about the run, stated with
``--set COLUMN=VALUE`` (one value for every row, only for a column that is absent or entirely
null), e.g. ``--set optimizer_entry=adamw`` for a sweep whose config had the single, unlabelled
entry ``adamw``. Anything else is refused with the list of what is missing.

Step ``tuning_stage`` (to version 3): ``runs.tuning_stage`` became required. Every file written
before it comes from a sweep without the two-stage tuning protocol, which is what value 0 says,
so an absent (or entirely null) column is filled with 0; nothing is guessed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.results.schema import METADATA_KEY, REQUIRED, SCHEMA_VERSION, TABLES
from bench.results.writer import to_table, write_atomic


class UpgradeError(ValueError):
    """A file cannot be upgraded without data it does not hold."""


def file_version(table: pa.Table) -> int | None:
    """The schema version a table was written with: its metadata, else its ``schema_version``
    column; None when it carries neither."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is not None:
        return int(raw)
    if "schema_version" in table.column_names and table.num_rows:
        newest = pc.max(table["schema_version"]).as_py()
        return None if newest is None else int(newest)
    return None


def _filled(table: pa.Table, name: str, fill: Mapping[str, str]) -> pa.Table:
    """``table`` with each ``fill`` column set to its value on every row (typed as declared)."""
    declared = TABLES[name]
    for column, text in fill.items():
        if column in table.column_names and table[column].null_count < table.num_rows:
            raise UpgradeError(f"--set {column}: the file already holds values in {column}; only an absent "
                               "or entirely null column can be set")
        dtype = declared.field(column).type if column in declared.names else pa.string()
        value = pa.scalar(text).cast(dtype).as_py()
        values = pa.array([value] * table.num_rows, type=dtype)
        if column in table.column_names:
            table = table.set_column(table.column_names.index(column), column, values)
        else:
            table = table.append_column(column, values)
    return table


def _from_v1(table: pa.Table, name: str) -> pa.Table:
    """1 → 2: the same columns (version 2 only guarantees them); nothing to add."""
    return table


def _from_v2(table: pa.Table, name: str) -> pa.Table:
    """2 → 3: before version 3 the probe had one mode, ``full``: its curvature and layer_fits rows
    and its ``curvature_probe`` profile rows get that ``probe_mode``. The other columns new in
    version 3 are declared, so :func:`upgrade_table` writes them as null (not measured)."""
    if name not in ("curvature", "layer_fits", "profile") or "probe_mode" in table.column_names:
        return table
    if name == "profile":
        probe = pc.fill_null(pc.equal(table["op"], "curvature_probe"), False) if "op" in table.column_names else None
        values = pa.array([("full" if p else None) for p in (probe.to_pylist() if probe is not None else
                                                              [False] * table.num_rows)], type=pa.string())
    else:
        values = pa.array(["full"] * table.num_rows, type=pa.string())
    return table.append_column("probe_mode", values)


#: Version v → v + 1, per v: what an upgrade from v applies, in order, up to :data:`SCHEMA_VERSION`.
def _from_v3(table: pa.Table, name: str) -> pa.Table:
    """3 → 4: ``runs.tuning_stage`` is 0 (one stage) in a file that predates the column."""
    if name != "runs" or ("tuning_stage" in table.column_names and table["tuning_stage"].null_count < table.num_rows):
        return table
    return _filled(table, name, {"tuning_stage": "0"})


STEPS: dict[int, Callable[[pa.Table, str], pa.Table]] = {1: _from_v1, 2: _from_v2, 3: _from_v3}
#: Versions this module upgrades from.
UPGRADABLE = tuple(sorted(STEPS))


def upgrade_table(table: pa.Table, name: str, fill: Mapping[str, str] | None = None) -> pa.Table:
    """``table`` (one file's contents, table ``name``) at :data:`SCHEMA_VERSION`.

    Returns the table unchanged when it already is at that version.

    Raises:
        UpgradeError: unknown table, no or a newer version, or a required column missing or
            holding nulls after ``fill``.
    """
    if name not in TABLES:
        raise UpgradeError(f"unknown table {name!r} (known: {', '.join(TABLES)})")
    version = file_version(table)
    if version == SCHEMA_VERSION:
        return table
    if version is None:
        raise UpgradeError("the file carries no schema version, so what it holds is unknown")
    if version not in UPGRADABLE:
        raise UpgradeError(f"schema version {version} cannot be upgraded to {SCHEMA_VERSION} "
                           f"(upgradable: {', '.join(map(str, UPGRADABLE))})")
    table = _filled(table, name, fill or {})
    for step in range(version, SCHEMA_VERSION):
        table = STEPS[step](table, name)
    missing = [c for c in REQUIRED[name] if c not in table.column_names]
    nulls = [c for c in REQUIRED[name] if c in table.column_names and table[c].null_count]
    if missing or nulls:
        parts = [f"lacks {', '.join(missing)}"] if missing else []
        parts += [f"has nulls in {', '.join(nulls)}"] if nulls else []
        raise UpgradeError(f"the {name} table {' and '.join(parts)}, required at schema version "
                           f"{SCHEMA_VERSION}; give the value with --set COLUMN=VALUE if it is known for "
                           "every row, else re-run the trials")
    return to_table(name, table.drop_columns([c for c in ("schema_version",) if c in table.column_names]).to_pylist())


def table_name_of(path: Path, table: str | None) -> str:
    """The table a file holds: ``table`` if given, else its file name (``runs.parquet`` → runs)."""
    name = table or path.stem
    if name not in TABLES:
        raise UpgradeError(f"{path}: cannot tell which table this file holds; pass --table "
                           f"({', '.join(TABLES)})")
    return name


def upgrade_file(path: str | Path, table: str | None = None, fill: Mapping[str, str] | None = None,
                 dry_run: bool = False) -> bool:
    """Upgrade one file in place (atomically). Returns True when it was (or, with ``dry_run``,
    would be) rewritten, False when it already was at :data:`SCHEMA_VERSION`.

    Raises:
        UpgradeError: see :func:`upgrade_table`; the message names the file.
    """
    path = Path(path)
    name = table_name_of(path, table)
    old = pq.read_table(path)
    try:
        new = upgrade_table(old, name, fill)
    except UpgradeError as exc:
        raise UpgradeError(f"{path}: {exc}") from None
    if new is old:
        return False
    if not dry_run:
        write_atomic(new, path)
    return True


def _files(paths: Sequence[str], table: str | None) -> list[Path]:
    """The files named, and in each directory every ``<table>.parquet`` (every ``*.parquet``
    when the table is given)."""
    found: list[Path] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*.parquet") if table or f.stem in TABLES)
        elif p.is_file():
            found.append(p)
        else:
            raise UpgradeError(f"{p} does not exist")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.results.upgrade",
                                     description=f"rewrite result files at schema version {SCHEMA_VERSION}")
    parser.add_argument("paths", nargs="+", help="Parquet files or directories")
    parser.add_argument("--table", choices=sorted(TABLES), help="the table the files hold (default: the file name)")
    parser.add_argument("--set", dest="fill", action="append", default=[], metavar="COLUMN=VALUE",
                        help="a value known for every row of a column the old file lacks")
    parser.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    args = parser.parse_args(argv)
    try:
        fill = dict(_assignment(a) for a in args.fill)
        files = _files(args.paths, args.table)
        if not files:
            raise UpgradeError(f"no <table>.parquet files under {', '.join(args.paths)} (name the table with --table)")
        for f in files:
            changed = upgrade_file(f, args.table, fill, args.dry_run)
            verb = ("would upgrade to" if args.dry_run else "upgraded to") if changed else "already at"
            print(f"{verb} version {SCHEMA_VERSION}: {f}")
    except UpgradeError as exc:
        print(f"specbench: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _assignment(text: str) -> tuple[str, str]:
    column, sep, value = text.partition("=")
    if not sep or not column:
        raise UpgradeError(f"--set {text}: expected COLUMN=VALUE")
    return column, value


if __name__ == "__main__":
    raise SystemExit(main())
