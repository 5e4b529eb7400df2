"""Real DeepSpeed over gloo with 2 CPU worker processes (no Ray): the trial trains, writes Parquet
that reads back as logged, and matches a single-process run with the same global batch."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_sweep

from bench import data as data_registry
from bench import models as model_registry
from bench.batching import GlobalBatchSampler, fetch
from bench.results.schema import METADATA_KEY, SCHEMA_VERSION
from bench.seeds import data_seed, model_init_seed, seed_everything
from launchers.local import run_local
from launchers.sweep import expand, parse_config

pytestmark = pytest.mark.integration


def _spec(optimizer: dict, workers: int, micro: int, steps: int = 6):
    doc = tiny_sweep(optimizers=[optimizer])
    doc["training"].update(steps=steps, micro_batch_size=micro, log_every=1, eval_every=3)
    doc["resources"]["num_workers"] = workers
    (spec,) = expand(parse_config(doc))
    return spec


def _steps(storage, spec):
    table = pq.read_table(storage / spec.sweep_name / "trials" / spec.trial_id / "steps.parquet")
    return table


def _runs(storage, spec):
    return pq.read_table(storage / spec.sweep_name / "trials" / spec.trial_id / "runs.parquet")


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "adamw", "settings": {"lr": 0.003}},
        {"name": "spectral_newton", "settings": {"lr": 0.05}},
    ],
    ids=["adamw", "spectral_newton"],
)
def test_two_workers_match_one_process_with_same_global_batch(tmp_path, optimizer):
    two = _spec(optimizer, workers=2, micro=8)
    one = _spec(optimizer, workers=1, micro=16)
    assert run_local(two, tmp_path / "two")
    assert run_local(one, tmp_path / "one")
    a = _steps(tmp_path / "two", two).to_pandas()
    b = _steps(tmp_path / "one", one).to_pandas()
    assert list(a["step"]) == list(range(1, 7))
    # Losses before the first update are identical; afterwards only reduction order differs.
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["eval_loss"].dropna(), b["eval_loss"].dropna(), rtol=1e-5, atol=1e-6)
    assert a["train_loss"].iloc[-1] < a["train_loss"].iloc[0]


def test_parquet_reads_back_what_the_trial_logged(tmp_path):
    spec = _spec({"name": "adamw", "settings": {"lr": 0.003}}, workers=2, micro=8)
    assert run_local(spec, tmp_path)
    steps = _steps(tmp_path, spec)
    runs = _runs(tmp_path, spec)
    assert steps.schema.metadata[METADATA_KEY] == str(SCHEMA_VERSION).encode()
    df = steps.to_pandas()
    run = runs.to_pylist()[0]

    # Step 1's loss is the mean loss of the first global batch under the initial weights:
    # recompute it here independently of the trial code.
    bundle = data_registry.load_dataset(spec.workload.dataset, spec.workload.dataset_args, data_seed(spec.seed))
    seed_everything(model_init_seed(spec.seed))
    model = model_registry.build_model(spec.workload.model, bundle.task, spec.workload.model_args)
    sampler = GlobalBatchSampler(len(bundle.train), data_seed(spec.seed), 16, 1, 1, 0)
    x, y = fetch(bundle.train, sampler.indices(0, 0))
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x), y))
    assert df["train_loss"].iloc[0] == pytest.approx(expected, rel=1e-5)

    assert list(df["samples_seen"]) == [16 * s for s in range(1, 7)]
    assert (df["step_time_s"] > 0).all() and (df["fwd_bwd_time_s"] > 0).all()
    assert (df["comm_time_s"] >= 0).all()
    assert df["eval_metric"].notna().sum() == 2  # steps 3 and 6
    assert run["status"] == "completed" and run["steps_completed"] == 6
    assert run["world_size"] == 2
    assert run["final_eval_metric"] == pytest.approx(df["eval_metric"].dropna().iloc[-1])
    assert 0.0 <= run["test_metric"] <= 1.0
    assert json.loads(run["config_json"])["trial_id"] == spec.trial_id
    assert torch.__version__.startswith(json.loads(run["versions_json"])["torch"])
    assert run["config.training.steps"] == 6
    hw = json.loads(run["hardware_json"])
    assert hw["cpu_count"] >= 1


def test_same_trial_twice_gives_identical_losses(tmp_path):
    """One sweep seed fixes model init, data order and per-rank randomness: two runs of the same
    trial on the same hardware are bitwise identical in fp32 on CPU."""
    spec = _spec({"name": "spectral_newton", "settings": {"lr": 0.05}}, workers=2, micro=8)
    assert run_local(spec, tmp_path / "a")
    assert run_local(spec, tmp_path / "b")
    a = _steps(tmp_path / "a", spec).to_pandas()
    b = _steps(tmp_path / "b", spec).to_pandas()
    assert np.array_equal(a["train_loss"].to_numpy(), b["train_loss"].to_numpy())
    assert np.array_equal(a["eval_loss"].to_numpy(), b["eval_loss"].to_numpy(), equal_nan=True)


@pytest.mark.parametrize(
    ("model", "model_args"),
    [
        ("builtin:transformer", {"d_model": 32, "n_layer": 1, "n_head": 2}),
        ("hf:gpt2", {"size": "tiny"}),
        ("hf:llama", {"size": "tiny"}),
    ],
    ids=["builtin", "gpt2", "llama"],
)
def test_tiny_language_model_trains_under_two_worker_deepspeed(tmp_path, model, model_args):
    """A causal LM on byte-level builtin:text: the loss on packed blocks falls, the evaluation
    reports perplexity = exp(mean token loss), and throughput is logged consistently: tokens/s is
    the global batch's tokens over the step time, MFU is per-device model FLOPs over the
    measured peak."""
    doc = tiny_sweep(
        workloads=[{"model": model, "dataset": "builtin:text", "model_args": model_args,
                    "dataset_args": {"seq_len": 32, "max_bytes": 200_000}}],
        optimizers=[{"name": "adamw", "settings": {"lr": 0.003}}],
    )
    doc["training"].update(steps=30, micro_batch_size=8, eval_every=15, log_every=5)
    (spec,) = expand(parse_config(doc))
    assert run_local(spec, tmp_path)
    steps = _steps(tmp_path, spec).to_pandas()
    run = _runs(tmp_path, spec).to_pylist()[0]
    assert run["task"] == "lm" and run["metric_name"] == "perplexity" and run["metric_goal"] == "min"
    assert steps["train_loss"].iloc[-1] < steps["train_loss"].iloc[0] - 0.5
    evals = steps.dropna(subset=["eval_loss"])
    np.testing.assert_allclose(evals["eval_metric"], np.exp(evals["eval_loss"]), rtol=1e-9)
    assert run["tokens_seen"] == 30 * 16 * 32
    assert run["final_eval_metric"] < 257  # better than a uniform guess over the byte vocabulary

    np.testing.assert_allclose(steps["tokens_per_s"], 16 * 32 / steps["step_time_s"], rtol=1e-9)
    per_device = run["model_flops_per_sample"] * 16 / steps["step_time_s"] / 2
    np.testing.assert_allclose(steps["mfu"], per_device / run["peak_flops_per_s"], rtol=1e-9)
    assert run["peak_flops_source"] == "measured-matmul"
    assert ((steps["mfu"] > 0) & (steps["mfu"] < 1)).all()
    assert run["median_tokens_per_s"] > 0 and 0 < run["median_mfu"] < 1
    assert run["optimizer_entry"] == "adamw"


def test_divergence_ends_the_trial_as_diverged_with_its_last_good_metrics(tmp_path):
    spec = _spec({"name": "adamw", "settings": {"lr": 1.0e4}}, workers=2, micro=8, steps=30)
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"divergence_loss": 50.0})})
    assert run_local(spec, tmp_path)  # diverging is a result, not a crash
    run = _runs(tmp_path, spec).to_pylist()[0]
    steps = _steps(tmp_path, spec).to_pandas()
    assert run["status"] == "diverged" and "training loss" in run["error"]
    assert 1 <= run["steps_completed"] < 30
    assert np.isfinite(run["final_train_loss"]) and run["final_train_loss"] <= 50.0
    # Every logged row is a good step; the diverging step itself is not recorded as a result.
    assert (steps["step"] < run["steps_completed"] + 1).all()
    assert np.isfinite(steps["train_loss"]).all()
