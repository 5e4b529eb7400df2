"""Results on an object store (``storage: s3://…``), against a real S3-compatible HTTP server.

The server is moto's (``moto[server]``: an S3 implementation listening on 127.0.0.1, spoken to
over HTTP by pyarrow's own S3 client exactly as AWS or MinIO would be). Each CLI run gets its
own staging directory (``SPECBENCH_STAGING``) and some tests wipe it between runs: that is a
run on another machine, which has only what the store holds.

- the mirror's files round-trip, uploads follow every atomic write, a missing bucket is a
  clear error;
- a trial whose worker is killed resumes on a "fresh machine" from the checkpoint in the store;
- a Ray sweep writes everything to the store; ``status``, a re-run (which skips the finished
  trial), ``consolidate`` and ``report`` work from the store alone;
- bad storage input: an unknown scheme, an unreachable bucket → exit 2, nothing started.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, tiny_sweep

moto_server = pytest.importorskip("moto.server")
pafs = pytest.importorskip("pyarrow.fs")

pytestmark = pytest.mark.integration

BUCKET = "bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible server on localhost with an empty bucket; yields ``uri(prefix)``."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    query = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    pafs.FileSystem.from_uri(f"s3://{BUCKET}?{query}&allow_bucket_creation=true")[0].create_dir(BUCKET)

    def uri(prefix: str, bucket: str = BUCKET) -> str:
        return f"s3://{bucket}/{prefix}?{query}"

    try:
        yield uri
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _store(uri: str):
    fs, root = pafs.FileSystem.from_uri(uri)
    return fs, root


def _remote_files(uri: str) -> set[str]:
    fs, root = _store(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File}


def _env(staging: Path) -> dict[str, str]:
    return {**os.environ, **CREDENTIALS, "SPECBENCH_STAGING": str(staging)}


def _cli(*args: str, staging: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launchers.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=_env(staging))


# --- the mirror itself -------------------------------------------------------------------------

def test_mirror_uploads_every_atomic_write_and_pulls_into_a_fresh_staging_tree(s3, tmp_path, monkeypatch):
    from bench.results import remote
    from bench.results.writer import trial_dir, write_atomic_text, write_rows

    monkeypatch.setenv("SPECBENCH_STAGING", str(tmp_path / "a"))
    uri = s3("unit")
    mirror = remote.activate(uri)
    try:
        mirror.check_writable()
        tdir = trial_dir(uri, "sw", "t1")
        assert tdir.is_relative_to(tmp_path / "a")  # results are staged locally …
        write_rows("steps", [{"step": s, "train_loss": 1.0 / s} for s in (1, 2, 3)], tdir / "steps.parquet")
        write_atomic_text('{"name": "sw"}', tdir.parent.parent / "sweep.json")
        assert _remote_files(uri) == {"sw/trials/t1/steps.parquet", "sw/sweep.json"}  # … and uploaded at once

        # A second machine: an empty staging tree, filled from the store.
        monkeypatch.setenv("SPECBENCH_STAGING", str(tmp_path / "b"))
        other = remote.Mirror(uri)
        assert other.pull_tree("sw") == 2
        got = pd.read_parquet(other.local / "sw" / "trials" / "t1" / "steps.parquet")
        assert list(got["step"]) == [1, 2, 3] and got["train_loss"].iloc[2] == pytest.approx(1 / 3)
        assert other.list_dirs("sw/trials") == ["t1"]

        other.move("sw", "sw.replaced")
        assert _remote_files(uri) == {"sw.replaced/trials/t1/steps.parquet", "sw.replaced/sweep.json"}

        with pytest.raises(OSError, match="(?i)bucket"):
            remote.Mirror(s3("x", bucket="no-such-bucket")).check_writable()
    finally:
        remote._ACTIVE.remove(mirror)


def test_a_failure_row_never_replaces_a_row_already_in_the_store(s3, tmp_path, monkeypatch):
    # The trial's coordinator (or the driver) records a failure when rank 0 wrote no row; on a
    # cluster rank 0 may have written it on another node, so the store is asked, not only the
    # local staging tree.
    from bench.results import remote
    from bench.trial import TrialState, record_failure
    from bench.trial.rows import write_run_row
    from launchers.sweep import expand, parse_config

    uri = s3("failure-row")
    (spec,) = expand(parse_config(tiny_sweep()))
    monkeypatch.setenv("SPECBENCH_STAGING", str(tmp_path / "node-a"))
    mirror = remote.activate(uri)
    try:
        from bench.results.writer import trial_dir

        write_run_row(spec, trial_dir(uri, spec.sweep_name, spec.trial_id), TrialState(error="ValueError: rank 0's own"), 1)
        monkeypatch.setenv("SPECBENCH_STAGING", str(tmp_path / "node-b"))  # another machine: nothing staged
        remote._ACTIVE.remove(mirror)
        mirror = remote.activate(uri)
        assert record_failure(spec, uri, "RuntimeError: the coordinator's") is False
        other = remote.Mirror(uri)
        other.pull_tree(spec.sweep_name)
        row = pd.read_parquet(other.local / spec.sweep_name / "trials" / spec.trial_id / "runs.parquet").iloc[0]
        assert row["error"] == "ValueError: rank 0's own"
        # With no row anywhere, the failure is recorded (and uploaded).
        (spec2,) = expand(parse_config(tiny_sweep(name="second")))
        assert record_failure(spec2, uri, "RuntimeError: lost") is True
        assert f"second/trials/{spec2.trial_id}/runs.parquet" in _remote_files(uri)
    finally:
        remote._ACTIVE.remove(mirror)


# --- a trial resumes from the store's checkpoint on a fresh machine ---------------------------

def test_killed_trial_resumes_from_the_stores_checkpoint_on_a_fresh_machine(s3, write_yaml, tmp_path):
    from launchers.sweep import expand, parse_config

    uri = s3("resume")
    doc = tiny_sweep(name="store-resume", storage=uri)
    doc["training"].update(steps=300, checkpoint_every=50, log_every=1, eval_every=100)
    cfg_path = write_yaml(doc)
    (spec,) = expand(parse_config(doc))
    rel = f"store-resume/trials/{spec.trial_id}"
    fs, root = _store(uri)

    first_staging = tmp_path / "machine-a"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "launchers.cli", "train", str(cfg_path)], cwd=REPO,
                                 stdout=log, stderr=subprocess.STDOUT, env=_env(first_staging))
        pidfile = first_staging / "s3" / BUCKET / "resume" / rel / "workers" / "rank1.pid"
        deadline = time.time() + 300
        while time.time() < deadline:
            # Kill only once the checkpoint is complete *in the store* (its pointer comes last).
            if fs.get_file_info(f"{root}/{rel}/checkpoint/latest").type == pafs.FileType.File and pidfile.is_file():
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
                break
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        else:
            first.kill()
            raise AssertionError("no checkpoint reached the store in time")
        assert first.wait(timeout=300) != 0
    assert f"{rel}/runs.parquet" not in _remote_files(uri)

    shutil.rmtree(first_staging)  # the next attempt runs where nothing of the first is on disk
    second = _cli("train", str(cfg_path), staging=tmp_path / "machine-b")
    assert second.returncode == 0, second.stderr[-3000:]

    files = _remote_files(uri)
    assert {f"{rel}/runs.parquet", f"{rel}/steps.parquet"} <= files
    assert not any("/checkpoint/" in f for f in files)  # removed from the store once the trial finished
    fs_steps = pd.read_parquet(f"{root}/{rel}/steps.parquet", filesystem=fs)
    assert list(fs_steps["step"]) == list(range(1, 301))  # complete, in order, no duplicates
    run = pd.read_parquet(f"{root}/{rel}/runs.parquet", filesystem=fs).iloc[0]
    assert run["status"] == "completed" and run["resumed_from_step"] >= 50


# --- a Ray sweep, then every reader, from the store alone -------------------------------------

def test_ray_sweep_on_the_store_then_status_rerun_consolidate_and_report_from_the_store(s3, write_yaml, tmp_path):
    uri = s3("sweeps")
    cfg_path = write_yaml(tiny_sweep(name="store-sweep", storage=uri))
    run = _cli("sweep", str(cfg_path), staging=tmp_path / "driver")
    assert run.returncode == 0, run.stderr[-3000:]
    files = _remote_files(uri)
    assert "store-sweep/sweep.json" in files
    trial_files = {f.split("/", 3)[3] for f in files if f.startswith("store-sweep/trials/")}
    assert {"runs.parquet", "steps.parquet"} <= trial_files

    fresh = tmp_path / "laptop"  # another machine: only the store
    status = _cli("status", "store-sweep", "--storage", uri, staging=fresh, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "1 completed" in status.stdout

    again = _cli("sweep", str(cfg_path), staging=tmp_path / "other-driver")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "running 0 of 1 trials" in again.stderr

    sweep_uri = uri.replace("sweeps?", "sweeps/store-sweep?")
    cons = _cli("consolidate", sweep_uri, "--out", str(tmp_path / "merged"), staging=fresh, timeout=120)
    assert cons.returncode == 0, cons.stderr
    assert len(pd.read_parquet(tmp_path / "merged" / "steps.parquet")) == 6
    report = _cli("report", sweep_uri, "--out", str(tmp_path / "report"), staging=fresh, timeout=300)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "report.md").is_file()


# --- bad storage input ---------------------------------------------------------------------------

def test_bad_storage_is_refused_before_anything_starts(s3, write_yaml, tmp_path):
    staging = tmp_path / "staging"
    odd = _cli("sweep", str(write_yaml(tiny_sweep(storage="ftp://host/results"))), staging=staging)
    assert odd.returncode == 2 and "unsupported scheme 'ftp'" in odd.stderr and "Traceback" not in odd.stderr

    missing = _cli("sweep", str(write_yaml(tiny_sweep(storage=s3("r", bucket="absent")), "m.yaml")), staging=staging)
    assert missing.returncode == 2, missing.stderr
    assert "is not writable" in missing.stderr and "Traceback" not in missing.stderr
    assert not staging.exists()  # nothing was created

    unreadable = _cli("status", "x", "--storage", s3("r", bucket="absent"), staging=staging, timeout=120)
    assert unreadable.returncode == 2 and "Traceback" not in unreadable.stderr
