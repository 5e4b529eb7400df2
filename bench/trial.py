"""One trial: the training loop every worker runs (AlgoPerf's "runner" role).

The loop owns timing, evaluation and logging; the workload (model + data) and the optimizer are
plugged in through the registries. It needs an initialised ``torch.distributed`` process group
(Ray Train's, or one made by ``specbench train``) and nothing from Ray, so a trial runs the same
way inside a sweep, from the command line, and in the tests.

Per optimizer step ``t`` (1-based in the results):

1. every rank runs ``grad_accum`` micro-batches of its shard of the global batch through
   ``engine.forward``/``engine.backward`` (DeepSpeed all-reduces gradients at the boundary);
2. ``engine.step()`` applies gradient clipping, the client optimizer and the lr schedule;
3. the step's loss (mean over ranks and micro-batches) is all-reduced and checked for divergence.

Rank 0 writes the ``steps`` table at every evaluation (so a crash loses at most one evaluation
interval) and the ``runs`` row at the end, always atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench import checkpoint, metadata
from bench import data as data_registry
from bench import models as model_registry
from bench.batching import GlobalBatchSampler, fetch, shard_range
from bench.config import TrialSpec
from bench.deepspeed_config import deepspeed_config, lr_lambda
from bench.distributed import all_reduce_sum, rank_and_world
from bench.errors import PermanentTrialError
from bench.results import remote, writer
from bench.seeds import data_seed, derive_seed, model_init_seed, rank_seed, seed_everything
from bench.throughput import count_train_flops, device_peak, throughput_columns
from bench.timing import CallTimer, median_after_warmup, synchronize, timed

Reporter = Callable[[dict[str, Any]], None]

log = logging.getLogger("specbench.trial")


class Diverged(RuntimeError):
    """The training loss became non-finite or exceeded ``training.divergence_loss``."""


@dataclass
class TrialOutcome:
    trial_id: str
    status: str
    steps_completed: int
    summary: dict[str, Any] = field(default_factory=dict)


def _device(spec: TrialSpec) -> torch.device:
    if spec.resources.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _loss(task_kind: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task_kind == "lm":
        return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), target.reshape(-1))
    return F.cross_entropy(output.float(), target)


@torch.no_grad()
def evaluate(engine, dataset, task, spec: TrialSpec, device: torch.device) -> tuple[float, float]:
    """(loss, metric) on a split, each rank taking a contiguous shard; sums are all-reduced so the
    result is the exact full-split value whatever the world size. Metric: accuracy for
    classification, perplexity exp(mean token loss) for language models."""
    rank, world = rank_and_world()
    module = engine.module
    was_training = module.training
    module.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    shard = shard_range(len(dataset), world, rank)
    bs = spec.training.eval_batch_size
    for start in range(shard.start, shard.stop, bs):
        x, y = fetch(dataset, list(range(start, min(start + bs, shard.stop))))
        x, y = x.to(device), y.to(device)
        out = module(x.to(_input_dtype(engine, x)))
        if task.kind == "lm":
            tokens = y.numel()
            loss_sum += float(F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1), reduction="sum"))
            count += tokens
        else:
            loss_sum += float(F.cross_entropy(out.float(), y, reduction="sum"))
            correct += float((out.argmax(dim=-1) == y).sum())
            count += y.shape[0]
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], device)
    module.train(was_training)
    if count == 0:
        return float("nan"), float("nan")
    loss = loss_sum / count
    metric = math.exp(min(loss, 50.0)) if task.kind == "lm" else correct / count
    return loss, metric


def _input_dtype(engine, x: torch.Tensor) -> torch.dtype:
    # Token ids stay integer; images follow the engine's precision.
    if not x.is_floating_point():
        return x.dtype
    return torch.bfloat16 if engine.bfloat16_enabled() else torch.float32


@contextlib.contextmanager
def _set_up(what: str):
    """Raise a failure of this set-up step as :class:`PermanentTrialError`: the same data, model,
    settings and engine fail the same way on every attempt, so launchers must not retry it."""
    try:
        yield
    except PermanentTrialError:
        raise
    except Exception as exc:
        raise PermanentTrialError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _report_interval(spec: TrialSpec) -> int:
    every = spec.training.report_every
    return every if every > 0 else max(1, spec.training.steps // 5)


def run_trial(spec: TrialSpec, storage: str | os.PathLike, reporter: Reporter | None = None) -> TrialOutcome:
    """Train one trial on the current process group and write its results (rank 0).

    ``reporter`` is called on every rank with a small progress dict every ``report_every`` steps
    and at the end (inside Ray it forwards to ``ray.train.report``, which all ranks must call the
    same number of times).
    """
    import deepspeed  # imported late: it inspects the accelerator at import time

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    rank, world = rank_and_world()
    device = _device(spec)
    tcfg = spec.training
    remote.activate(storage)  # an object-store storage: uploads follow every write from here on
    out_dir = writer.trial_dir(storage, spec.sweep_name, spec.trial_id)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()

    steps_rows: list[dict[str, Any]] = []
    state = _initial_state()

    def flush_steps() -> None:
        if rank == 0 and steps_rows:
            writer.write_rows("steps", steps_rows, out_dir / "steps.parquet")

    try:
        # Data and model are built identically on every rank (same seeds); DeepSpeed also
        # broadcasts rank 0's weights, so the replicas start equal either way.
        with _set_up(f"dataset {spec.workload.dataset}"):
            bundle = data_registry.load_dataset(spec.workload.dataset, spec.workload.dataset_args, data_seed(spec.seed))
        task = bundle.task
        state["task"] = task
        seed_everything(model_init_seed(spec.seed))
        with _set_up(f"model {spec.workload.model}"):
            model = model_registry.build_model(spec.workload.model, task, spec.workload.model_args)
        state["num_parameters"] = sum(p.numel() for p in model.parameters())
        # Counted before DeepSpeed takes the model (and before the rank seeds), on one sample, on
        # the trial's device (where DeepSpeed would move the model anyway): milliseconds on a
        # GPU even for a 1B model. A meta-device count would be free but transformers' masks
        # read tensor values, which meta tensors do not have.
        model.to(device)
        x1, y1 = (t.to(device) for t in fetch(bundle.train, [0]))
        state["flops_per_sample"] = count_train_flops(model, x1, lambda out: _loss(task.kind, out, y1))
        peak = device_peak(device, tcfg.precision, spec.resources.peak_tflops)
        state["peak"] = peak
        seed_everything(rank_seed(spec.seed, rank))

        import optimizers

        with _set_up(f"optimizer {spec.optimizer}"):
            client_opt = optimizers.build(spec.optimizer, model, **spec.optimizer_settings)
            scheduler = torch.optim.lr_scheduler.LambdaLR(client_opt, lr_lambda(tcfg))
        with _set_up("DeepSpeed engine"):
            engine, _, _, _ = deepspeed.initialize(
                model=model,
                optimizer=client_opt,
                lr_scheduler=scheduler,
                config=deepspeed_config(tcfg, world),
                dist_init_required=False,
            )
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.pull(out_dir)  # results and checkpoint of an earlier attempt, possibly on another node
        checkpoint.write_pid(out_dir, rank)
        prober = _Prober(spec, bundle, task, device) if spec.probes.enabled else None
        start_step = 0
        resumed = checkpoint.load(engine, out_dir) if tcfg.checkpoint_every > 0 else None
        if resumed is not None:
            start_step = int(resumed["step"])
            for key in ("best_metric", "best_step", "last_eval", "train_loss"):
                if key in resumed:
                    state[key] = resumed[key]
            state["step"] = start_step
            # Rows after the checkpoint are recomputed; keeping them would duplicate steps.
            steps_rows.extend(r for r in _read_rows(out_dir / "steps.parquet") if r["step"] <= start_step)
            if prober is not None:
                prober.resume(out_dir, start_step)
            state["resumed_from"] = start_step
            # Per-rank randomness continues from a seed tied to the resume point.
            seed_everything(derive_seed(rank_seed(spec.seed, rank), "resume", start_step))
        allreduce_timer = CallTimer(engine, "allreduce_gradients", device)
        sampler = GlobalBatchSampler(
            num_samples=len(bundle.train), seed=data_seed(spec.seed), micro_batch=tcfg.micro_batch_size,
            grad_accum=tcfg.grad_accum, world_size=world, rank=rank,
        )
        tokens_per_sample = task.seq_len if task.kind == "lm" else 0
        report_every = _report_interval(spec)
        interval: dict[str, float] = {}
        interval_steps = 0
        engine.train()

        for step in range(start_step, tcfg.steps):
            phases: dict[str, float] = {}
            loss_sum = 0.0
            with timed(device, phases, "step"):
                for micro in range(tcfg.grad_accum):
                    x, y = fetch(bundle.train, sampler.indices(step, micro))
                    x, y = x.to(device), y.to(device)
                    with timed(device, phases, "fwd_bwd"):
                        out = engine(x.to(_input_dtype(engine, x)))
                        loss = _loss(task.kind, out, y)
                        engine.backward(loss)
                    loss_sum += float(loss.detach())
                with timed(device, phases, "opt"):
                    engine.step()
                # The gradient all-reduce runs inside engine.backward at the accumulation
                # boundary: it is inside our fwd_bwd time, so it is subtracted there to keep the
                # phases disjoint.
                comm = allreduce_timer.pop()
                (total_loss, nonfinite) = all_reduce_sum(
                    [loss_sum / tcfg.grad_accum, 0.0 if math.isfinite(loss_sum) else 1.0], device
                )
            step_loss = total_loss / world
            state["step"] = step + 1
            state["step_times"].append(phases["step"])
            for key, value in (("step", phases["step"]), ("fwd_bwd", phases["fwd_bwd"] - comm),
                               ("opt", phases["opt"]), ("comm", comm)):
                interval[key] = interval.get(key, 0.0) + value
            opt_metrics = getattr(client_opt, "step_metrics", None)
            if callable(opt_metrics):
                for key, value in opt_metrics().items():
                    interval[f"opt_{key}"] = interval.get(f"opt_{key}", 0.0) + float(value)
            interval_steps += 1

            if nonfinite > 0 or not math.isfinite(step_loss) or step_loss > tcfg.divergence_loss:
                raise Diverged(f"training loss {step_loss:.4g} at step {step + 1}")
            state["train_loss"] = step_loss
            if prober is not None and spec.probes.due(step + 1, tcfg.steps):
                # A collective outside the step timer: probe time is never billed as step time.
                interval["probe"] = interval.get("probe", 0.0) + prober.probe(engine, client_opt, step + 1)
                if rank == 0:
                    prober.flush(out_dir)

            done = step + 1 == tcfg.steps
            do_eval = (step + 1) % tcfg.eval_every == 0 or done
            if (step + 1) % tcfg.log_every == 0 or do_eval:
                row: dict[str, Any] = {
                    "trial_id": spec.trial_id,
                    "step": step + 1,
                    "samples_seen": (step + 1) * sampler.global_batch,
                    "tokens_seen": (step + 1) * sampler.global_batch * tokens_per_sample,
                    "wall_time_s": time.perf_counter() - t_start,
                    "lr": float(client_opt.param_groups[0]["lr"]),
                    "train_loss": step_loss,
                    "eval_loss": float("nan"),
                    "eval_metric": float("nan"),
                    "step_time_s": interval.pop("step") / interval_steps,
                    "fwd_bwd_time_s": interval.pop("fwd_bwd") / interval_steps,
                    "optimizer_time_s": interval.pop("opt") / interval_steps,
                    "comm_time_s": interval.pop("comm") / interval_steps,
                    # Total probe seconds in the interval (probes are rare; a mean would hide them).
                    "probe_time_s": interval.pop("probe", 0.0),
                }
                row.update(throughput_columns(
                    row["step_time_s"], sampler.global_batch, tokens_per_sample,
                    state["flops_per_sample"], world, peak,
                ))
                # Optimizer metrics are per-step means over the interval, except counters.
                row.update({k: v if k.endswith("fallbacks") else v / interval_steps for k, v in interval.items()})
                interval, interval_steps = {}, 0
                if do_eval:
                    ev_loss, ev_metric = evaluate(engine, bundle.val, task, spec, device)
                    row["eval_loss"], row["eval_metric"] = ev_loss, ev_metric
                    state["last_eval"] = (ev_loss, ev_metric)
                    better = (ev_metric > state["best_metric"]) if task.metric_name == "accuracy" else (
                        ev_metric < state["best_metric"])
                    if math.isnan(state["best_metric"]) or better:
                        state["best_metric"], state["best_step"] = ev_metric, step + 1
                steps_rows.append(row)
                if do_eval:
                    flush_steps()
            if tcfg.checkpoint_every > 0 and (step + 1) % tcfg.checkpoint_every == 0 and not done:
                flush_steps()  # rows up to this step must be on disk before the checkpoint is
                checkpoint.save(engine, out_dir, step + 1, {
                    "best_metric": state["best_metric"], "best_step": state["best_step"],
                    "last_eval": list(state["last_eval"]), "train_loss": state["train_loss"],
                })
            if reporter is not None and ((step + 1) % report_every == 0 and not done):
                reporter({"step": step + 1, "steps": tcfg.steps, "train_loss": step_loss})

        if tcfg.keep_checkpoint and tcfg.checkpoint_every > 0:
            # The final weights, for `specbench probe --checkpoint` and later analysis.
            checkpoint.save(engine, out_dir, tcfg.steps, {
                "best_metric": state["best_metric"], "best_step": state["best_step"],
                "last_eval": list(state["last_eval"]), "train_loss": state["train_loss"],
            })
        state["test"] = evaluate(engine, bundle.test, task, spec, device)
        state["status"] = "completed"
        if prober is not None:
            state["probe_unsupported"] = prober.unsupported
    except Diverged as exc:
        state["status"], state["error"] = "diverged", str(exc)
    except Exception as exc:  # recorded, then re-raised so Ray marks the trial as errored
        state["status"], state["error"] = "failed", f"{type(exc).__name__}: {exc}"
        if rank == 0:
            flush_steps()
            _write_run_row(spec, out_dir, state, started_at, t_start, world)
        raise
    synchronize(device)
    if rank == 0:
        flush_steps()
        _write_run_row(spec, out_dir, state, started_at, t_start, world)
        if not tcfg.keep_checkpoint:
            checkpoint.remove(out_dir)
    outcome = TrialOutcome(spec.trial_id, state["status"], state["step"], {"train_loss": state["train_loss"]})
    if reporter is not None:
        reporter({"step": state["step"], "steps": tcfg.steps, "train_loss": state["train_loss"],
                  "status": state["status"], "done": True})
    return outcome


class _Prober:
    """Runs the curvature probe (bench/probes) at scheduled steps and keeps its rows.

    Rows go to ``curvature.parquet`` (PAPER.md §1 quantities per layer and k) and
    ``profile.parquet`` (the probe's own cost per layer and phase). With the ``measured`` α
    policy, each probe also hands Spectral Newton a fresh α per layer.
    """

    def __init__(self, spec: TrialSpec, bundle, task, device: torch.device):
        from bench.probes import ProbeBatch, mean_loss_for_task

        self.spec = spec
        self.settings = spec.probes.settings
        split = bundle.train if spec.probes.split == "train" else bundle.val
        self.batch = ProbeBatch.from_dataset(split, self.settings.batch_size, self.settings.seed)
        self.loss_fn = mean_loss_for_task(task.kind)
        self.device = device
        self.curvature: list[dict[str, Any]] = []
        self.profile: list[dict[str, Any]] = []
        self.unsupported: list[dict[str, Any]] = []

    def probe(self, engine, optimizer, step: int) -> float:
        """Probe after optimizer step ``step``; returns the seconds it took."""
        from bench.probes import run_probe
        from bench.probes.measured_alpha import alpha_by_parameter

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
        return phases["probe"]

    def flush(self, out_dir: Path) -> None:
        if self.curvature:
            writer.write_rows("curvature", self.curvature, out_dir / "curvature.parquet")
        if self.profile:
            writer.write_rows("profile", self.profile, out_dir / "profile.parquet")

    def resume(self, out_dir: Path, start_step: int) -> None:
        self.curvature = [r for r in _read_rows(out_dir / "curvature.parquet") if r["step"] <= start_step]
        self.profile = [r for r in _read_rows(out_dir / "profile.parquet") if r["step"] <= start_step]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing per-trial Parquet file (empty when absent)."""
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    return pq.read_table(path).drop_columns(["schema_version"]).to_pylist()


def _initial_state() -> dict[str, Any]:
    return {
        "status": "failed", "error": "", "step": 0, "best_metric": float("nan"), "best_step": -1,
        "last_eval": (float("nan"), float("nan")), "test": (float("nan"), float("nan")),
        "train_loss": float("nan"), "step_times": [], "task": None, "num_parameters": 0,
        "resumed_from": 0, "probe_unsupported": [], "flops_per_sample": float("nan"), "peak": None,
    }


def record_failure(spec: TrialSpec, storage: str | os.PathLike, error: str) -> bool:
    """Write a ``failed`` runs row for a trial that died without writing one (a worker killed,
    a rank crashed in a collective). Returns False when the trial already has its row."""
    remote.activate(storage)
    out_dir = writer.trial_dir(storage, spec.sweep_name, spec.trial_id)
    if (out_dir / "runs.parquet").exists():
        return False
    state = _initial_state()
    state["error"] = error
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write_run_row(spec, out_dir, state, now, time.perf_counter(), spec.resources.num_workers)
    return True


def _write_run_row(spec: TrialSpec, out_dir: Path, state: dict[str, Any], started_at: str,
                   t_start: float, world: int) -> None:
    task = state["task"]
    kind = task.kind if task is not None else ""
    metric_name = task.metric_name if task is not None else ""
    tcfg = spec.training
    global_batch = tcfg.micro_batch_size * tcfg.grad_accum * world
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
        "model": spec.workload.model,
        "dataset": spec.workload.dataset,
        "task": kind,
        "metric_name": metric_name,
        "metric_goal": "max" if metric_name == "accuracy" else "min",
        "world_size": world,
        "seed_index": spec.seed_index,
        "seed": spec.seed,
        "status": state["status"],
        "error": state["error"],
        "steps_completed": state["step"],
        "samples_seen": state["step"] * global_batch,
        "tokens_seen": state["step"] * global_batch * (task.seq_len if kind == "lm" else 0),
        "final_train_loss": state["train_loss"],
        "final_eval_loss": state["last_eval"][0],
        "final_eval_metric": state["last_eval"][1],
        "best_eval_metric": state["best_metric"],
        "best_step": state["best_step"],
        "test_loss": state["test"][0],
        "test_metric": state["test"][1],
        "wall_time_s": time.perf_counter() - t_start,
        "median_step_time_s": median_after_warmup(state["step_times"], tcfg.warmup_steps_excluded),
        "model_flops_per_sample": state["flops_per_sample"],
        "peak_flops_per_s": state["peak"].flops_per_s if state["peak"] is not None else float("nan"),
        "peak_flops_source": state["peak"].source if state["peak"] is not None else "",
        "num_parameters": state["num_parameters"],
        "resumed_from_step": state["resumed_from"],
        "probe_unsupported_json": json.dumps(state["probe_unsupported"], sort_keys=True, default=str),
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": spec.config_hash,
        "config_json": json.dumps(config, sort_keys=True),
        "versions_json": json.dumps(metadata.package_versions(), sort_keys=True),
        "git_commit": metadata.git_commit(),
        "hardware_json": json.dumps(metadata.hardware(), sort_keys=True),
    }
    row.update(writer.flatten("config", {k: config[k] for k in ("workload", "training", "resources")}))
    with contextlib.suppress(Exception):
        row.update(writer.flatten("config.optimizer_settings", spec.optimizer_settings))
    # Throughput at the median step time (after warm-up), the number a comparison should quote.
    rates = throughput_columns(
        row["median_step_time_s"], global_batch, task.seq_len if kind == "lm" else 0,
        state["flops_per_sample"], world, state["peak"],
    )
    row.update({f"median_{k}": v for k, v in rates.items()})
    writer.write_rows("runs", [row], out_dir / "runs.parquet")
