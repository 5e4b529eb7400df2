"""The profile config, the runner without Ray, and one real Ray job end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from bench.profile.config import ProfileConfigError, load_profile_config, parse_profile_config
from bench.results.writer import write_rows

TINY = REPO / "configs" / "profile" / "tiny.yaml"


def tiny(tmp_path, **overrides):
    raw = yaml.safe_load(TINY.read_text())
    raw.update(storage=str(tmp_path / "results"), **overrides)
    return parse_profile_config(raw, "tiny")


def test_shipped_configs_are_valid():
    for name in ("tiny", "kernels_cpu", "kernels", "kernels_gpu", "optimizer_step_cpu", "distributed_cpu",
                 "probe_overhead_cpu", "probe_modes_cpu", "probe_full_cpu", "scaling_tiny",
                 "spectral_step_gpu", "spectral_step_smoke"):
        load_profile_config(REPO / "configs" / "profile" / f"{name}.yaml")


def test_config_problems_are_listed_together():
    raw = yaml.safe_load(TINY.read_text())
    raw["repeats"] = 0
    raw["colour"] = "blue"
    with pytest.raises(ProfileConfigError) as err:
        parse_profile_config(raw, "bad.yaml")
    assert len(err.value.problems) == 2 and "unknown key" in err.value.render()
    raw = yaml.safe_load(TINY.read_text())
    raw["profiles"].append({"shape_sets": ["gpt2-small", "gpt5"], "methods": ["svd", "damped_solve"], "shapes": ["nope"]})
    with pytest.raises(ProfileConfigError) as err:
        parse_profile_config(raw, "bad.yaml")
    text = err.value.render()
    assert "'gpt5'" in text and "'damped_solve'" in text and len(err.value.problems) == 2
    raw["profiles"][-1]["shape_sets"] = ["gpt2-small"]
    with pytest.raises(ProfileConfigError, match="'nope' is not a shape of gpt2-small"):
        parse_profile_config(raw, "bad.yaml")


def test_optimizer_step_problems_are_listed_together():
    raw = {"optimizer_step": {"models": ["llama-7b", "resnet18"], "baseline": "sgd", "optimizers": [
        {"name": "adamw"}, {"name": "spectral_newton", "settings": {"method": "lu"}}, {"name": "lion"}]}}
    with pytest.raises(ProfileConfigError) as err:
        parse_profile_config(raw, "bad.yaml")
    text = err.value.render()
    assert "'llama-7b' cannot be instantiated" in text and "unknown optimizer 'lion'" in text
    assert "optimizers.1.settings" in text and "'sgd' is not one of the labels" in text
    assert "reference: 'muon'" in text and len(err.value.problems) == 5


def test_plan_deduplicates_shapes_and_orders_by_size():
    from bench.profile.runner import plan_tasks

    cfg = parse_profile_config({
        "shape_source": "frozen",  # the derivation itself is tested in test_profile_shapes.py
        "profiles": [{"shape_sets": ["gpt2-small", "vit-base"], "methods": ["gram", "ns5"],
                      "dtypes": ["fp32", "bf16"]}],
    })
    tasks = plan_tasks(cfg)
    keys = [t.shape.key for t in tasks]
    # GPT-2 small and ViT-Base share 768×768, 2304×768 and 3072×768 (mlp up and down alike).
    assert sorted(set(keys)) == [(768, 768), (2304, 768), (3072, 768)]
    assert len(tasks) == 3 * 2 * 2
    assert keys == sorted(keys, key=lambda k: k[0] * k[1] ** 2)
    qkv = next(t for t in tasks if t.shape.key == (2304, 768))
    assert {x.split("/")[0] for x in qkv.labels} == {"gpt2-small", "vit-base"}


def test_runner_without_ray_skips_what_would_be_too_slow(tmp_path):
    from bench.profile.runner import run_profile_job

    cfg = tiny(tmp_path, max_call_seconds=1e-9)
    rows = run_profile_job(cfg, job_id="job0", write=False)
    kernels = [r for r in rows if r["op"] == "kernel"]
    first = [r for r in kernels if r["shape"] == "32x48"]
    assert all(r["status"] == "ok" for r in first)  # nothing to predict from yet
    later = [r for r in kernels if r["shape"] != "32x48"]
    assert later and all(r["status"] == "skipped" and "max_call_seconds" in r["error"] for r in later)
    catalog = [r for r in rows if r["op"] == "shape"]
    assert {r["model"] for r in catalog} == {"gpt2-small", "llama-7b"}
    assert {r["method"] for r in catalog} == {"gram", "solve"}
    assert all(r["methods_version"] == 2 for r in rows)


def test_module_entry_point_writes_one_file_and_maps_config_errors(tmp_path):
    out = tmp_path / "p.parquet"
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: []\nwhat: 1\n")
    proc = subprocess.run([sys.executable, "-m", "bench.profile.runner", "--config", str(bad), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "invalid profile config" in proc.stderr and not out.exists()


@pytest.mark.integration
def test_tiny_profile_through_real_ray(tmp_path):
    ray = pytest.importorskip("ray")
    from analysis.dataset import load_table
    from launchers.profile_runner import run_profile

    cfg = tiny(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    try:
        paths = run_profile(cfg)
    finally:
        ray.shutdown()
    assert len(paths) == 1 and paths[0].is_file()
    assert paths[0].parent.parent.parent == (tmp_path / "results" / "tiny-profile").resolve()
    df = load_table(tmp_path / "results" / "tiny-profile", "profile")
    k = df[df["op"] == "kernel"]
    assert len(k) == 6 and (k["status"] == "ok").all() and set(k["method"]) == {"gram", "solve"}
    assert (k["seconds"] > 0).all() and (k["repeats"] >= 3).all()
    assert k["node_id"].str.len().min() > 0 and k["trial_id"].iloc[0] == paths[0].parent.name
    assert (k["ceiling_seconds"] > 0).all() and (k["efficiency"] > 0).all()
    assert (df["op"] == "shape").sum() > 0


def test_cli_body_raises_the_cli_config_error(tmp_path):
    import argparse

    from bench.problems import ConfigProblems as ConfigError
    from launchers.profile_runner import cli_profile

    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: [{methods: [svd], shape_sets: [gpt2-small]}]\nrepeats: -1\n")
    with pytest.raises(ConfigError) as err:  # launchers.cli.main maps it to exit status 2
        cli_profile(argparse.Namespace(config=str(bad), storage=None, name=None, address=None, verbose=False))
    assert "invalid profile config" in err.value.render() and "repeats" in err.value.render()


def test_scaling_measurements_through_real_ray(tmp_path, monkeypatch):
    """Every section of scaling_tiny.yaml end to end: the optimizer steps (one node job), the
    owner sharding's broadcasts and the spectral step at P = 2 (real 2-worker gloo groups under
    Ray Train; the spectral step also at P = 1) and the probe overhead. Rows are consistent with
    their own definitions, the sharded step moves bytes only at P = 2 and leaves the parameters
    equal to the redundant run's, the bucket plans the real OwnerSharding ran equal the plan the
    cost model is given (launchers.cost), and the report states both targets. The storage is
    relative (as in the shipped configs): every job must write under the caller's working
    directory, not its own. A probe point measured by an earlier, interrupted run is kept and not
    measured again."""
    ray = pytest.importorskip("ray")
    from analysis.dataset import load_table
    from analysis.scaling_report import build_scaling_report
    from launchers.profile_runner import run_profile

    raw = yaml.safe_load((REPO / "configs" / "profile" / "scaling_tiny.yaml").read_text())
    raw["storage"] = "results"
    monkeypatch.chdir(tmp_path)
    cfg = parse_profile_config(raw, "scaling_tiny")
    earlier = {"op": "probe_overhead", "phase": "top_k", "shape_m": 32, "batch": raw["probe_overhead"]["default_probe_batch"],
               "k": 2, "seconds": 1234.5, "step_seconds": 0.5, "probe_to_step": 2469.0, "interval": 100,
               "overhead_at_interval": 24.69, "interval_for_5pct": 49380.0, "interval_for_1pct": 246900.0,
               "hvp_seconds": 1.0, "grad_svd_seconds": 0.0, "factors_seconds": 0.0, "eigh_seconds": 0.0, "count": 7}
    write_rows("profile", [earlier], tmp_path / "results" / "scaling-tiny" / "trials" / "scaling-tiny-probe-overhead" / "profile.parquet")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    try:
        paths = run_profile(cfg)
    finally:
        ray.shutdown()
    assert len(paths) == 5 and all(p.is_file() for p in paths)
    results = tmp_path / "results" / "scaling-tiny"
    df = load_table(results, "profile")

    opt = df[df["op"] == "optimizer_step"].set_index("label")
    assert list(opt.index) == ["adamw", "spectral_newton[solve]", "muon"]
    assert opt.loc["adamw", "ratio_to_baseline"] == 1.0 and opt.loc["muon", "ratio_to_reference"] == 1.0
    assert opt.loc["spectral_newton[solve]", "method"] == "solve" and opt.loc["muon", "method"] == "ns5"
    assert (opt["seconds"] > 0).all() and (opt["matrices"] == 4).all()

    from launchers.cost import owner_sharding_plan

    coll = df[df["op"] == "collective"]
    bcast = coll[coll["method"] == "broadcast"].sort_values("bytes")
    assert list(bcast["bytes"]) == [4 * (int(mb * 2**20) // 4) for mb in (0.01, 0.1)]
    assert (bcast["buckets"] == 1).all() and (bcast["ranks"] == 2).all() and (bcast["seconds"] > 0).all()
    sync = coll[coll["method"] == "owner_sync"].iloc[0]
    shapes = [(64, 192), (64, 64), (64, 256), (256, 64)]  # c_attn, attn c_proj, c_fc, mlp c_proj (Conv1D: in × out)
    assert json.loads(sync["bucket_bytes"]) == list(owner_sharding_plan(shapes, 2).bucket_bytes)

    step = df[df["op"] == "spectral_step"].set_index(["ranks", "phase"])
    assert set(step.index) == {(1, "redundant"), (1, "sharded"), (2, "redundant"), (2, "sharded")}
    assert step.loc[(2, "sharded"), "bytes"] > 0 and step.loc[(1, "sharded"), "bytes"] == 0
    # Redundant ranks exchange only a few bytes of bookkeeping (the non-finite check).
    assert step.loc[(2, "redundant"), "bytes"] < 0.01 * step.loc[(2, "sharded"), "bytes"]
    for key, row in step.iterrows():
        assert row["seconds"] > 0 and row["max_abs_diff_vs_redundant"] <= 1e-6 * row["max_abs_param"], key
        assert math.isclose(row["speedup_vs_redundant"], step.loc[(key[0], "redundant"), "seconds"] / row["seconds"])
    assert step.loc[(2, "sharded"), "count"] == 4  # one block: c_attn, attn c_proj, c_fc, mlp c_proj
    assert step.loc[(2, "sharded"), "bucket_bytes"] == sync["bucket_bytes"]  # the same plan the step ran
    assert 0 < step.loc[(2, "sharded"), "comm_seconds_min"] <= step.loc[(2, "sharded"), "comm_seconds"]

    every = df[df["op"] == "probe_overhead"]
    assert set(every["probe_mode"].fillna("full")) == {"full", "kronecker", "online"}  # the kept row: no mode
    for _, row in every.iterrows():
        assert math.isclose(row["probe_to_step"], row["seconds"] / row["step_seconds"])
        assert math.isclose(row["overhead_at_interval"], row["seconds"] / (100 * row["step_seconds"]))
        assert math.isclose(row["interval_for_1pct"], 5 * row["interval_for_5pct"])
        phases = row[["hvp_seconds", "grad_svd_seconds", "factors_seconds", "eigh_seconds"]]
        assert (phases >= 0).all() and phases.sum() <= row["seconds"]
        assert row["count"] == 7  # q, k, v, attn out, MLP up, MLP down of one block, and the head
    kron, online = (every[every["probe_mode"] == m].set_index("phase") for m in ("kronecker", "online"))
    assert set(kron.index) == {"default", "width", "probe_batch", "top_k"} and (kron["hvp_seconds"] == 0).all()
    assert set(online.index) == {"default", "width", "top_k"}  # its batch is the training batch
    assert (online["probe_batch"] == raw["probe_overhead"]["train_batch"]).all()
    assert ((online["finish_seconds"] > 0) & (online["seconds"] >= online["finish_seconds"])).all()
    probe = every[every["probe_mode"].fillna("full") == "full"].set_index("phase")
    assert set(probe.index) == {"default", "width", "probe_batch", "top_k"}
    assert probe.loc["width", "shape_m"] == 16 and probe.loc["top_k", "k"] == 2
    assert probe.loc["top_k", "seconds"] == 1234.5  # kept from the interrupted run, not re-measured
    assert probe.loc["default", "seconds"] != 1234.5

    report = build_scaling_report(results, tmp_path / "rep")
    assert "Target ≥ 1.6× at P = 2" in report.text and "interval 100" in report.text
    assert {p.name for p in report.plot_paths} == {"spectral_step_speedup.png", "probe_overhead.png"}


def test_probe_overhead_plan_varies_one_factor_at_a_time():
    from bench.profile.probe_overhead import plan_points

    points = plan_points([16, 32], [64, 128], [4, 8], default=(32, 128, 8))
    assert points == [("default", 32, 128, 8), ("width", 16, 128, 8), ("probe_batch", 32, 64, 8),
                      ("top_k", 32, 128, 4)]
