"""The CPU-sized variant of the paper's Table 3 comparison (configs/vision/table3_cpu.yaml): one
setting of each of the five optimizers trains the built-in CNN on digits under 2-worker
DeepSpeed, and every loss falls."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import REPO

from launchers.local import run_local
from launchers.sweep import expand, load_config

pytestmark = pytest.mark.integration


def test_every_optimizer_of_the_cpu_table3_config_trains(tmp_path):
    trials = expand(load_config(REPO / "configs/vision/table3_cpu.yaml"))
    first = {}
    for t in trials:
        first.setdefault(t.optimizer, t)
    assert sorted(first) == ["adamw", "muon", "shampoo", "soap", "spectral_newton"]
    for name, spec in first.items():
        assert run_local(spec, tmp_path), name
        tdir = tmp_path / spec.sweep_name / "trials" / spec.trial_id
        steps = pd.read_parquet(tdir / "steps.parquet")
        run = pd.read_parquet(tdir / "runs.parquet").iloc[0]
        assert run["status"] == "completed", (name, run["error"])
        assert steps["train_loss"].iloc[-1] < 0.7 * steps["train_loss"].iloc[0], name
        assert run["test_metric"] > 0.5, (name, run["test_metric"])
