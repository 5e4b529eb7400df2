"""The two-stage tuning protocol's second stage, chosen from the first stage's Parquet results.

With ``tuning.finalists: N`` (``bench.config.TuningConfig``) stage 1 screens every setting of
an entry on seed index 0; this module reads those trials' ``runs`` rows and picks each entry's
finalists, which :func:`launchers.sweep.expand` turns into stage-2 trials on fresh seeds.

The ranking is the comparison's own (:func:`analysis.comparison.setting_table`: the validation
metric in the metric's direction), so the driver and the report never disagree on what "best"
means; a setting whose screening trial diverged or failed is never a finalist. Everything is
recomputed from the Parquet files on every run, so an interrupted sweep resumes to the same
finalists; stage 2 waits until every stage-1 trial has finished (completed or diverged), since
a retried screening trial could change the choice.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.comparison import setting_table
from analysis.dataset import read_trial_file
from bench.config import STAGE_SCREEN, SweepConfig, TrialSpec
from launchers.sweep import EntryKey, entry_points
from launchers.sweep_state import FINISHED, states

_GROUP = "_entry_key"


def screening(cfg: SweepConfig, trials: list[TrialSpec]) -> dict[EntryKey, list[TrialSpec]]:
    """Each screened entry's stage-1 trials, in the order of its :func:`entry_points`.

    ``trials`` is :func:`launchers.sweep.expand`'s list: its stage-1 trials come entry by entry
    (one per setting), in the same order as ``entry_points``, which is what maps them back.
    """
    ones = iter(t for t in trials if t.tuning_stage == STAGE_SCREEN)
    out: dict[EntryKey, list[TrialSpec]] = {}
    for key, points in entry_points(cfg).items():
        if cfg.tuning.finalists and len(points) > cfg.tuning.finalists:
            out[key] = [next(ones) for _ in points]
    return out


def choose_finalists(cfg: SweepConfig, trials: list[TrialSpec], sweep_dir: Path) -> dict[EntryKey, list[int]] | None:
    """Per screened entry, the positions (in its ``entry_points``) of its best
    ``tuning.finalists`` settings on stage 1's validation metric; None while a stage-1 trial has
    not finished. An entry whose screening settings all diverged gets no finalist."""
    groups = screening(cfg, trials)
    ids = [t.trial_id for ts in groups.values() for t in ts]
    if any(s not in FINISHED for s in states(sweep_dir, ids).values()):
        return None
    frames = []
    for key, ts in groups.items():
        for t in ts:
            row = read_trial_file(sweep_dir / "trials" / t.trial_id / "runs.parquet", table="runs").to_pandas()
            frames.append(row.assign(**{_GROUP: f"{key[0]}/{key[1]}"}))
    if not frames:
        return {}
    table = setting_table(pd.concat(frames, ignore_index=True), by=_GROUP)
    table = table[(table["frac_lost"] == 0) & table["val_metric_mean"].notna()]
    out: dict[EntryKey, list[int]] = {}
    for key, ts in groups.items():
        position = {(t.optimizer_label, t.tuning_index): i for i, t in enumerate(ts)}
        best = table[table["optimizer"] == f"{key[0]}/{key[1]}"].sort_values("selection_rank")
        out[key] = [position[(r.optimizer_label, r.tuning_index)] for r in best.head(cfg.tuning.finalists).itertuples()]
    return out
