"""The input path inside real trials (DeepSpeed over gloo, 2 CPU worker processes, no Ray): a
corpus read through the token cache trains exactly as one tokenized in memory, a trial killed
and resumed over the cache continues with the same batches, and image trials whose samples are
decoded by background loaders train exactly as those decoding in the loop."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_sweep
from test_data_cache import _corpus, _image_folder

from launchers.local import run_local
from launchers.sweep import expand, parse_config

pytestmark = pytest.mark.integration

TINY_LM = {"d_model": 16, "n_layer": 1, "n_head": 2}


def _spec(dataset: str, model: str, model_args: dict, steps: int = 6, **training):
    doc = tiny_sweep(workloads=[{"model": model, "dataset": dataset, "model_args": model_args,
                                 "dataset_args": {"seq_len": 16} if dataset.endswith(".jsonl") else {}}])
    doc["training"].update({"steps": steps, "micro_batch_size": 4, "eval_every": 3, "log_every": 1, **training})
    (spec,) = expand(parse_config(doc))
    return spec


def _table(storage: Path, spec, name: str) -> pd.DataFrame:
    return pd.read_parquet(storage / spec.sweep_name / "trials" / spec.trial_id / f"{name}.parquet")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("lm") / "c.jsonl", 800)


def test_a_cached_corpus_trains_exactly_as_one_tokenized_in_memory(corpus, tmp_path):
    cached = _spec(str(corpus), "builtin:transformer", TINY_LM)
    memory = _spec(str(corpus), "builtin:transformer", TINY_LM, input={"token_cache": False})
    assert cached.trial_id == memory.trial_id  # the input pipeline is not part of a trial's identity
    assert run_local(cached, tmp_path / "cached") and run_local(memory, tmp_path / "memory")
    a, b = _table(tmp_path / "cached", cached, "steps"), _table(tmp_path / "memory", memory, "steps")
    assert np.array_equal(a["train_loss"], b["train_loss"])
    assert np.array_equal(a["eval_loss"], b["eval_loss"], equal_nan=True)
    assert ((a["data_time_s"] > 0) & (a["data_time_s"] < a["step_time_s"])).all()
    key = _table(tmp_path / "cached", cached, "runs").loc[0, "data_cache_key"]
    assert _table(tmp_path / "memory", memory, "runs").loc[0, "data_cache_key"] == ""
    builds = (tmp_path / "cached" / "_data_cache" / "builds.log").read_text().splitlines()
    assert [json.loads(line)["key"] for line in builds] == [key]  # two ranks, one build
    assert (tmp_path / "cached" / "_data_cache" / key / "manifest.json").is_file()


def _kill_rank_after_first_checkpoint(trial_dir: Path, done: threading.Event, rank: int = 1) -> bool:
    latest, pidfile = trial_dir / "checkpoint" / "latest", trial_dir / "workers" / f"rank{rank}.pid"
    deadline = time.time() + 300
    while time.time() < deadline and not done.is_set():
        if latest.is_file() and pidfile.is_file():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
            return True
        time.sleep(0.01)
    return False


def test_a_trial_killed_and_resumed_over_the_cache_sees_the_same_batches(corpus, tmp_path):
    spec = _spec(str(corpus), "builtin:transformer", TINY_LM, steps=120, checkpoint_every=20, eval_every=60)
    assert run_local(spec, tmp_path / "whole")
    storage = tmp_path / "resumed"
    trial_dir = storage / spec.sweep_name / "trials" / spec.trial_id
    outcome: list[bool] = []
    done = threading.Event()
    runner = threading.Thread(target=lambda: (outcome.append(run_local(spec, storage)), done.set()))
    runner.start()
    killed = _kill_rank_after_first_checkpoint(trial_dir, done)
    runner.join(timeout=300)
    assert killed and outcome == [False], "the trial ended before a rank could be killed"
    assert run_local(spec, storage)  # resumes from its checkpoint
    run = _table(storage, spec, "runs").iloc[0]
    assert run["status"] == "completed" and run["resumed_from_step"] >= 20
    want, got = _table(tmp_path / "whole", spec, "steps"), _table(storage, spec, "steps")
    assert list(got["step"]) == list(range(1, 121))
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5, atol=1e-6)
    assert run["data_cache_key"] == _table(tmp_path / "whole", spec, "runs").loc[0, "data_cache_key"] != ""


def test_image_trials_decoded_by_background_loaders_train_exactly_alike(tmp_path):
    images = f"hf:{_image_folder(tmp_path / 'images', n=60)}"
    background = _spec(images, "builtin:cnn", {}, input={"loader_workers": 2})
    inline = _spec(images, "builtin:cnn", {}, input={"loader_workers": 0})
    assert run_local(background, tmp_path / "background") and run_local(inline, tmp_path / "inline")
    a, b = _table(tmp_path / "background", background, "steps"), _table(tmp_path / "inline", inline, "steps")
    assert np.array_equal(a["train_loss"], b["train_loss"])
    assert np.array_equal(a["eval_loss"], b["eval_loss"], equal_nan=True)
    assert (a["data_time_s"] >= 0).all() and (b["data_time_s"] > 0).all()
