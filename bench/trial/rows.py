"""The rows a trial writes: ``steps`` rows, the ``runs`` row, and the per-trial tables they go to.

Rank 0 writes; each table is rewritten whole and atomically (`bench.results.writer`) whenever it
is flushed, so a crash leaves the last flushed version intact and loses at most the rows since.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import metadata
from bench.config import TrialSpec
from bench.results import remote, writer
from bench.throughput import throughput_columns
from bench.timing import median_after_warmup
from bench.trial.state import Interval, TrialState, utc_now


@dataclass
class TableLog:
    """The rows of one per-trial table (``steps``, ``curvature``, ``profile``) at ``path``."""

    table: str
    path: Path
    write: bool  # rank 0 writes; the other ranks keep the rows only to resume alike
    rows: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def flush(self) -> None:
        if self.write and self.rows:
            writer.write_rows(self.table, self.rows, self.path)

    def resume(self, step: int) -> None:
        """Keep the rows written up to optimizer step ``step`` (a checkpoint's): the steps after
        it are recomputed, and keeping their rows would duplicate them."""
        self.rows = [r for r in writer.read_rows(self.path) if r["step"] <= step]


def steps_row(trial_id: str, step: int, global_batch: int, state: TrialState, interval: Interval,
              lr: float, world: int) -> dict[str, Any]:
    """A ``steps`` row after optimizer step ``step`` (evaluation columns NaN until evaluated)."""
    tokens = state.workload.tokens_per_sample if state.workload is not None else 0
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "step": step,
        "samples_seen": step * global_batch,
        "tokens_seen": step * global_batch * tokens,
        "wall_time_s": state.wall_time(),
        "lr": lr,
        "train_loss": state.train_loss,
        "eval_loss": float("nan"),
        "eval_metric": float("nan"),
        **interval.columns(),
    }
    row.update(throughput_columns(row["step_time_s"], global_batch, tokens, state.flops_per_sample, world, state.peak))
    return row


def run_row(spec: TrialSpec, state: TrialState, world: int) -> dict[str, Any]:
    """The trial's ``runs`` row from its state (any status)."""
    workload = state.workload
    tcfg = spec.training
    global_batch = tcfg.micro_batch_size * tcfg.grad_accum * world
    tokens = workload.tokens_per_sample if workload is not None else 0
    config = spec.model_dump(mode="json")
    row: dict[str, Any] = {
        "sweep_name": spec.sweep_name,
        "trial_id": spec.trial_id,
        "trial_index": spec.trial_index,
        "optimizer": spec.optimizer,
        "optimizer_label": spec.optimizer_label,
        "optimizer_entry": spec.optimizer_entry or spec.optimizer,
        "optimizer_settings": json.dumps(spec.optimizer_settings, sort_keys=True),
        "tuning_index": spec.tuning_index,
        "search_space": json.dumps(spec.search_space, sort_keys=True),
        "tuning_stage": spec.tuning_stage,
        "model": spec.workload.model,
        "dataset": spec.workload.dataset,
        # Unknown ("") when the trial failed before its data was loaded.
        "task": workload.task.kind if workload is not None else "",
        "metric_name": workload.metric_name if workload is not None else "",
        "metric_goal": workload.metric_goal if workload is not None else "",
        "world_size": world,
        "seed_index": spec.seed_index,
        "seed": spec.seed,
        "status": state.status,
        "error": state.error,
        "steps_completed": state.step,
        "samples_seen": state.step * global_batch,
        "tokens_seen": state.step * global_batch * tokens,
        "final_train_loss": state.train_loss,
        "final_eval_loss": state.last_eval.loss,
        "final_eval_metric": state.last_eval.metric,
        "best_eval_metric": state.best_metric,
        "best_step": state.best_step,
        "test_loss": state.test.loss,
        "test_metric": state.test.metric,
        "wall_time_s": state.wall_time(),
        "median_step_time_s": median_after_warmup(state.step_times, tcfg.warmup_steps_excluded),
        "model_flops_per_sample": state.flops_per_sample,
        "peak_flops_per_s": state.peak.flops_per_s if state.peak is not None else float("nan"),
        "peak_flops_source": state.peak.source if state.peak is not None else "",
        "num_parameters": state.num_parameters,
        "data_cache_key": (workload.data.cache_key or "") if workload is not None else "",
        "resumed_from_step": state.resumed_from,
        "probe_unsupported_json": json.dumps(state.probe_unsupported, sort_keys=True, default=str),
        "probe_mode": spec.probes.settings.mode if spec.probes.enabled else "",
        "alpha_source": spec.probes.settings.resolved_alpha_source if spec.probes.enabled else "",
        "measured_alpha_json": json.dumps(state.measured_alpha, sort_keys=True, default=str),
        "started_at": state.started_at,
        "finished_at": utc_now(),
        "config_hash": spec.config_hash,
        "config_json": json.dumps(config, sort_keys=True),
        "versions_json": json.dumps(metadata.package_versions(), sort_keys=True),
        "git_commit": metadata.git_commit(),
        "hardware_json": json.dumps(metadata.hardware(), sort_keys=True),
    }
    row.update(writer.flatten("config", {k: config[k] for k in ("workload", "training", "resources")}))
    # The JSON form of the settings: whatever the values were, they flatten.
    row.update(writer.flatten("config.optimizer_settings", config["optimizer_settings"]))
    # Throughput at the median step time (after warm-up), the number a comparison should quote.
    rates = throughput_columns(row["median_step_time_s"], global_batch, tokens, state.flops_per_sample, world,
                               state.peak)
    row.update({f"median_{k}": v for k, v in rates.items()})
    return row


def write_run_row(spec: TrialSpec, out_dir: Path, state: TrialState, world: int) -> None:
    writer.write_rows("runs", [run_row(spec, state, world)], out_dir / "runs.parquet")


def record_failure(spec: TrialSpec, storage: str | os.PathLike, error: str) -> bool:
    """Write a ``failed`` runs row for a trial that died without writing one (a worker killed,
    a rank crashed in a collective). Returns False when the trial already has its row, here or,
    for an object-store storage, in the store (rank 0 may have written it on another node)."""
    mirror = remote.activate(storage)
    out_dir = writer.trial_dir(storage, spec.sweep_name, spec.trial_id)
    runs = out_dir / "runs.parquet"
    if runs.exists() or (mirror is not None and mirror.exists(remote.relative(mirror, runs))):
        return False
    state = TrialState(error=error)
    write_run_row(spec, out_dir, state, spec.resources.num_workers)
    return True
