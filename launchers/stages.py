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

With ``tuning.edge_check: k``, :func:`choose_edge_checks` adds, for each finalist whose value
on a numeric axis (a range or a list of numbers) sits at an edge of what stage 1 searched (the
report's own rule, :func:`analysis.tuning.edge_side`), k settings beyond that edge
(:func:`analysis.tuning.beyond_edge`), screened on seed index 0 alongside stage 2. They need
nothing but the finalists and the configuration, so a resumed sweep recomputes the same ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.comparison import setting_table
from analysis.dataset import read_trial_file
from analysis.tuning import beyond_edge
from bench.config import STAGE_SCREEN, SweepConfig, TrialSpec, settings_problems
from launchers.sweep import EntryKey, entry_points, search_space
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


def choose_edge_checks(cfg: SweepConfig, finalists: dict[EntryKey, list[int]]
                       ) -> dict[EntryKey, list[tuple[int, dict[str, Any]]]]:
    """Per entry, the (tuning index, setting) of every edge check of its ``finalists``
    (positions in its ``entry_points``): each finalist's setting with one edge axis moved beyond
    the edge, ``tuning.edge_check`` values per edge, in finalist order, then axis name, then
    outward. Tuning indices continue after the entry's budget, so every setting of an entry keeps
    a distinct index. A value the optimizer's settings model rejects is dropped."""
    k = cfg.tuning.edge_check
    every = entry_points(cfg)
    out: dict[EntryKey, list[tuple[int, dict[str, Any]]]] = {}
    for key, positions in finalists.items():
        entry, points = cfg.optimizers[key[1]], every[key]
        space = search_space(entry)
        checks: list[dict[str, Any]] = []
        for position in positions:
            point = points[position][1]
            for axis in sorted(space):
                tried = [p.get(axis) for _, p in points]
                for value in beyond_edge(space[axis], tried, point.get(axis), k):
                    moved = {**point, axis: value}
                    if moved not in checks and not settings_problems(entry.name, {**entry.settings, **moved}, ""):
                        checks.append(moved)
        if checks:
            start = max(i for i, _ in points) + 1
            out[key] = [(start + i, moved) for i, moved in enumerate(checks)]
    return out
