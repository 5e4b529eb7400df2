"""End to end with the real engines: `specbench sweep` starts an embedded Ray, Ray Tune runs a
Ray Train TorchTrainer per trial, each trial is a 2-worker DeepSpeed job over gloo, results land
in Parquet, and `specbench report` turns them into a table and plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, tiny_sweep

pytestmark = pytest.mark.integration


def test_sweep_runs_on_ray_and_reports(write_yaml, tmp_path):
    doc = tiny_sweep(
        name="ray-e2e",
        optimizers=[{"name": "adamw", "settings": {"lr": 0.003}}, {"name": "spectral_newton"}],
    )
    doc["training"].update(steps=8, eval_every=4, log_every=2, report_every=4)
    # Each trial reserves 60 % of the embedded Ray's memory: its CPUs would run both trials at
    # once, its memory only one after the other (resources.memory_per_worker_gib reaches Ray).
    from launchers.ray_runner import GIB, local_cluster_shape

    ray_memory_gib = local_cluster_shape()[0]["memory"] / GIB
    doc["resources"]["memory_per_worker_gib"] = round(0.3 * ray_memory_gib, 2)
    storage = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "launchers.cli", "sweep", str(write_yaml(doc)), "--storage", str(storage)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep_dir = storage / "ray-e2e"
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(record["trials"]) == 2

    runs = pd.concat(pd.read_parquet(p) for p in sweep_dir.glob("trials/*/runs.parquet"))
    assert sorted(runs["optimizer"]) == ["adamw", "spectral_newton"]
    assert (runs["status"] == "completed").all()
    assert (runs["world_size"] == 2).all()
    assert (runs["steps_completed"] == 8).all()
    first, second = runs.sort_values("started_at").itertuples()
    assert second.started_at >= first.finished_at, "two trials held more memory than the cluster has"  # to the second
    steps = pd.concat(pd.read_parquet(p) for p in sweep_dir.glob("trials/*/steps.parquet"))
    assert sorted(steps.groupby("trial_id")["step"].apply(list).iloc[0]) == [2, 4, 6, 8]

    # The sweep printed the per-optimizer table; the report command rebuilds it from Parquet.
    assert "spectral_newton" in proc.stdout and "adamw" in proc.stdout
    rep = subprocess.run(
        [sys.executable, "-m", "launchers.cli", "report", str(sweep_dir), "--out", str(tmp_path / "rep")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert rep.returncode == 0, rep.stderr
    pngs = list((tmp_path / "rep").rglob("*.png"))
    assert len(pngs) >= 2 and all(p.stat().st_size > 1000 for p in pngs)
    assert "spectral_newton" in (tmp_path / "rep" / "report.md").read_text()
