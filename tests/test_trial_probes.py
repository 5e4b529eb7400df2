"""Curvature probes inside a real 2-worker DeepSpeed trial: scheduled probes write the
curvature and profile tables, their time is kept out of the step time, the measured-α policy
receives α per layer, and the layer_fits table follows from the curvature rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_sweep

from analysis.fits import fit_layer
from bench.probes.measured_alpha import alpha_by_parameter, layer_alpha
from launchers.derived_tables import write_layer_fits
from launchers.local import run_local
from launchers.sweep import expand, parse_config

pytestmark = pytest.mark.integration


def test_probed_trial_writes_curvature_profile_and_layer_fits(tmp_path):
    doc = tiny_sweep(
        optimizers=[{"name": "spectral_newton", "settings": {"lr": 0.05, "alpha_policy": "measured"}}],
        probes={"at_steps": [2, 4], "at_end": True,
                "settings": {"batch_size": 128, "micro_batch_size": 64, "top_k": 8}},
    )
    doc["training"].update(steps=6, log_every=2, eval_every=3)
    (spec,) = expand(parse_config(doc))
    assert run_local(spec, tmp_path)
    tdir = tmp_path / spec.sweep_name / "trials" / spec.trial_id
    curv = pd.read_parquet(tdir / "curvature.parquet")
    assert sorted(curv["step"].unique()) == [2, 4, 6]
    assert set(curv["layer_type"]) >= {"conv_stem", "conv", "head"}
    np.testing.assert_allclose(curv["h_kron"], curv["phi"] * curv["lam"], rtol=1e-10)
    prof = pd.read_parquet(tdir / "profile.parquet")
    assert {"hvp", "grad_svd", "eigh", "factor_accumulation"} <= set(prof["phase"])
    steps = pd.read_parquet(tdir / "steps.parquet").set_index("step")
    assert (steps.loc[[2, 4, 6], "probe_time_s"] > 0).all()
    # Probe time is not step time: the probe takes far longer than a step of this tiny CNN.
    assert steps.loc[2, "probe_time_s"] > steps.loc[2, "step_time_s"]
    assert json.loads(pd.read_parquet(tdir / "runs.parquet")["probe_unsupported_json"][0]) == []

    (fits_path,) = write_layer_fits(tdir)
    fits = pd.read_parquet(fits_path)
    assert len(fits) == curv.groupby(["step", "layer"]).ngroups
    assert fits["alpha"].notna().all()


def test_measured_alpha_agrees_with_the_analysis_fit():
    rng = np.random.default_rng(0)
    sigma = np.sort(rng.uniform(0.01, 1.0, 20))[::-1]
    h = sigma ** 1.7 * np.exp(rng.normal(0, 0.05, 20))
    h[3] = -1.0  # non-positive curvature is dropped by both
    assert layer_alpha(list(sigma), list(h)) == pytest.approx(fit_layer(sigma, h)["alpha"], rel=1e-12)
    assert layer_alpha([1.0, 0.5, 0.2], [1.0, 0.3, 0.1]) is None  # < 5 points: no fit
    rows = [{"layer": f"blk.qkv.{v}", "module": "blk.qkv", "sigma": s, "h": x * f}
            for v, f in (("q", 1.0), ("k", 2.0), ("v", 3.0)) for s, x in zip(sigma, h, strict=True)]
    assert alpha_by_parameter(rows) == {"blk.qkv.weight": pytest.approx(layer_alpha(list(sigma), list(h)))}


def test_standalone_probe_of_a_checkpoint(write_yaml, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    doc = tiny_sweep(probes={"settings": {"batch_size": 64, "micro_batch_size": 64, "top_k": 5}})
    doc["training"].update(steps=4, eval_every=4, checkpoint_every=2, keep_checkpoint=True)
    cfg = write_yaml(doc)
    (spec,) = expand(parse_config(doc))
    assert run_local(spec, tmp_path)
    tdir = tmp_path / spec.sweep_name / "trials" / spec.trial_id
    assert (tdir / "checkpoint" / "latest").read_text().strip() == "step4"

    def probe(*extra):
        return subprocess.run([sys.executable, "-m", "launchers.cli", "probe", str(cfg), "--storage", str(tmp_path),
                               *extra], cwd=REPO, capture_output=True, text=True, timeout=300)

    ok = probe("--checkpoint", str(tdir / "checkpoint"))
    assert ok.returncode == 0, ok.stderr
    again = probe("--checkpoint", str(tdir / "checkpoint" / "step4"))  # a tag directly; replaces step 4
    assert again.returncode == 0, again.stderr
    initial = probe()  # no checkpoint: the initial weights, step 0
    assert initial.returncode == 0, initial.stderr
    curv = pd.read_parquet(tdir / "curvature.parquet")
    assert sorted(curv["step"].unique()) == [0, 4]
    assert not curv.duplicated(["step", "layer", "k"]).any()
    # The checkpoint's weights are the trained ones: a different gradient than at initialisation.
    s2 = curv[(curv.step == 0) & (curv.k == 1)].set_index("layer")["sigma"]
    s4 = curv[(curv.step == 4) & (curv.k == 1)].set_index("layer")["sigma"]
    assert not np.allclose(s2, s4)
    assert (tdir / "layer_fits.parquet").is_file()
    bad = probe("--checkpoint", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_paper_cpu_config_probes_the_builtin_transformer(tmp_path):
    """configs/paper/alpha_cpu.yaml, trial 1: the built-in transformer on the shipped corpus, with
    its fused qkv split into q/k/v views and probed inside 2-worker DeepSpeed training."""
    from conftest import REPO

    from launchers.sweep import load_config

    spec = expand(load_config(REPO / "configs/paper/alpha_cpu.yaml"))[1]
    assert spec.workload.model == "builtin:transformer"
    assert run_local(spec, tmp_path)
    curv = pd.read_parquet(tmp_path / spec.sweep_name / "trials" / spec.trial_id / "curvature.parquet")
    assert {"attn_q", "attn_k", "attn_v", "attn_out", "mlp_up", "mlp_down", "head"} <= set(curv["layer_type"])
    assert sorted(curv["step"].unique()) == [10, 20]
    assert (curv.loc[curv["k"] == 1, "sigma"] > 0).all()
