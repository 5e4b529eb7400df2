"""The example plug-in package swept end to end against a built-in: `specbench sweep` on an embedded
Ray, a 2-worker DeepSpeed job per trial over gloo, the plug-in optimizer (an entry-point name), its
model (a module path) and its dataset (an entry-point name) beside AdamW, then `specbench report`.
The sweep is the documented example file (examples/specbench-example-plugin/sweep.yaml), cut to
one workload, two optimizers and a few steps. Run under the Ray lock (see the project's test notes)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_sweep

pytestmark = pytest.mark.integration


def test_example_plugin_sweeps_beside_a_built_in_and_reports(example_plugin, write_yaml, tmp_path):
    example = yaml.safe_load((REPO / "examples" / "specbench-example-plugin" / "sweep.yaml").read_text())
    workload = example["workloads"][0]
    assert workload["model"] == "specbench_example_plugin.models:mlp" and workload["dataset"] == "stripes"
    entries = {e["name"]: e for e in example["optimizers"]}
    doc = tiny_sweep(
        name="plugins-e2e",
        workloads=[{**workload, "model_args": {"hidden": 32}, "dataset_args": {"size": 600}}],
        optimizers=[entries["layerwise_spectral_newton"], entries["adamw"]],
    )
    doc["training"].update(steps=12, eval_every=6, log_every=3, report_every=6)
    storage = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "launchers.cli", "sweep", str(write_yaml(doc)), "--storage", str(storage)],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep_dir = storage / "plugins-e2e"
    runs = pd.concat(pd.read_parquet(p) for p in sweep_dir.glob("trials/*/runs.parquet"))
    assert sorted(runs["optimizer"]) == ["adamw", "layerwise_spectral_newton"]
    assert (runs["status"] == "completed").all() and (runs["world_size"] == 2).all()
    assert (runs["steps_completed"] == 12).all()
    assert set(runs["model"]) == {"specbench_example_plugin.models:mlp"} and set(runs["dataset"]) == {"stripes"}
    steps = pd.concat(pd.read_parquet(p) for p in sweep_dir.glob("trials/*/steps.parquet"))
    plugin = steps[steps["trial_id"] == runs.loc[runs["optimizer"] == "layerwise_spectral_newton", "trial_id"].iloc[0]]
    # The metrics hook of the base: the matrix phase's time and the owner-rank sharding's traffic.
    assert (plugin["opt_spectral_time_s"] > 0).all() and (plugin["opt_bytes_communicated"] > 0).all()
    assert plugin["train_loss"].iloc[-1] < plugin["train_loss"].iloc[0]  # it trains

    rep = subprocess.run(
        [sys.executable, "-m", "launchers.cli", "report", str(sweep_dir), "--out", str(tmp_path / "rep")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert rep.returncode == 0, rep.stderr
    report = (tmp_path / "rep" / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("|")]
    assert any("layerwise_spectral_newton" in line for line in table), report
    assert any("adamw" in line for line in table), report
