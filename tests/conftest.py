"""Shared fixtures: quiet, CPU-only, no network, DeepSpeed's op cache kept across runs."""

from __future__ import annotations

import os
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
