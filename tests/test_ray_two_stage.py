"""The two-stage tuning protocol end to end on the real engines: `specbench sweep` screens an
entry's settings on one seed (Ray Tune, one DeepSpeed worker per trial), picks the finalist from
those trials' Parquet files, runs it on fresh seeds with the untuned entry, records the stage of
every trial in Parquet, checks the finalist's lr beyond its edge on the screening seed (outside
the budget), resumes a lost stage-2 trial to the same finalist, and `specbench report` shows the
paired tests and the tuning section with the edge check's verdict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, tiny_sweep

pytestmark = pytest.mark.integration


def _sweep(path, storage):
    return subprocess.run([sys.executable, "-m", "launchers.cli", "sweep", str(path), "--storage", str(storage)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


def test_two_stage_sweep_selects_finalists_from_parquet_and_resumes(write_yaml, tmp_path):
    doc = tiny_sweep(
        name="two-stage", seeds=2,
        optimizers=[
            {"name": "adamw", "search": {"lr": {"low": 0.0001, "high": 0.01, "log": True}}},
            {"name": "muon", "settings": {"lr": 0.02, "ns_dtype": "float32"}},
        ],
        # Two quasi-random lrs: the better is the extreme tried on its side within the outer
        # half of the range, an edge either way, so the driver checks one value beyond it.
        tuning={"method": "halton", "budget": 2, "finalists": 1, "edge_check": 1},
        resources={"num_workers": 1, "cpus_per_worker": 0.99},
    )
    doc["training"].update(steps=6, eval_every=3, log_every=3)
    path, storage = write_yaml(doc), tmp_path / "results"
    proc = _sweep(path, storage)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep_dir = storage / "two-stage"
    runs = pd.concat(pd.read_parquet(p) for p in sweep_dir.glob("trials/*/runs.parquet"))
    assert (runs["status"] == "completed").all()
    stages = runs.groupby(["optimizer", "tuning_stage"])["seed_index"].apply(sorted).to_dict()
    # adamw: both settings screened on seed 0, one finalist on seeds 1, 2, its edge checked on
    # seed 0; muon (one setting) goes straight to stage 2.
    assert stages == {("adamw", 1): [0, 0], ("adamw", 2): [1, 2], ("adamw", 3): [0], ("muon", 2): [1, 2]}
    screen = runs[runs["tuning_stage"] == 1].set_index("tuning_index")["best_eval_metric"]
    finalist = runs.loc[runs["tuning_stage"] == 2, ["optimizer", "tuning_index"]]
    assert set(finalist.loc[finalist["optimizer"] == "adamw", "tuning_index"]) == {int(screen.idxmax())}
    lrs = {int(i): json.loads(s)["lr"] for i, s in zip(runs["tuning_index"], runs["optimizer_settings"], strict=True)
           if json.loads(s).get("lr") and i >= 0}
    chosen, other = lrs[int(screen.idxmax())], lrs[1 - int(screen.idxmax())]
    assert set(lrs) == {0, 1, 2}  # the check's index follows the budget's
    assert (lrs[2] > chosen > other) or (lrs[2] < chosen < other)  # outward, beyond the chosen lr
    assert len(json.loads((sweep_dir / "sweep.json").read_text())["trials"]) == 7

    # A lost stage-2 trial is found again from stage 1's Parquet and re-run alone.
    lost = runs.loc[(runs["optimizer"] == "adamw") & (runs["tuning_stage"] == 2), "trial_id"].iloc[0]
    shutil.rmtree(sweep_dir / "trials" / lost)
    again = _sweep(path, storage)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "running 1 of 7 trials" in again.stderr
    assert (sweep_dir / "trials" / lost / "runs.parquet").is_file()

    rep = subprocess.run([sys.executable, "-m", "launchers.cli", "report", str(sweep_dir), "--out", str(tmp_path / "rep")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### Paired per-seed differences" in md and "| adamw " in md.split("### Paired")[1].split("###")[0]
    assert "### Tuning budget: stages, coverage and edge choices" in md
    assert any(f"EDGE, {v}" in md for v in ("bracketed", "flat beyond", "better beyond"))  # the check's verdict
    assert "beyond the edge (validation, screening seed)" in md
    assert list((tmp_path / "rep" / "plots").glob("tuning__*adamw.png"))
