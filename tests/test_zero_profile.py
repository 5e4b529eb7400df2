"""The ZeRO benchmark (bench.profile.zero, ``op = zero`` profile rows) end to end on a tiny
GPT-2-shaped model over real gloo with 2 processes (no Ray), and the per-stage cost model
(analysis.zero_cost) against hand computations and published parameter counts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis import zero_cost as Z
from bench.profile.config import ProfileConfigError, parse_profile_config


def _tiny(**zero) -> dict:
    return {"name": "zero-tiny", "device": "cpu", "zero": {
        "ranks": [2], "stages": [0, 2, 3], "repeats": 2, "warmup": 1,
        "optimizers": [{"name": "adamw"}, {"name": "muon", "settings": {"ns_dtype": "float32"}, "label": "muon"}],
        "models": [{"label": "tiny", "blocks": 1, "full_blocks": 3, "dim": 32, "heads": 2, "vocab": 96,
                    "seq_len": 8}], **zero}}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> pd.DataFrame:
    from bench.profile.runner import run_profile_job

    out = tmp_path_factory.mktemp("zero") / "profile.parquet"
    run_profile_job(parse_profile_config(_tiny(), "tiny"), job_id="t", out_path=out)
    return pd.read_parquet(out)  # what analysis reads: the written table, not the returned rows


def test_profile_rows_split_memory_per_stage(rows):
    z = Z.zero_rows(rows)
    assert sorted(zip(z["label"], z["zero_stage"], strict=True)) == [
        ("adamw", 0), ("adamw", 2), ("adamw", 3), ("muon", 0), ("muon", 2), ("muon", 3)]
    r = {(x["label"], x["zero_stage"]): x for x in z.to_dict("records")}
    count = int(r["adamw", 0]["count"])
    # ZeRO-0: every rank holds all fp32 parameters and gradients; AdamW two moments of each.
    assert r["adamw", 0]["param_bytes"] == 4 * count
    assert r["adamw", 0]["grad_bytes"] >= 4 * count
    assert r["adamw", 0]["state_bytes"] == pytest.approx(8 * count, rel=1e-3)  # plus step counters
    # ZeRO-3 partitions parameters (ds_tensor, padded to P pieces) and allocates its reduce bucket.
    assert r["adamw", 3]["param_bytes"] == pytest.approx(4 * count / 2, rel=0.02)
    assert r["adamw", 3]["bucket_bytes"] == 4 * Z.REDUCE_BUCKET
    # ZeRO-2 partitions gradients: fewer gradient bytes than ZeRO-0's full copy.
    assert r["adamw", 2]["grad_bytes"] < r["adamw", 0]["grad_bytes"]
    # Every rank's state is listed; the row holds the largest.
    states = json.loads(r["muon", 0]["state_bytes_by_rank"])
    assert len(states) == 2 and max(states) == r["muon", 0]["state_bytes"]
    for key, x in r.items():
        assert x["seconds"] > 0 and x["repeats"] == 2
        assert x["ratio_to_stage0"] == pytest.approx(x["seconds"] / r[key[0], 0]["seconds"])


def test_memory_model_matches_the_measured_rows(rows):
    check = Z.check_rows(Z.zero_rows(rows))
    assert len(check) == 6
    for kind in ("param", "state", "bucket"):
        measured, predicted = check[f"{kind}_bytes"], check[f"{kind}_pred"]
        assert ((measured - predicted).abs() <= 0.1 * predicted.clip(lower=1) + 4096).all(), kind
    text = Z.report(rows, {"seconds_per_byte": 1e-9, "latency_s": 1e-4})
    assert text.count("| adamw |") == 3 and "| muon | 3 |" in text
    whole = Z.full_model_params(Z.zero_rows(rows).iloc[0])[0]
    assert f"whole model ({whole / 1e9:.2f} B)" in text  # the header names the extrapolated size
    c = dict(zip(check["label"], check["matrix_state_c"], strict=True))
    assert c["adamw"] == pytest.approx(8, abs=0.5) and c["muon"] == pytest.approx(4, abs=0.5)


def test_memory_and_comm_per_stage_by_hand():
    # Ψ = 1000, M = 600 matrix elements, O = 400 others, P = 4.
    m = Z.memory_per_rank(1000, 600, 4, 2, "muon")
    assert m == {"param_bytes": 4000, "grad_bytes": 1000, "state_bytes": 1000 + 800 + 600, "bucket_bytes": 0.0,
                 "total": 4000 + 1000 + 2400}
    m = Z.memory_per_rank(1000, 600, 4, 3, "adamw", precision="bf16")
    assert (m["param_bytes"], m["grad_bytes"], m["state_bytes"]) == (500, 500, (4000 + 3200 + 4800) / 4)
    assert m["bucket_bytes"] == 2 * Z.REDUCE_BUCKET
    # ZeRO-0: the suite's Muon shards momentum over owners; DeepSpeed's keeps it on every rank.
    assert Z.memory_per_rank(1000, 600, 4, 0, "muon")["state_bytes"] == 3200 + 600
    assert Z.memory_per_rank(1000, 600, 4, 0, "muon_deepspeed")["state_bytes"] == 3200 + 2400
    assert Z.comm_per_rank(1000, 600, 4, 0, "adamw") == {"all_reduce": 6000, "reduce_scatter": 0.0,
                                                          "all_gather": 0.0, "owner": 0.0}
    c = Z.comm_per_rank(1000, 600, 4, 3, "muon")
    assert c == {"all_reduce": 0.0, "reduce_scatter": 3000, "all_gather": 9000, "owner": 3 * 4 * 600 * 3 / 16}
    fit = {"seconds_per_byte": 1e-9, "latency_s": 1e-3}
    assert Z.comm_seconds(c, 4, fit, Z.collectives_count(3, "muon")) == pytest.approx(13350e-9 + 5 * 3 * 1e-3)


def test_llama_parameter_counts_and_fit(capsys):
    from analysis.cost_model import load_device_costs

    costs = load_device_costs("h200")
    # Published sizes: Llama-2-7B 6.74 B, Llama-2-70B 68.98 B (vocabulary 32000).
    assert Z.predict_zero("llama-7b", costs, 8, 0, "adamw")["params"] == pytest.approx(6.738e9, rel=1e-3)
    big = Z.predict_zero("llama-70b", costs, 8, 3, "adamw")
    assert big["params"] == pytest.approx(68.98e9, rel=1e-3)
    # bf16 + fp32 masters + Adam: 16 bytes per parameter at ZeRO-0; ZeRO-3 divides all by P.
    assert Z.predict_zero("llama-70b", costs, 8, 0, "adamw")["fits"] is False
    assert big["memory"]["total"] == pytest.approx(16 * big["params"] / 8 + 2 * Z.REDUCE_BUCKET)
    assert big["fits"] is True


def test_cost_command_zero_stage(capsys):
    from launchers.cli import main

    assert main(["cost", "--model", "llama-70b", "--ranks", "8", "--device", "h200", "--zero-stage", "3",
                 "--optimizer", "muon"]) == 0
    out = capsys.readouterr().out
    assert "ZeRO-3" in out and "fits in 141 GB" in out
    assert main(["cost", "--model", "llama-70b", "--ranks", "8", "--device", "h200", "--zero-stage", "1",
                 "--optimizer", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--optimizer 'nope'" in err and "Traceback" not in err


@pytest.mark.parametrize("change, message", [
    ({"stages": [1, 2]}, "include 0"),
    ({"optimizers": [{"name": "nope"}]}, "unknown optimizer 'nope'"),
    ({"models": [{"label": "x", "dim": 30, "heads": 4}]}, "do not divide"),
])
def test_zero_section_refuses_bad_input(change, message):
    with pytest.raises(ProfileConfigError) as err:
        parse_profile_config(_tiny(**change), "bad.yaml")
    assert message in err.value.render()


def test_one_process_group_per_model_ranks_and_optimizer():
    # DeepSpeed keeps buffers of finished engines alive: each optimizer's stages get a fresh group,
    # and a model's own ranks and optimizer list select the groups.
    from bench.profile.zero import process_groups

    cfg = parse_profile_config(_tiny(ranks=[2, 4], models=[
        {"label": "a", "dim": 32, "heads": 2, "vocab": 96, "seq_len": 8},
        {"label": "b", "dim": 32, "heads": 2, "vocab": 96, "seq_len": 8, "ranks": [2], "optimizers": ["muon"]}]),
        "tiny").zero
    assert process_groups(cfg) == [(2, [(0, 0)]), (2, [(0, 1)]), (2, [(1, 1)]), (4, [(0, 0)]), (4, [(0, 1)])]
