"""The curvature probe inside a trial: `Prober` runs the probe at scheduled steps.

Rows go to ``curvature.parquet`` (docs/science/quantities.md, per layer and k) and ``profile.parquet``
(the probe's own cost per layer and phase), both flushed by rank 0 after every probe. The modes
(``probes.settings.mode``, `bench.probes.settings.ProbeSettings`):

- ``full`` and ``kronecker``: `bench.probes.run_probe` on the fixed probe batch after the step;
- ``online``: :meth:`Prober.arm` puts `bench.probes.online.OnlineCapture`'s hooks on the
  training model for the scheduled step itself (the loop calls ``capture.watch`` before each
  backward), and :meth:`Prober.probe` turns what the step's own passes left into the rows.

Under Spectral Newton's ``measured`` α policy (and only then) each probe hands the optimizer a
fresh α per parameter — the exact fit or α_kron, per ``probes.settings.alpha_source``; a layer
without a usable fit keeps its previous α, and what was set or skipped, with the reason, is
logged in :attr:`Prober.alpha_log` (the ``runs`` column ``measured_alpha_json``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from bench.config import TrialSpec
from bench.probes import ProbeBatch, ProbeResult, run_probe
from bench.probes.layers import LayerSelection
from bench.probes.measured_alpha import alpha_by_parameter
from bench.probes.online import OnlineCapture
from bench.probes.runner import exact_float32, probe_selection
from bench.timing import timed
from bench.trial.rows import TableLog
from bench.workload import Workload

log = logging.getLogger("specbench.probes")


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
        self.alpha_log: list[dict[str, Any]] = []
        """Per probe and parameter: α handed to the optimizer (``set``) or ``skipped`` with the reason."""
        self.capture: OnlineCapture | None = None
        self._selection: LayerSelection | None = None  # online: the layers, found once

    def arm(self, engine, step: int, last: int) -> OnlineCapture | None:
        """Mode ``online`` at a scheduled probe step: hooks on the training model for step
        ``step`` (the loop hands the capture each micro-batch's loss); None otherwise."""
        if self.settings.mode != "online" or not self.spec.probes.due(step, last):
            return None
        if self._selection is None:
            self._selection = probe_selection(engine.module, self.batch, self.settings, self.device)
        self.capture = OnlineCapture(engine.module, self._selection, self.settings, self.device)
        return self.capture

    def probe(self, engine, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Probe after optimizer step ``step`` (a collective) and write the rows; returns the
        seconds the probe took (in mode online: turning the captured step into rows)."""
        phases: dict[str, float] = {}
        with timed(self.device, phases, "probe"):
            if self.capture is not None:
                capture, self.capture = self.capture, None
                with exact_float32():
                    out = capture.finish()
                result = ProbeResult(out.curvature_rows, out.profile_rows,
                                     (self._selection.unsupported if self._selection else []) + out.unsupported)
            else:
                result = run_probe(engine.module, self.loss_fn, self.batch, self.settings, self.device)
        tag = {"trial_id": self.spec.trial_id, "step": step}
        self.curvature.extend({**row, **tag} for row in result.curvature_rows)
        self.profile.extend({**row, **tag, "sweep_name": self.spec.sweep_name} for row in result.profile_rows)
        if not self.unsupported:
            self.unsupported = result.unsupported_rows()
        self.hand_alpha(optimizer, result.curvature_rows, step)
        self.curvature.flush()
        self.profile.flush()
        return phases["probe"]

    def hand_alpha(self, optimizer: torch.optim.Optimizer, rows: list[dict[str, Any]], step: int) -> None:
        """Give a ``measured``-policy optimizer the probe's α per parameter (module docstring)."""
        if not getattr(optimizer, "measures_alpha", False):
            return
        source = self.settings.resolved_alpha_source
        alphas, skipped = alpha_by_parameter(rows, source)
        skipped.update(optimizer.set_measured_alpha(alphas))  # type: ignore[attr-defined]
        for name, alpha in sorted(alphas.items()):
            if name not in skipped:
                self.alpha_log.append({"step": step, "parameter": name, "source": source, "alpha": alpha,
                                       "status": "set"})
        for name, reason in sorted(skipped.items()):
            log.warning("step %d: measured alpha for %s not set (%s)", step, name, reason)
            self.alpha_log.append({"step": step, "parameter": name, "source": source, "alpha": alphas.get(name),
                                   "status": "skipped", "reason": reason})

    def resume(self, step: int) -> None:
        """Keep the rows of the probes up to the checkpoint's step."""
        self.curvature.resume(step)
        self.profile.resume(step)
