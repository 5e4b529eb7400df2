"""Nothing lost: a killed worker's trial resumes from its DeepSpeed checkpoint, re-running a sweep
skips finished trials, and a different config under the same name is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, tiny_sweep

from launchers import sweep_state

pytestmark = pytest.mark.integration


def _doc(name: str, steps: int = 300, every: int = 50) -> dict:
    doc = tiny_sweep(name=name)
    doc["training"].update(steps=steps, checkpoint_every=every, log_every=1, eval_every=100)
    return doc


class _Run:
    """A CLI process whose output goes to a file (a pipe nobody reads would block it)."""

    def __init__(self, *args: str, log: Path):
        self.log = log
        self._fh = open(log, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen([sys.executable, "-m", "launchers.cli", *args], cwd=REPO,
                                     stdout=self._fh, stderr=subprocess.STDOUT, text=True)

    def poll(self):
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._fh.close()

    def output(self) -> str:
        return self.log.read_text()[-4000:]


def _cli(*args: str, log: Path) -> _Run:
    return _Run(*args, log=log)


def _kill_rank_after_first_checkpoint(trial_dir: Path, proc: _Run, rank: int = 1,
                                      timeout: float = 300) -> int:
    """Wait for the first checkpoint, then SIGKILL the worker process of ``rank``."""
    latest = trial_dir / "checkpoint" / "latest"
    pidfile = trial_dir / "workers" / f"rank{rank}.pid"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if latest.is_file() and pidfile.is_file():
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGKILL)
            return pid
        if proc.poll() is not None:
            raise AssertionError("the run ended before a checkpoint appeared:\n" + proc.output())
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared in time")


def _steps(trial_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(trial_dir / "steps.parquet")


def _assert_complete_steps(df: pd.DataFrame, steps: int) -> None:
    assert df["step"].is_monotonic_increasing and df["step"].is_unique
    assert list(df["step"]) == list(range(1, steps + 1))


@pytest.mark.parametrize("optimizer", [{"name": "adamw", "settings": {"lr": 0.003}},
                                       {"name": "spectral_newton", "settings": {"lr": 0.05}}],
                         ids=["adamw", "spectral_newton_sharded"])
def test_killed_worker_resumes_from_checkpoint_without_ray(write_yaml, tmp_path, optimizer):
    from launchers.sweep import expand, parse_config

    doc = _doc("resume-local")
    doc["optimizers"] = [optimizer]
    # Probe rows must survive the kill and the resume too (no duplicates, none missing).
    doc["probes"] = {"every": 100, "settings": {"batch_size": 64, "micro_batch_size": 64, "top_k": 5}}
    cfg_path = write_yaml(doc)
    (spec,) = expand(parse_config(doc))
    ref_store, store = tmp_path / "ref", tmp_path / "run"
    ref = _cli("train", str(cfg_path), "--storage", str(ref_store), log=tmp_path / "ref.log")
    assert ref.wait(timeout=600) == 0, ref.output()

    trial_dir = store / "resume-local" / "trials" / spec.trial_id
    first = _cli("train", str(cfg_path), "--storage", str(store), log=tmp_path / "first.log")
    _kill_rank_after_first_checkpoint(trial_dir, first)
    assert first.wait(timeout=300) != 0
    assert not (trial_dir / "runs.parquet").exists()

    second = _cli("train", str(cfg_path), "--storage", str(store), log=tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, second.output()
    got = _steps(trial_dir)
    want = _steps(ref_store / "resume-local" / "trials" / spec.trial_id)
    _assert_complete_steps(got, 300)
    # Resuming restores model, optimizer, lr schedule and data position: the same losses.
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5, atol=1e-6)
    run = pd.read_parquet(trial_dir / "runs.parquet").iloc[0]
    assert run["status"] == "completed" and run["resumed_from_step"] >= 50
    assert not (trial_dir / "checkpoint").exists()  # removed once the trial finished
    curv = pd.read_parquet(trial_dir / "curvature.parquet")
    assert sorted(curv["step"].unique()) == [100, 200, 300]
    assert not curv.duplicated(["step", "layer", "k"]).any()


def test_ray_retries_a_killed_worker_then_rerun_skips_and_other_config_is_refused(write_yaml, tmp_path):
    from launchers.sweep import expand, parse_config

    doc = _doc("resume-ray")
    doc["resources"]["max_retries"] = 2
    cfg_path = write_yaml(doc)
    (spec,) = expand(parse_config(doc))
    store = tmp_path / "res"
    trial_dir = store / "resume-ray" / "trials" / spec.trial_id

    proc = _cli("sweep", str(cfg_path), "--storage", str(store), log=tmp_path / "sweep.log")
    killed = _kill_rank_after_first_checkpoint(trial_dir, proc)
    assert proc.wait(timeout=900) == 0, proc.output()
    new_pid = int((trial_dir / "workers" / "rank1.pid").read_text())
    assert new_pid != killed  # a new worker process took over
    _assert_complete_steps(_steps(trial_dir), 300)
    run = pd.read_parquet(trial_dir / "runs.parquet").iloc[0]
    assert run["status"] == "completed" and run["resumed_from_step"] >= 50

    # Re-running the same sweep finds nothing to do and does not touch the results.
    mtime = (trial_dir / "runs.parquet").stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "launchers.cli", "sweep", str(cfg_path), "--storage", str(store)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "running 0 of 1 trials" in again.stderr
    assert (trial_dir / "runs.parquet").stat().st_mtime_ns == mtime

    status = subprocess.run([sys.executable, "-m", "launchers.cli", "status", "resume-ray", "--storage", str(store)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "1 completed" in status.stdout

    # A different config under the same name is refused; nothing is overwritten.
    doc["training"]["steps"] = 301
    other = subprocess.run([sys.executable, "-m", "launchers.cli", "sweep", str(write_yaml(doc, "other.yaml")),
                            "--storage", str(store)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "different config" in other.stderr and "Traceback" not in other.stderr
    assert (trial_dir / "runs.parquet").stat().st_mtime_ns == mtime

    cons = subprocess.run([sys.executable, "-m", "launchers.cli", "consolidate", str(store / "resume-ray")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cons.returncode == 0, cons.stderr
    merged = pd.read_parquet(store / "resume-ray" / "consolidated" / "steps.parquet")
    assert len(merged) == 300 and merged["step"].is_unique


def test_force_new_moves_old_results_aside(tmp_path):
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text('{"fingerprint": "old"}')
    with pytest.raises(sweep_state.SweepMismatch):
        sweep_state.check_or_replace(sweep_dir, ("new",), force_new=False)
    moved = sweep_state.check_or_replace(sweep_dir, ("new",), force_new=True)
    assert moved is not None and (moved / "sweep.json").is_file() and not sweep_dir.exists()
    assert sweep_state.check_or_replace(sweep_dir, ("new",), force_new=False) is None
