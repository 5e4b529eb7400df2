"""Result files for the analysis tests, written by the real writer (``bench.results.writer``):
typed by the schema, stamped with its version, so a change on the writing side breaks these
tests instead of silently producing empty reports. ``analysis`` itself never imports ``bench``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.results.writer import write_frame, write_rows

#: The required ``runs`` columns of one completed trial; tests override what they are about.
RUN = {
    "sweep_name": "sweep", "optimizer": "adamw", "optimizer_label": "adamw", "optimizer_entry": "adamw",
    "tuning_index": -1, "tuning_stage": 0, "model": "builtin:cnn", "dataset": "sklearn:digits", "task": "classification",
    "metric_name": "accuracy", "metric_goal": "max", "seed_index": 0, "status": "completed",
}  # fmt: skip


def run_row(**fields: Any) -> dict[str, Any]:
    """A ``runs`` row: :data:`RUN` with ``fields`` on top."""
    return {**RUN, **fields}


def write_table(path: Path, rows: Sequence[Mapping[str, Any]] | pd.DataFrame, table: str | None = None) -> Path:
    """Write ``rows`` as table ``table`` (default: the file name, ``runs.parquet`` → runs)."""
    name = table or path.stem
    if isinstance(rows, pd.DataFrame):
        return write_frame(name, rows, path)
    return write_rows(name, rows, path)


def curvature_rows(trial_id: str, step: int = 10, alpha: float = 2.0, layers: int = 5, k: int = 20) -> list[dict]:
    """Probe-shaped ``curvature`` rows of conv layers with an exact power law h_k = 4 σ_k^α."""
    return [
        {"trial_id": trial_id, "step": step, "layer": f"c{j}", "layer_type": "conv", "depth": j, "k": i,
         "sigma": 0.2 * i**-0.8, "h": 4.0 * (0.2 * i**-0.8) ** alpha}
        for j in range(layers) for i in range(1, k + 1)
    ]  # fmt: skip
