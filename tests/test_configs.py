"""Every shipped sweep config validates (names, settings, resources), so a user can run any of
them unchanged; the CPU-sized paper config runs in the probe tests."""

from __future__ import annotations

import re
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


README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_readme_config_sample_is_a_valid_sweep():
    from bench.yaml_config import loads
    from launchers.sweep import parse_config

    section = README.split("## Config reference", 1)[1]
    sample = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert expand(parse_config(loads(sample), "README.md"))


def test_every_path_and_section_the_readme_names_exists():
    paths = set(re.findall(r"`((?:configs|tests|analysis|bench|launchers|optimizers|scripts|docs)/[^`\s]*)`", README))
    missing = [p for p in paths if "<" not in p and "*" not in p and not (REPO / p).exists()]
    assert not missing, missing
    titles = re.findall(r"^#+ (.+)$", README, re.M) + re.findall(r"\*\*([^*\n]+)\*\*", README)
    # A reference wrapped across lines reads as one space once rendered, so compare it that way.
    refs = [" ".join(ref.split()) for ref in re.findall(r'see "([^"]+)"', README)]
    dangling = [ref for ref in refs if not any(t.startswith(ref) for t in titles)]
    assert not dangling, dangling
