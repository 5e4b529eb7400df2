"""The profiler's data section (bench/profile/data.py) on a small generated corpus and image set:
every mode reaches its first step over the same tokens, the cache modes name one entry, and the
image rows compare the pipeline's rate with the model's. (The measured table is in the README.)"""

from __future__ import annotations

import json

import pytest

from bench.profile.config import DataConfig
from bench.profile.data import MODES, generate_corpus, measure_data

pytestmark = pytest.mark.integration


def test_generated_corpus_has_the_size_asked_for(tmp_path):
    path = generate_corpus(tmp_path / "c.jsonl", 0.25, seed=1)
    size = path.stat().st_size
    assert 0.25 * 2**20 <= size < 0.25 * 2**20 + 256 * 40_000  # at most one batch of documents over
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(texts) and len(set(texts)) == len(texts)


def test_the_data_section_measures_each_mode_and_the_image_pipeline(tmp_path):
    cfg = DataConfig.model_validate({
        "ranks": 1, "tokenize_workers": 1, "model_args": {"d_model": 16, "n_layer": 1, "n_head": 2},
        "micro_batch": 2, "corpora": [{"generate_mb": 0.05, "dataset_args": {"seq_len": 16}}],
        "images": {"count": 12, "size": 8, "classes": 2, "model": "builtin:cnn", "micro_batch": 4,
                   "steps": 2, "warmup": 1, "workers": [0, 1]}})
    lines: list[str] = []
    rows = measure_data(cfg, seed=0, log=lines.append)
    first = [r for r in rows if r["op"] == "data_first_step"]
    assert [r["method"] for r in first] == list(MODES) and all(r["status"] == "ok" for r in first), first
    memory, cold, warm = first
    assert memory["cache_key"] == "" and cold["cache_key"] == warm["cache_key"] != ""
    assert memory["tokens"] == cold["tokens"] == warm["tokens"] > 0
    assert all(0 < r["load_seconds"] <= r["seconds"] and r["peak_memory_bytes"] > 0 for r in first)
    images = [r for r in rows if r["op"] == "input_pipeline"]
    assert [r["loader_workers"] for r in images] == [0, 1]
    for r in images:
        assert r["samples_per_s"] > 0 and r["model_samples_per_s"] > 0
        assert abs(r["ratio_to_model"] - r["samples_per_s"] / r["model_samples_per_s"]) < 1e-12
        assert 0 <= r["data_time_s"] <= r["step_time_s"] and r["input_share"] == r["data_time_s"] / r["step_time_s"]
    assert not list(tmp_path.iterdir())  # nothing left behind (it writes into its own temporary directory)
    assert any("first step after" in line for line in lines)
