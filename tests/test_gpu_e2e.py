"""scripts/gpu_e2e.sh (issue 17 item 2) at its CPU smoke scale, the same code path as on a GPU.

The script runs with Ray made unimportable (a stub package on PYTHONPATH that raises on import),
as on the lent GPU machine, which has no Ray: every phase must run through ``specbench train`` and
``python -m bench.profile.runner`` alone. No Ray starts, so no lock is needed. The report's
arithmetic (step time relative to Muon, probe phases summed over layers) is checked against
hand-built tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import gpu_e2e

REPO = Path(__file__).resolve().parents[1]
OPTIMIZERS = {"adamw", "spectral_newton", "muon", "shampoo", "soap"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    root = tmp_path_factory.mktemp("gpu-e2e")
    stub = root / "no-ray" / "ray"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('no Ray on the GPU machine (test stub)')\n")
    env = {**os.environ, "SCALE": "smoke", "RESULTS": str(root / "results"), "PYTHON": sys.executable,
           "BUDGET_S": "400", "PYTHONPATH": str(root / "no-ray")}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", "scripts/gpu_e2e.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=450)
    return proc, root / "results" / "report"


@pytest.mark.integration
def test_smoke_run_writes_parquet_and_report_without_ray(smoke):
    proc, report = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = report / "data"
    runs = pd.read_parquet(data / "runs.parquet")
    lm = runs[runs["sweep_name"] == gpu_e2e.LM_SWEEP]
    # Every optimizer entry trained its few steps in bf16, with a throughput measured.
    trained = lm[~lm["optimizer_label"].str.startswith(gpu_e2e.PROBE_LABEL)]
    assert set(trained["optimizer_label"]) == OPTIMIZERS
    assert (trained["status"] == "completed").all() and (trained["steps_completed"] == 3).all()
    assert (trained["config.training.precision"] == "bf16").all()
    assert (trained["median_tokens_per_s"] > 0).all() and (trained["median_mfu"] > 0).all()
    quick = runs[runs["sweep_name"] == gpu_e2e.QUICKSTART_SWEEP]
    assert set(quick["optimizer_label"]) == {"adamw", "spectral_newton"} and (quick["status"] == "completed").all()

    profile = pd.read_parquet(data / "profile.parquet")
    probe = profile[profile["op"] == "curvature_probe"]
    assert set(probe["probe_mode"]) == {"full", "kronecker"}
    hvp = probe[probe["phase"] == "hvp"].groupby("probe_mode")["seconds"].sum()
    assert hvp["full"] > 0 and hvp["kronecker"] == 0  # mode kronecker computes no HVP
    step = profile[profile["op"] == "spectral_step"]
    assert sorted(step["phase"]) == ["redundant", "sharded"] and (step["ranks"] == 1).all()
    assert (step["max_abs_diff_vs_redundant"] <= 1e-6 * step["max_abs_param"]).all()

    text = (report / "gpu_e2e.md").read_text()
    for heading in ("## 1. Optimizers", "## 2. Curvature probe", "## 3. Spectral Newton step"):
        assert heading in text
    assert gpu_e2e.MFU_REFERENCE_MARK in text
    assert all(f"| {name} " in text for name in OPTIMIZERS)


def test_step_time_relative_to_muon_and_probe_phases():
    runs = pd.DataFrame({
        "sweep_name": [gpu_e2e.LM_SWEEP] * 3 + ["other"],
        "optimizer_label": ["muon", "spectral_newton", "probe[full]", "muon"],
        "status": "completed", "steps_completed": 10, "num_parameters": 5,
        "median_step_time_s": [0.2, 0.36, 9.0, 1.0], "median_tokens_per_s": 1.0, "median_mfu": 0.1,
        "peak_flops_source": "datasheet:H200",
    })
    table = gpu_e2e.optimizer_table(runs).set_index("optimizer_label")
    assert list(table.index) == ["muon", "spectral_newton"]  # probe trials and other sweeps left out
    assert table.loc["spectral_newton", "step_time_vs_muon"] == pytest.approx(0.36 / 0.2)
    assert table.loc["muon", "step_time_vs_muon"] == pytest.approx(1.0)

    layer = {"sweep_name": gpu_e2e.LM_SWEEP, "op": "curvature_probe", "probe_mode": "full", "peak_memory_bytes": 2**30}
    profile = pd.DataFrame([
        {**layer, "layer": "a", "phase": "hvp", "seconds": 1.0},
        {**layer, "layer": "b", "phase": "hvp", "seconds": 2.5},
        {**layer, "layer": "a", "phase": "total", "seconds": 1.0},
        {**layer, "layer": "b", "phase": "total", "seconds": 2.5},
        {**layer, "layer": "*", "phase": "grad_pass", "seconds": 0.5},
        {**layer, "layer": "*", "phase": "total", "seconds": 4.25},
    ])
    probe = gpu_e2e.probe_table(profile).set_index("phase")
    assert probe.loc["hvp", "seconds"] == pytest.approx(3.5) and probe.loc["hvp", "layers"] == 2
    assert probe.loc["whole probe", "seconds"] == pytest.approx(4.25)
    assert "total" not in probe.index  # the layers' totals would count the hvp twice


def test_train_refuses_an_out_of_range_trial_before_any_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launchers.cli", "train", "configs/quickstart.yaml", "--storage", str(tmp_path),
         "--trial", "0", "99"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--trial 99 is out of range" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "quickstart").exists()  # trial 0 did not start
