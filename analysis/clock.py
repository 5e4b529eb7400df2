"""Training wall-clock: the ``steps`` table's elapsed time with the curvature-probe pauses taken out.

``steps.wall_time_s`` is the time since the trial started, so it includes every curvature probe
run so far; ``steps.probe_time_s`` is the probe time of each logged interval (the trial loop
times the probe outside the step timer). A probe is a measurement, not training: on a
wall-clock axis or in a time-to-target it would make a probed optimizer look slow by however
long the probe took. Every wall-clock axis and cost of the analysis therefore uses

    train_wall_time_s = wall_time_s − Σ probe_time_s over the trial's rows up to and including this one

(the probe of an interval runs before the row that closes it is written, so that row's own
probe time is already in its ``wall_time_s``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The derived column.
TRAIN_WALL = "train_wall_time_s"
#: Axis label of :data:`TRAIN_WALL`.
TRAIN_WALL_LABEL = "training wall-clock (s, probe pauses excluded)"


def train_wall_time(steps: pd.DataFrame, key: str) -> pd.Series:
    """:data:`TRAIN_WALL` for every row of ``steps`` (trials identified by column ``key``).

    A step logged twice by one trial (a resumed run rewrote it) counts its probe time once.
    Rows without ``wall_time_s`` give NaN; a table without ``probe_time_s`` had no probe to
    remove.
    """
    wall = pd.to_numeric(steps["wall_time_s"], errors="coerce").astype(float) if "wall_time_s" in steps else None
    if wall is None:
        return pd.Series(np.nan, index=steps.index, dtype=float)
    if "probe_time_s" not in steps.columns:
        return wall
    probe = pd.DataFrame({
        "_k": steps[key].to_numpy(), "step": steps["step"].to_numpy(),
        "probe": pd.to_numeric(steps["probe_time_s"], errors="coerce").fillna(0.0).to_numpy(dtype=float),
    })  # fmt: skip
    per_step = probe.drop_duplicates(["_k", "step"], keep="last").sort_values(["_k", "step"], kind="stable")
    per_step["paused"] = per_step.groupby("_k")["probe"].cumsum()
    paused = probe[["_k", "step"]].merge(per_step[["_k", "step", "paused"]], on=["_k", "step"], how="left")
    return wall - paused["paused"].to_numpy(dtype=float)
