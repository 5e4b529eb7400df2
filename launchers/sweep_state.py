"""What a sweep directory already holds: which trials are done, and whether the directory
belongs to the same sweep config (re-running a sweep resumes it; a different config under the
same name is refused unless the user asks for a fresh start)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

#: Terminal states: a re-run skips these trials. ``failed`` trials are retried (from their last
#: checkpoint when they have one).
FINISHED = ("completed", "diverged")


class SweepMismatch(Exception):
    """The results directory was written by a different sweep config."""


def parse_record(text: bytes | str, where: str) -> dict:
    """A ``sweep.json`` record from its bytes; :class:`SweepMismatch` if it is not one (a file
    edited by hand, or not written by specbench), so nothing is run on top of it."""
    try:
        record = json.loads(text)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("trials", []), list):
        raise SweepMismatch(f"{where} is not a sweep record written by specbench; move it (or its directory) "
                            "aside, or use another --name")
    return record


def read_record(sweep_dir: Path) -> dict | None:
    """The sweep record of a directory, None when there is none."""
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        return None
    return parse_record(path.read_bytes(), str(path))


def same_sweep(record: dict | None, fingerprints: tuple[str, ...]) -> bool:
    """Whether ``record`` (None: no results yet) was written by the config whose
    :func:`launchers.sweep.sweep_fingerprints` are ``fingerprints``."""
    return record is None or record.get("fingerprint") in fingerprints


def mismatch(record: dict | None, fingerprints: tuple[str, ...], sweep_dir: Path | str, force_new: bool) -> str | None:
    """Why a sweep cannot run on top of ``record`` (another config's results), or None."""
    if same_sweep(record, fingerprints) or force_new:
        return None
    name = str(sweep_dir).rstrip("/").rsplit("/", 1)[-1]
    return (f"{sweep_dir} holds results of a different config for sweep '{name}' (the config changed since "
            "they were written). Use another --name, or --force-new to move the old results aside and start afresh.")


def trial_state(sweep_dir: Path, trial_id: str) -> str:
    """completed | diverged | failed (from the runs row) | interrupted (files but no readable
    runs row: killed, or still running) | pending (nothing written yet)."""
    tdir = sweep_dir / "trials" / trial_id
    runs = tdir / "runs.parquet"
    if runs.is_file():
        try:
            status = pq.read_table(runs, columns=["status"]).column("status").to_pylist()
        except (OSError, ValueError):  # not a results file (damaged, or not ours): run it again
            return "interrupted"
        return str(status[0]) if status else "failed"
    if tdir.is_dir() and any(tdir.iterdir()):
        return "interrupted"
    return "pending"


def states(sweep_dir: Path, trial_ids: list[str]) -> dict[str, str]:
    return {tid: trial_state(sweep_dir, tid) for tid in trial_ids}


def check_or_replace(sweep_dir: Path, fingerprints: tuple[str, ...], force_new: bool) -> Path | None:
    """Refuse a directory holding another sweep config; with ``force_new`` move it aside
    (renamed, never deleted) and return where it went."""
    record = read_record(sweep_dir)
    problem = mismatch(record, fingerprints, sweep_dir, force_new)
    if problem:
        raise SweepMismatch(problem)
    if same_sweep(record, fingerprints):
        return None
    moved = sweep_dir.with_name(f"{sweep_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    sweep_dir.rename(moved)
    return moved


def summary_line(st: dict[str, str]) -> str:
    counts = Counter(st.values())
    order = ["completed", "diverged", "failed", "interrupted", "pending"]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
