"""The curvature probe inside a trial: `Prober` runs `bench.probes.run_probe` at scheduled steps.

Rows go to ``curvature.parquet`` (docs/science/quantities.md quantities per layer and k) and ``profile.parquet``
(the probe's own cost per layer and phase), both flushed by rank 0 after every probe. With the
``measured`` α policy, each probe also hands Spectral Newton a fresh α per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.config import TrialSpec
from bench.probes import ProbeBatch, run_probe
from bench.probes.measured_alpha import alpha_by_parameter
from bench.timing import timed
from bench.trial.rows import TableLog
from bench.workload import Workload


class Prober:
    """The probe of one trial: a fixed probe batch, the workload's loss, and the probe's tables."""

    def __init__(self, spec: TrialSpec, workload: Workload, device: torch.device, out_dir: Path, write: bool):
        self.spec = spec
        self.settings = spec.probes.settings
        self.batch = ProbeBatch.from_dataset(workload.split(spec.probes.split), self.settings.batch_size,
                                             self.settings.seed)
        self.loss_fn = workload.loss
        self.device = device
        self.curvature = TableLog("curvature", out_dir / "curvature.parquet", write)
        self.profile = TableLog("profile", out_dir / "profile.parquet", write)
        self.unsupported: list[dict[str, Any]] = []

    def probe(self, engine, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Probe after optimizer step ``step`` (a collective) and write the rows; returns the
        seconds the probe took."""
        phases: dict[str, float] = {}
        with timed(self.device, phases, "probe"):
            result = run_probe(engine.module, self.loss_fn, self.batch, self.settings, self.device)
        tag = {"trial_id": self.spec.trial_id, "step": step}
        self.curvature.extend({**row, **tag} for row in result.curvature_rows)
        self.profile.extend({**row, **tag, "sweep_name": self.spec.sweep_name} for row in result.profile_rows)
        if not self.unsupported:
            self.unsupported = result.unsupported_rows()
        if hasattr(optimizer, "set_measured_alpha"):
            optimizer.set_measured_alpha(alpha_by_parameter(result.curvature_rows))
        self.curvature.flush()
        self.profile.flush()
        return phases["probe"]

    def resume(self, step: int) -> None:
        """Keep the rows of the probes up to the checkpoint's step."""
        self.curvature.resume(step)
        self.profile.resume(step)
