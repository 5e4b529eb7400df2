"""The typed state of one trial: what the loop has learnt so far, and the sums of a log interval."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from bench.errors import PermanentTrialError
from bench.throughput import Peak
from bench.workload import Evaluation, Metric, Workload


class Diverged(RuntimeError):
    """The training loss became non-finite or exceeded ``training.divergence_loss``."""


@dataclass
class TrialOutcome:
    """What `run_trial` returns on every rank."""

    trial_id: str
    status: str
    steps_completed: int
    summary: dict[str, Any] = field(default_factory=dict)


def utc_now() -> str:
    """The time of day in UTC, to the second (ISO 8601), as the runs table records it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class TrialState:
    """Everything the ``runs`` row reports, kept up to date by the loop's phases.

    A trial that fails at any point still writes its row from this state, so the defaults are
    what a trial that never got that far reports (status ``failed``, NaN metrics).
    """

    status: str = "failed"  # completed | diverged | failed
    error: str = ""
    step: int = 0  # optimizer steps completed (a diverging step counts: it ran)
    train_loss: float = math.nan  # the last step's loss that passed the divergence check
    last_eval: Evaluation = field(default_factory=Evaluation)
    best_metric: float = math.nan
    best_step: int = -1
    test: Evaluation = field(default_factory=Evaluation)
    step_times: list[float] = field(default_factory=list)
    resumed_from: int = 0
    probe_unsupported: list[dict[str, Any]] = field(default_factory=list)
    measured_alpha: list[dict[str, Any]] = field(default_factory=list)  # the Prober's alpha_log
    # Facts found during set-up.
    workload: Workload | None = None
    num_parameters: int = 0
    flops_per_sample: float = math.nan
    peak: Peak | None = None
    started_at: str = field(default_factory=utc_now)
    clock_start: float = field(default_factory=time.perf_counter)

    def wall_time(self) -> float:
        """Seconds since the trial started (in this attempt)."""
        return time.perf_counter() - self.clock_start

    def record_eval(self, evaluation: Evaluation, step: int, metric: Metric) -> None:
        """Keep a validation result and the best metric so far (by the metric's goal)."""
        self.last_eval = evaluation
        if metric.improves(evaluation.metric, self.best_metric):
            self.best_metric, self.best_step = evaluation.metric, step

    def fail(self, exc: BaseException) -> None:
        """Record a failure; a set-up failure is recorded by its cause (the data, model,
        optimizer or engine error), the wrapper only tells the launcher not to retry."""
        error = exc.reason if isinstance(exc, PermanentTrialError) else f"{type(exc).__name__}: {exc}"
        self.status, self.error = "failed", error

    def client_state(self) -> dict[str, Any]:
        """The part of the state a checkpoint carries (DeepSpeed's ``client_state``)."""
        return {"best_metric": self.best_metric, "best_step": self.best_step,
                "last_eval": [self.last_eval.loss, self.last_eval.metric], "train_loss": self.train_loss}

    def restore(self, client_state: Mapping[str, Any], step: int) -> None:
        """Continue from a checkpoint taken after optimizer step ``step``."""
        self.best_metric = client_state.get("best_metric", self.best_metric)
        self.best_step = client_state.get("best_step", self.best_step)
        self.train_loss = client_state.get("train_loss", self.train_loss)
        if "last_eval" in client_state:
            self.last_eval = Evaluation(*client_state["last_eval"])
        self.step = self.resumed_from = step


#: Columns of the ``steps`` table that are means of per-step phase seconds over an interval.
#: ``data_time_s`` is the part of the step spent waiting for input (inside ``step_time_s``).
PHASE_COLUMNS = ("step_time_s", "fwd_bwd_time_s", "optimizer_time_s", "comm_time_s", "data_time_s")


@dataclass
class Interval:
    """Sums over the optimizer steps since the last ``steps`` row.

    A row reports the mean of each phase's seconds over the interval, the probe's *total*
    seconds (probes are rare; a mean would hide them), and the optimizer's ``step_metrics()`` as
    per-step means, except counters (keys ending in ``fallbacks``), which are summed.
    """

    steps: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    probe_seconds: float = 0.0
    optimizer: dict[str, float] = field(default_factory=dict)

    def add_step(self, seconds: Mapping[str, float], optimizer_metrics: Mapping[str, float]) -> None:
        for key in PHASE_COLUMNS:
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds[key]
        for key, value in optimizer_metrics.items():
            self.optimizer[f"opt_{key}"] = self.optimizer.get(f"opt_{key}", 0.0) + float(value)
        self.steps += 1

    def columns(self) -> dict[str, float]:
        """The interval's columns of a ``steps`` row."""
        out = {key: value / self.steps for key, value in self.seconds.items()}
        out["probe_time_s"] = self.probe_seconds
        out.update({k: v if k.endswith("fallbacks") else v / self.steps for k, v in self.optimizer.items()})
        return out
