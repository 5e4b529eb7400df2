"""Curvature probes (docs/science/quantities.md): per-layer σ_k, exact h_k, Kronecker factors and their
alignment, on a fixed probe batch, with the cost of measuring them.

Modules, one concept each:

- `settings` — `ProbeSettings` (pydantic, ``extra="forbid"``);
- `probe_batch` — `ProbeBatch`: the fixed batch, micro-batches and rank shards (the sums over
  ranks that make a distributed probe equal a single-process one: `bench.distributed`);
- `layers` — which layers are probed (`select_layers`), forward order, and `UnsupportedLayer`;
- `factors` — hooks: inputs A (im2col for convs), errors δ, C_A, C_δ, concentration sums; the
  scaling conventions;
- `hvp` — exact ⟨D, H D⟩ by double backprop, batched over directions or looped;
- `curvature` — the two passes and the per-(layer, k) rows;
- `phase_timer` — `PhaseTimer`: time and peak memory per phase (the probe's `profile` rows);
- `runner` — `run_probe`, `ProbeResult`; the loss it differentiates is the workload's
  (`bench.workload.Workload.loss`);
- `standalone` — `specbench probe`: a checkpoint probed outside training.

The package's names are loaded on first use (PEP 562), so that reading a config's probe settings
(`bench.config` imports `settings`) does not import torch and the probe's code: `specbench report`,
`status` and the config checks start in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.probes.curvature import CURVATURE_COLUMNS
    from bench.probes.layers import ProbedLayer, UnsupportedLayer, select_layers
    from bench.probes.probe_batch import ProbeBatch
    from bench.probes.runner import ProbeResult, eval_mode, run_probe
    from bench.probes.settings import ProbeSettings

#: Exported name → the module of this package that defines it.
_HOME = {
    "CURVATURE_COLUMNS": "curvature",
    "ProbeBatch": "probe_batch",
    "ProbeResult": "runner",
    "ProbeSettings": "settings",
    "ProbedLayer": "layers",
    "UnsupportedLayer": "layers",
    "eval_mode": "runner",
    "run_probe": "runner",
    "select_layers": "layers",
}

__all__ = [
    "CURVATURE_COLUMNS",
    "ProbeBatch",
    "ProbeResult",
    "ProbeSettings",
    "ProbedLayer",
    "UnsupportedLayer",
    "eval_mode",
    "run_probe",
    "select_layers",
]
assert set(__all__) == set(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'bench.probes' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bench.probes.{_HOME[name]}"), name)
