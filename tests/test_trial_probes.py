"""Curvature probes inside real 2-worker DeepSpeed trials: scheduled probes (modes full and
online) write the curvature and profile tables, their time is kept out of the step time, the
measured-α policy holds the probe's fit (exact or Kronecker) per layer, and the layer_fits table
follows from the curvature rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_sweep

from analysis.fits import decomposition_fit, fit_layer
from bench.probes.measured_alpha import alpha_by_parameter, layer_alpha, layer_alpha_kron
from launchers.derived_tables import write_layer_fits
from launchers.local import run_local
from launchers.sweep import expand, parse_config

pytestmark = pytest.mark.integration


def _trial_dir(tmp_path, spec):
    return tmp_path / spec.sweep_name / "trials" / spec.trial_id


def _checkpoint_alpha(tdir) -> dict[str, float]:
    """The optimizer's own measured α, from its state in the trial's final DeepSpeed checkpoint
    (ZeRO 0 keeps the client optimizer's state dict in the model-states file)."""
    (states,) = (tdir / "checkpoint").glob("step*/mp_rank_00_model_states.pt")
    return torch.load(states, map_location="cpu", weights_only=False)["optimizer"]["measured_alpha"]


def test_probed_trials_hand_their_alpha_to_spectral_newton(tmp_path):
    """Two real 2-worker DeepSpeed trials of Spectral Newton with the measured α policy: mode full
    (α from the exact h) and mode online (α_kron from the training steps' own statistics). After
    the last probe, each parameter's α in the optimizer is the analysis fit of that probe
    (layer_fits' alpha, resp. alpha_kron; the median over a fused weight's views)."""
    sn = {"name": "spectral_newton", "settings": {"lr": 0.05, "alpha_policy": "measured"}}
    doc = tiny_sweep(
        optimizers=[{**sn, "label": "exact"},
                    {**sn, "label": "kron", "probes": {"every": 3, "settings": {
                        "mode": "online", "batch_size": 128, "micro_batch_size": 64, "top_k": 8}}}],
        probes={"at_steps": [2, 4], "at_end": True,
                "settings": {"batch_size": 128, "micro_batch_size": 64, "top_k": 8}},
    )
    doc["training"].update(steps=6, log_every=2, eval_every=3, checkpoint_every=6, keep_checkpoint=True)
    specs = expand(parse_config(doc))
    for spec in specs:
        assert run_local(spec, tmp_path)
    exact, online = (_trial_dir(tmp_path, s) for s in specs)

    curv = pd.read_parquet(exact / "curvature.parquet")
    assert sorted(curv["step"].unique()) == [2, 4, 6] and set(curv["probe_mode"]) == {"full"}
    assert set(curv["layer_type"]) >= {"conv_stem", "conv", "head"}
    prof = pd.read_parquet(exact / "profile.parquet")
    assert {"hvp", "grad_svd", "eigh", "factor_accumulation"} <= set(prof["phase"])
    steps = pd.read_parquet(exact / "steps.parquet").set_index("step")
    assert (steps.loc[[2, 4, 6], "probe_time_s"] > 0).all()
    # Probe time is not step time: the probe takes far longer than a step of this tiny CNN.
    assert steps.loc[2, "probe_time_s"] > steps.loc[2, "step_time_s"]
    runs = pd.read_parquet(exact / "runs.parquet").iloc[0]
    assert json.loads(runs["probe_unsupported_json"]) == []
    assert (runs["probe_mode"], runs["alpha_source"]) == ("full", "exact")

    online_curv = pd.read_parquet(online / "curvature.parquet")
    assert sorted(online_curv["step"].unique()) == [3, 6] and set(online_curv["probe_mode"]) == {"online"}
    assert online_curv["h"].isna().all() and (online_curv.loc[online_curv.k == 1, "h_kron"] > 0).all()
    # The statistics are those of the training step: its micro-batches on both ranks (16 · 2).
    assert (online_curv["samples"] == 32).all()
    online_runs = pd.read_parquet(online / "runs.parquet").iloc[0]
    assert (online_runs["probe_mode"], online_runs["alpha_source"]) == ("online", "kronecker")

    for tdir, column, source in ((exact, "alpha", "exact"), (online, "alpha_kron", "kronecker")):
        (fits_path,) = write_layer_fits(tdir)
        fits = pd.read_parquet(fits_path)
        last = fits[fits["step"] == fits["step"].max()]
        expected = last.groupby("module")[column].median().dropna()
        held = _checkpoint_alpha(tdir)
        assert len(expected) >= 3
        assert held == pytest.approx({f"{m}.weight": a for m, a in expected.items()}, rel=1e-9)
        log = pd.DataFrame(json.loads(pd.read_parquet(tdir / "runs.parquet")["measured_alpha_json"][0]))
        assert set(log["source"]) == {source} and len(log["step"].unique()) >= 2  # set at every probe

    # The in-trial probe of 2 ranks equals the 1-process probe of the final checkpoint.
    from bench.probes.standalone import probe_checkpoint

    last = curv[curv.step == 6].reset_index(drop=True)
    probe_checkpoint(specs[0], tmp_path, exact / "checkpoint")
    again = pd.read_parquet(exact / "curvature.parquet")
    again = again[again.step == 6].reset_index(drop=True)
    assert list(again.layer) == list(last.layer)
    for col in ("sigma", "h", "h_kron", "lambda_delta"):
        np.testing.assert_allclose(again[col], last[col], rtol=2e-3, atol=1e-9, err_msg=col)


def test_measured_alpha_agrees_with_the_analysis_fit():
    rng = np.random.default_rng(0)
    sigma = np.sort(rng.uniform(0.01, 1.0, 20))[::-1]
    h = sigma ** 1.7 * np.exp(rng.normal(0, 0.05, 20))
    h[3] = -1.0  # non-positive curvature is dropped by both
    assert layer_alpha(list(sigma), list(h)) == pytest.approx(fit_layer(sigma, h)["alpha"], rel=1e-12)
    assert layer_alpha([1.0, 0.5, 0.2], [1.0, 0.3, 0.1]) is None  # < 5 points: no fit
    # α_kron: the decomposition's slope of log h_kron, on its common points (h > 0 where h exists).
    lam = sigma ** 1.2 * np.exp(rng.normal(0, 0.05, 20))
    phi = sigma ** 0.4 * np.exp(rng.normal(0, 0.05, 20))
    phi[7] = np.nan  # an unusable Φ_k drops the point from both
    ones = np.ones(20)
    for exact in (h, np.full(20, np.nan)):
        want = decomposition_fit(sigma, exact if np.isfinite(exact).any() else None, lam * phi, lam, ones, phi, ones)
        got = layer_alpha_kron(list(sigma), list(lam * phi), list(lam), list(phi), list(exact))
        assert got == pytest.approx(want["alpha_kron"], rel=1e-12)
    rows = [{"layer": f"blk.qkv.{v}", "module": "blk.qkv", "sigma": s, "h": x * f}
            for v, f in (("q", 1.0), ("k", 2.0), ("v", 3.0)) for s, x in zip(sigma, h, strict=True)]
    rows += [{"layer": "out", "module": "out", "sigma": s, "h": 1 / s} for s in sigma]  # α = −1: not usable
    alphas, skipped = alpha_by_parameter(rows)
    assert alphas == {"blk.qkv.weight": pytest.approx(layer_alpha(list(sigma), list(h)))}
    assert list(skipped) == ["out.weight"] and "> 0" in skipped["out.weight"]


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
        overrides = [e for e in extra if "=" in e and not e.startswith("-")]  # KEY=VALUE right after CONFIG
        flags = [e for e in extra if e not in overrides]
        return subprocess.run([sys.executable, "-m", "launchers.cli", "probe", str(cfg), *overrides, "--storage",
                               str(tmp_path), *flags], cwd=REPO, capture_output=True, text=True, timeout=300)

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
    # The cheap modes from the command line: σ and the Kronecker columns, no h (issue 14).
    for mode in ("kronecker", "online"):
        cheap = probe("--checkpoint", str(tdir / "checkpoint"), f"probes.settings.mode={mode}")
        assert cheap.returncode == 0, cheap.stderr
        rows = pd.read_parquet(tdir / "curvature.parquet").query("step == 4")
        assert set(rows["probe_mode"]) == {mode} and rows["h"].isna().all()
        assert (rows.loc[rows.k == 1, "h_kron"] > 0).all()
        np.testing.assert_allclose(rows.loc[rows.k == 1].set_index("layer")["sigma"], s4.loc[rows.loc[rows.k == 1, "layer"]],
                                   rtol=1e-4)  # the same weights and probe batch: the same gradient
    unknown = probe("probes.settings.mode=cheap")
    assert unknown.returncode == 2 and "mode" in unknown.stderr and "Traceback" not in unknown.stderr


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
