"""Shared fixtures: quiet, CPU-only, no network, DeepSpeed's op cache kept across runs; the
example plug-in package installed as a user would install it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "specbench" / "torch_extensions"))

REPO = Path(__file__).resolve().parents[1]


def tiny_sweep(**overrides) -> dict:
    """A minimal valid sweep document (a dict as yaml.safe_load would return)."""
    doc = {
        "name": "tiny",
        "seed": 0,
        "seeds": 1,
        "workloads": [{"model": "builtin:cnn", "dataset": "sklearn:digits"}],
        "optimizers": [{"name": "adamw", "settings": {"lr": 0.003}}],
        "training": {"steps": 6, "micro_batch_size": 16, "eval_every": 3, "log_every": 1,
                     "warmup_steps_excluded": 1},
        "resources": {"num_workers": 2, "cpus_per_worker": 0.49},
    }
    doc.update(overrides)
    return doc


@pytest.fixture
def write_yaml(tmp_path):
    import yaml

    def _write(doc, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        return path

    return _write


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory) -> Path:
    """examples/specbench-example-plugin installed with pip (no network, no build isolation: the
    venv's setuptools, a test extra) into a fresh directory that is put on ``sys.path`` and
    ``PYTHONPATH``, so this process, its subprocesses and Ray's workers import it and see its
    entry points. A copy is built, so the checkout gets no build files; the venv is untouched."""
    root = tmp_path_factory.mktemp("example-plugin")
    source, target = root / "source", root / "site-packages"
    shutil.copytree(REPO / "examples" / "specbench-example-plugin", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(target))
        patch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p))
        yield target
