"""A sweep of several trials (real Ray, real DeepSpeed over gloo) over a local text corpus
tokenizes it exactly once: the driver builds the token-cache entry before any trial starts, every
trial and rank maps it, every runs row names it; `specbench data` sees and clears it."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, tiny_sweep
from test_data_cache import _corpus

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launchers.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)


def test_a_sweep_tokenizes_its_corpus_once(write_yaml, tmp_path):
    corpus = _corpus(tmp_path / "corpus.jsonl", 800)
    doc = tiny_sweep(name="lm-cache", seeds=1, workloads=[{
        "model": "builtin:transformer", "model_args": {"d_model": 16, "n_layer": 1, "n_head": 2},
        "dataset": str(corpus), "dataset_args": {"seq_len": 16}}],
        optimizers=[{"name": "adamw", "settings": {"lr": 0.003}}, {"name": "muon"}])
    doc["training"].update(steps=4, eval_every=4, log_every=2, report_every=4)
    config, storage = write_yaml(doc), tmp_path / "results"
    proc = _cli("sweep", str(config), "--storage", str(storage))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "built token cache entry" in proc.stderr

    cache = storage / "_data_cache"
    builds = [json.loads(line) for line in (cache / "builds.log").read_text().splitlines()]
    runs = pd.concat(pd.read_parquet(p) for p in (storage / "lm-cache").glob("trials/*/runs.parquet"))
    # Two trials of two ranks each run at once (4 × 0.49 CPU): four readers, one build.
    assert len(runs) == 2 and (runs["status"] == "completed").all()
    assert [b["key"] for b in builds] == list(runs["data_cache_key"].unique())
    assert "## Input pipeline" in (storage / "lm-cache" / "report" / "report.md").read_text()

    prepare = _cli("data", "prepare", str(config), "--storage", str(storage))
    assert prepare.returncode == 0 and f"found token cache entry {builds[0]['key']}" in prepare.stderr
    listed = _cli("data", "list", str(config), "--storage", str(storage))
    assert listed.returncode == 0 and builds[0]["key"] in listed.stdout and "1 entry" in listed.stdout
    cleared = _cli("data", "clear", str(cache))
    assert cleared.returncode == 0 and "removed 1 entry" in cleared.stdout
    assert not (cache / builds[0]["key"]).exists()
