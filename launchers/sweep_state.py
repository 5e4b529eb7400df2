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


def read_record(sweep_dir: Path) -> dict | None:
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def trial_state(sweep_dir: Path, trial_id: str) -> str:
    """completed | diverged | failed (from the runs row) | interrupted (files but no runs row:
    killed, or still running) | pending (nothing written yet)."""
    tdir = sweep_dir / "trials" / trial_id
    runs = tdir / "runs.parquet"
    if runs.is_file():
        status = pq.read_table(runs, columns=["status"]).column("status").to_pylist()
        return str(status[0]) if status else "failed"
    if tdir.is_dir() and any(tdir.iterdir()):
        return "interrupted"
    return "pending"


def states(sweep_dir: Path, trial_ids: list[str]) -> dict[str, str]:
    return {tid: trial_state(sweep_dir, tid) for tid in trial_ids}


def check_or_replace(sweep_dir: Path, fingerprint: str, force_new: bool) -> Path | None:
    """Refuse a directory holding another sweep config; with ``force_new`` move it aside
    (renamed, never deleted) and return where it went."""
    record = read_record(sweep_dir)
    if record is None or record.get("fingerprint") == fingerprint:
        return None
    if not force_new:
        raise SweepMismatch(
            f"{sweep_dir} holds results of a different config for sweep '{sweep_dir.name}' "
            "(the config changed since they were written). Use another --name, or --force-new to "
            "move the old results aside and start afresh."
        )
    moved = sweep_dir.with_name(f"{sweep_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    sweep_dir.rename(moved)
    return moved


def summary_line(st: dict[str, str]) -> str:
    counts = Counter(st.values())
    order = ["completed", "diverged", "failed", "interrupted", "pending"]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
