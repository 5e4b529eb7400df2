"""Whether a trial's step times measure the optimizer and the model, or its input pipeline.

The ``steps`` table records, per logged interval, the mean seconds per step the loop waited for
its micro-batches (``data_time_s``, inside ``step_time_s``). A trial's *input share* is the median
over its logged rows of ``data_time_s / step_time_s``; above :data:`INPUT_BOUND_SHARE` the trial is
flagged **input-bound**: a comparison of its step times or time-to-target would partly compare
input pipelines (more loader workers, a token cache, or faster storage would change it).
Trials written before the column existed (schema 2) have no share and are never flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from analysis.dataset import TRIAL_PATH
from analysis.summary import WORKLOAD
from analysis.tables import frame_grid

#: Share of the step spent waiting for input above which a trial is input-bound.
INPUT_BOUND_SHARE = 0.10


def input_shares(steps: pd.DataFrame) -> pd.Series:
    """Per trial (indexed like the runs: ``trial_path``, else ``trial_id``), the median over
    logged rows of ``data_time_s / step_time_s``; trials with no measured row are absent."""
    key = TRIAL_PATH if TRIAL_PATH in steps.columns else "trial_id"
    if steps.empty or "data_time_s" not in steps.columns:
        return pd.Series(dtype=float)
    rows = steps[(steps["step_time_s"] > 0) & steps["data_time_s"].notna()]
    return (rows["data_time_s"] / rows["step_time_s"]).groupby(rows[key]).median()


@dataclass
class InputSection:
    """The report's "Input pipeline" section: per workload, trials measured, median and largest
    input share, input-bound trials; ``text`` is the one terminal line."""

    table: pd.DataFrame
    bound: list[str] = field(default_factory=list)  # trial ids
    text: str = ""
    markdown: list[str] = field(default_factory=list)


def input_section(runs: pd.DataFrame, steps: pd.DataFrame) -> InputSection | None:
    """The section, or None when no trial measured its input wait."""
    shares = input_shares(steps)
    if shares.empty:
        return None
    key = TRIAL_PATH if TRIAL_PATH in runs.columns and TRIAL_PATH in steps.columns else "trial_id"
    trials = runs.set_index(key, drop=False)[[*WORKLOAD, "trial_id"]].join(shares.rename("input_share"), how="inner")
    trials["input_bound"] = trials["input_share"] > INPUT_BOUND_SHARE
    table = trials.groupby(WORKLOAD, sort=True).agg(
        trials=("input_share", "size"), median_input_share=("input_share", "median"),
        max_input_share=("input_share", "max"), input_bound=("input_bound", "sum"),
    ).reset_index()
    bound = sorted(trials.loc[trials["input_bound"], "trial_id"].astype(str))
    limit = f"{INPUT_BOUND_SHARE:.0%}"
    text = (f"input pipeline: {len(bound)} of {len(trials)} trials input-bound (waiting for input > {limit} of the "
            f"step): {', '.join(bound)}" if bound else
            f"input pipeline: no trial input-bound (largest wait {trials['input_share'].max():.1%} of the step; "
            f"the limit is {limit})")
    markdown = [
        "## Input pipeline", "",
        f"Share of each step the loop waited for input (`data_time_s / step_time_s`, median over a trial's "
        f"logged steps). A trial above {limit} is **input-bound**: its step times measure its input pipeline "
        "as well as the optimizer and the model.", "",
        frame_grid(table, [*WORKLOAD, "trials", "median_input_share", "max_input_share", "input_bound"],
                   integers={"trials", "input_bound"}),
        "",
        (f"**Input-bound trials:** {', '.join(f'`{t}`' for t in bound)}" if bound else "No trial is input-bound."),
        "",
    ]
    return InputSection(table, bound, text, markdown)
