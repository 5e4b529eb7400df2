"""Every shipped sweep config validates (names, settings, resources), so a user can run any of
them unchanged; the CPU-sized paper config runs in the probe tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from launchers.sweep import expand, load_config

NOT_SWEEPS = {"claims.yaml"}
SWEEPS = sorted(p for p in (REPO / "configs").rglob("*.yaml")
                if "profile" not in p.parts and p.name not in NOT_SWEEPS)


@pytest.mark.parametrize("path", SWEEPS, ids=[str(p.relative_to(REPO)) for p in SWEEPS])
def test_shipped_sweep_config_is_valid(path: Path):
    trials = expand(load_config(path))
    assert trials and len({t.trial_id for t in trials}) == len(trials)


def test_there_are_paper_reproduction_configs():
    names = {p.name for p in SWEEPS}
    assert {"quickstart.yaml", "alpha_cpu.yaml", "alpha_resnet18_vgg11_cifar10.yaml"} <= names
