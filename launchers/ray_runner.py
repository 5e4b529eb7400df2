"""Running a sweep on Ray: Ray Tune drives one Ray Train ``TorchTrainer`` per trial.

Shape (STACK.md, measured on Ray 2.60 with Train V2):

- each Tune trial is a small function holding 0.01 CPU that builds a ``TorchTrainer`` whose
  workers (``ScalingConfig(num_workers, use_gpu, resources_per_worker)``) form the gloo/nccl
  process group; ``TuneReportCallback`` forwards the workers' progress reports to Tune;
- the workers call :func:`bench.trial.run_trial`, which writes the Parquet results itself (rank
  0), so nothing depends on Ray's result plumbing (``Result.metrics`` can come back empty);
- Ray Train's health-check poll is shortened, otherwise each report waits ≈ 2.5 s;
- a trial ends only when its function returns, after ``trainer.fit()`` has torn the worker group
  down and released its placement group. Progress reports therefore never carry Tune's control
  keys (``done`` would make Tune stop the trial actor at once, killing the controller it owns
  before the teardown, and the group stayed reserved for the rest of the sweep: issue #12);
- retries are decided here, not by Ray Train: a dead worker restarts the trial up to
  ``resources.max_retries`` times (it resumes from its checkpoint), a set-up error that repeats
  on every attempt (:class:`bench.errors.PermanentTrialError`) fails the trial at once;
- a :class:`launchers.watchdog.StallGuard`, hooked into Tune's loop (:mod:`launchers.tune_hooks`),
  releases placement groups that outlive their run anyway, says what a stalled sweep waits for,
  and stops it after ``resources.stall_timeout_s`` seconds without a trial event.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import ResourcesConfig, SweepConfig, TrialSpec
from bench.errors import PermanentTrialError

#: Environment of every Ray process the sweep starts (driver side, trial actors and workers).
WORKER_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning",
    "RAY_TRAIN_V2_ENABLED": "1",
    # Ray Train gives a worker group 60 s to start. On a loaded machine importing torch and
    # DeepSpeed takes longer; the timeout then errors the attempt, and without the dashboard's
    # State API the failed attempt's placement group is never released (observed: every later
    # trial waited forever). A generous timeout avoids the error path altogether.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "900",
    # Tune's console tables would fight with our progress display; results live in Parquet.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Trials with fractional CPU start more worker processes than cores; that is intended here,
    # so the raylet's "N worker processes started" warning is noise.
    "RAY_worker_maximum_startup_concurrency": "64",
    # Ray starts its worker processes at niceness 15, so any ordinary process on the machine takes
    # their CPU first: with two busy loops on 2 cores the trials' workers got ~4 % of a core each
    # and `make demo` had not finished one step after 7 minutes (issue #12). The training workers
    # are the job; they run at normal priority, as `specbench train` does without Ray. Read by
    # the raylet this process starts (embedded Ray); a cluster's own `ray start` decides for its
    # nodes (README "Running on a cluster").
    "RAY_worker_niceness": "0",
}

#: Ray's switch for single-machine mode (named for the platforms where it is the default).
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

TRIAL_ACTOR_CPU = 0.01  # a Tune trial with 0 CPU is rejected; the trainer's workers hold the rest



@dataclass
class TrialEvent:
    kind: str  # start | result | complete | error | notice (a message for the user, no trial)
    trial_id: str
    metrics: dict[str, Any]


GIB = 2**30


def worker_resources(res: ResourcesConfig) -> dict[str, float]:
    """What each Ray Train worker of a trial asks for: its CPU share on CPU workers (a GPU worker
    gets one GPU from ``use_gpu``), and ``memory`` (bytes, Ray's logical memory resource) when
    ``memory_per_worker_gib`` is set."""
    out: dict[str, float] = {} if res.use_gpu else {"CPU": res.cpus_per_worker}
    if res.memory_per_worker_gib is not None:
        out["memory"] = res.memory_per_worker_gib * GIB
    return out


def sweep_resource_problems(cfg: SweepConfig, cluster: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """:func:`resource_problems` of the sweep's resources, and the memory problems of every
    optimizer entry that reserves its own (``optimizers.<i>.memory_per_worker_gib``)."""
    problems = resource_problems(cfg.resources, cluster, nodes)
    for i, entry in enumerate(cfg.optimizers):
        if entry.memory_per_worker_gib is not None:
            own = memory_problems(entry.trial_resources(cfg.resources), cluster, nodes)
            problems += [f"optimizers.{i}.{p.removeprefix('resources: ')}" for p in own]
    return problems


def memory_problems(res: ResourcesConfig, cluster: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """Why a trial's memory reservation can never be placed on this cluster (empty when it can,
    or when the shape does not know the cluster's memory: a Slurm allocation described by its
    CPUs and GPUs, whose Ray memory is sized on the nodes)."""
    if res.memory_per_worker_gib is None or "memory" not in cluster:
        return []
    mem, node_mem = cluster.get("memory", 0.0) / GIB, max((n.get("memory", 0.0) for n in nodes), default=0.0) / GIB
    if res.num_workers * res.memory_per_worker_gib > mem:
        return [f"resources: memory_per_worker_gib {res.memory_per_worker_gib:g} × {res.num_workers} workers: one "
                f"trial reserves {res.num_workers * res.memory_per_worker_gib:g} GiB but the cluster's Ray memory "
                f"is {mem:.1f} GiB; lower memory_per_worker_gib or num_workers"]
    if res.memory_per_worker_gib > node_mem:
        return [f"resources: memory_per_worker_gib {res.memory_per_worker_gib:g}: no node has that much for one "
                f"worker (largest: {node_mem:.1f} GiB)"]
    return []


def resource_problems(res: ResourcesConfig, cluster: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """Why a trial's request can never be scheduled on this cluster (empty when it can)."""
    problems = memory_problems(res, cluster, nodes)
    cpu_total = cluster.get("CPU", 0.0)
    need_cpu = res.num_workers * res.cpus_per_worker + TRIAL_ACTOR_CPU
    if need_cpu > cpu_total + 1e-9:
        problems.append(
            f"resources: one trial needs {need_cpu:g} CPU ({res.num_workers} workers × {res.cpus_per_worker:g} "
            f"+ {TRIAL_ACTOR_CPU}) but the cluster has {cpu_total:g}; lower num_workers or cpus_per_worker"
        )
    if not any(n.get("CPU", 0.0) >= res.cpus_per_worker for n in nodes):
        problems.append(f"resources: no node has {res.cpus_per_worker:g} CPU for one worker")
    if res.use_gpu:
        gpus = cluster.get("GPU", 0.0)
        if gpus < res.num_workers:
            problems.append(
                f"resources: use_gpu with {res.num_workers} workers needs {res.num_workers} GPUs but the "
                f"cluster has {gpus:g}; set use_gpu: false to train on CPU workers over gloo"
            )
    return problems


def local_cluster_shape() -> tuple[dict[str, float], list[dict[str, float]]]:
    """Resources an embedded Ray would have on this machine, known without starting it (its
    ``memory`` as Ray sizes it: the memory available now less the object store)."""
    import torch

    res = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count()),
           "memory": float(max(0, _available_memory() - object_store_bytes()))}
    return res, [res]


def object_store_bytes() -> int:
    """The embedded Ray's object store (``SPECBENCH_OBJECT_STORE_BYTES``, default 512 MiB)."""
    return int(os.environ.get("SPECBENCH_OBJECT_STORE_BYTES", 512 * 2**20))


def _available_memory() -> int:
    """Memory available to new processes (cgroup-aware, as Ray estimates it)."""
    try:
        from ray._private.utils import estimate_available_memory  # no public equivalent
    except ImportError:  # pragma: no cover - depends on the Ray version
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(estimate_available_memory())


def other_local_ray() -> list[str]:
    """GCS addresses of Ray instances already running on this machine (empty when none, or when
    this Ray version does not expose the lookup).

    An embedded Ray next to another instance deadlocks trials: Ray Train's placement-group
    cleaner asks the State API which instance it belongs to, cannot tell with two running, and
    never releases a finished trial's resources (observed with Ray 2.5x: ``Found multiple
    active Ray instances`` in the cleaner's log, then every later trial waits forever).
    """
    try:
        from ray._private.services import find_gcs_addresses  # no public equivalent
    except ImportError:  # pragma: no cover - depends on the Ray version
        return []
    # An instance shut down a moment ago (a previous command's embedded Ray) may still be
    # exiting: look again for a few seconds before calling it a conflict.
    found: list[str] = []
    for attempt in range(4):
        try:
            found = sorted(find_gcs_addresses())
        except Exception:  # noqa: BLE001 - a failed lookup must not block a run
            return []
        if not found:
            return []
        if attempt < 3:
            time.sleep(2.0)
    return found


def _set_single_machine_mode(on: bool) -> None:
    """Make an embedded Ray listen on loopback only (``on``), or restore cluster mode.

    ``_node_ip_address="127.0.0.1"`` alone does not do it: Ray replaces a loopback node address
    by the machine's routable one, and its GCS, raylet, workers and agents then listen on every
    interface. With Ray's single-machine mode (the default on macOS and Windows) the node address
    stays 127.0.0.1 and every server binds to loopback (tests/test_ray_localhost.py checks the
    listening sockets). The switch is an environment variable read when Ray is imported; the
    processes Ray starts inherit it, and this process's copy of the constant is set to match.
    """
    if on:
        os.environ[LOCAL_ONLY_ENV] = "0"
    else:
        os.environ.pop(LOCAL_ONLY_ENV, None)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = not on


def start_ray(address: str | None, verbose: bool = False) -> None:
    """Join ``address`` or start Ray embedded on this machine, bound to localhost."""
    _set_single_machine_mode(not address)
    import ray

    os.environ.update(WORKER_ENV)
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)
        # Tune logs each failed trial with its remote traceback; the progress display already
        # names the trial and its error in one line, and the runs row keeps the error.
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": dict(WORKER_ENV)},
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "configure_logging": True,
        "ignore_reinit_error": True,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Embedded: no dashboard (saves ~0.9 GiB), bounded object store, localhost only.
        ray.init(
            include_dashboard=False,
            object_store_memory=object_store_bytes(),
            _node_ip_address="127.0.0.1",
            **kwargs,
        )


def cluster_shape() -> tuple[dict[str, float], list[dict[str, float]]]:
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return dict(ray.cluster_resources()), nodes


def _worker_loop(config: dict[str, Any]) -> None:
    """Body of every Ray Train worker: run the trial on the process group Ray set up."""
    import ray.train

    from bench.distributed import configure_cpu_threads
    from bench.trial import run_trial

    warnings.filterwarnings("ignore")
    spec = TrialSpec.model_validate(config["trial"])
    if not spec.resources.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        configure_cpu_threads(spec.resources.threads_per_worker)
    run_trial(spec, config["storage"], reporter=lambda metrics: ray.train.report(tune_safe(metrics)))


def tune_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with Tune's control keys renamed ``trial_<key>`` (values kept).

    Ray Train forwards every report to Tune as a trial result, and Tune acts on some keys: on
    ``done`` it stops the trial actor at once, although ``trainer.fit()`` is still running in it.
    The Ray Train controller is an actor owned by the trial actor, so it dies too, before it has
    shut the worker group down, and its placement group stays reserved (a group created by an
    actor lives until the job ends; Ray Train's cleaner cannot tell the controller died without
    the dashboard). Under CPU load the stop wins that race often enough to hang a sweep.
    """
    from ray.tune.result import DONE, RESULT_DUPLICATE, SHOULD_CHECKPOINT

    reserved = (DONE, SHOULD_CHECKPOINT, RESULT_DUPLICATE)
    return {(f"trial_{key}" if key in reserved else key): value for key, value in metrics.items()}


def permanent_error(failures: dict[int, BaseException]) -> PermanentTrialError | None:
    """The error of a failed attempt that a retry would only repeat, or None.

    A worker that died (killed, out of memory, lost node) makes its peers fail in collectives,
    possibly inside set-up; the attempt is then worth retrying even if a peer reported a set-up
    error. Otherwise a :class:`PermanentTrialError` on any rank fails the trial.
    """
    from ray.exceptions import RayActorError

    if any(isinstance(exc, RayActorError) for exc in failures.values()):
        return None
    return next((exc for exc in failures.values() if isinstance(exc, PermanentTrialError)), None)


def _trial_fn(config: dict[str, Any]) -> None:
    """One Tune trial: a TorchTrainer for the trial's workers, attempted up to
    ``1 + resources.max_retries`` times (a new worker group each time; ``run_trial`` resumes from
    the trial's checkpoint)."""
    import ray.train
    from ray.train import WorkerGroupError
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from bench.results import remote
    from bench.trial import record_failure

    spec = TrialSpec.model_validate(config["trial"])
    res = spec.resources
    mirror = remote.mirror_for(config["storage"])
    ray_fs = mirror.fs if mirror is not None else None
    for attempt in range(res.max_retries + 1):
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=res.num_workers,
                use_gpu=res.use_gpu,
                resources_per_worker=worker_resources(res) or None,
            ),
            run_config=ray.train.RunConfig(
                name=spec.trial_id,
                storage_path=config["ray_storage"],
                storage_filesystem=ray_fs,
                callbacks=[TuneReportCallback()],
                # Retries are ours (below): Ray Train's would also restart a permanent error.
                failure_config=ray.train.FailureConfig(max_failures=0),
            ),
        )
        try:
            trainer.fit()  # returns after the controller released the worker group's resources
            return
        except WorkerGroupError as exc:
            permanent = permanent_error(exc.worker_failures)
            if permanent is not None:
                # Rank 0 writes a trial's rows, but Ray Train stops the whole worker group at
                # the first rank's failure: when another rank failed first, the row is ours.
                record_failure(spec, config["storage"], permanent.reason)
                raise PermanentTrialError(f"not retried: {permanent}", permanent.reason) from None
            if attempt == res.max_retries:
                raise


def concurrent_trials(res, cluster: dict[str, float] | None = None) -> int:
    """Trials run at once: the config's cap, else as many worker groups as the cluster holds.

    Without a cap Tune starts a coordinator actor (and its queue actor) for every pending trial
    at once, since each asks only ``TRIAL_ACTOR_CPU``; on a small machine a 28-trial sweep then
    spends its cores starting ~90 idle processes. The worker groups are the real limit, so the
    default is the number that fit: ``⌊CPUs / (workers · cpus_per_worker)⌋`` (GPUs / workers
    with ``use_gpu``), and no more than the memory reservations allow, at least 1.
    """
    if res.max_concurrent_trials is not None:
        return res.max_concurrent_trials
    import ray

    total = cluster if cluster is not None else ray.cluster_resources()
    if res.use_gpu:
        fit = total.get("GPU", 0) // res.num_workers
    else:
        # The trial coordinators' small CPU share is taken off first.
        fit = (total.get("CPU", 0) + 1e-9) // (res.num_workers * res.cpus_per_worker + TRIAL_ACTOR_CPU)
    if res.memory_per_worker_gib is not None and "memory" in total:
        fit = min(fit, total["memory"] // (res.num_workers * res.memory_per_worker_gib * GIB))
    return max(1, int(fit))


def launch_order(trials: list[TrialSpec]) -> list[TrialSpec]:
    """``trials`` in the order Tune starts them: round-robin over the sweep's entries (workload ×
    optimizer entry, in order of first appearance), each entry's own trials in sweep order.

    Why not the sweep's nesting order: there, an entry's trials come back to back, and an entry
    that reserves most of a node's memory (``optimizers.<i>.memory_per_worker_gib``, e.g. the
    measured-α probes' HVPs) would then pair with itself. A Tune trial counts as running as soon
    as its coordinator (``TRIAL_ACTOR_CPU``) starts, while its worker group waits for the memory
    inside ``trainer.fit()``: the second reservation holds one of the :func:`concurrent_trials`
    slots and its core idles for the whole of the first trial (10 of them back to back on a
    2-core machine: hours). Interleaved, the other entries' trials fill that slot instead. It
    also spreads each entry over the whole sweep, so every entry's step times share the machine
    with the same mix of neighbours, and a sweep stopped half way has results for every entry.
    What a trial computes does not depend on its order (ids, seeds and indices are unchanged).
    """
    groups: dict[tuple[str, str], list[TrialSpec]] = {}
    for spec in trials:
        groups.setdefault((spec.workload.model_dump_json(), spec.optimizer_entry), []).append(spec)
    rounds = itertools.zip_longest(*groups.values())  # the i-th trial of every entry, None past an entry's end
    return [spec for round_ in rounds for spec in round_ if spec is not None]


def run_trials(
    cfg: SweepConfig,
    trials: list[TrialSpec],
    storage: str | Path,
    on_event: Callable[[TrialEvent], None] | None = None,
) -> dict[str, str]:
    """Run ``trials`` on the connected Ray cluster; returns trial_id → error text for trials that
    Ray reports as errored (their workers may not have written a result row), and for every
    unfinished trial when the stall guard stopped the sweep. The guard's messages reach
    ``on_event`` as ``notice`` events (stderr without a sink).

    ``storage`` is a path (made absolute: workers run elsewhere) or an object-store URI, which
    the workers mirror themselves (:mod:`bench.results.remote`); Ray's own bookkeeping then goes
    to the same store, since the nodes share no filesystem.
    """
    from ray import tune

    from bench.results import remote
    from launchers import tune_hooks

    mirror = remote.mirror_for(storage)
    if mirror is not None:
        storage_arg, ray_fs = str(storage), mirror.fs
        ray_storage = f"{mirror.root}/{cfg.name}/_ray"
    else:
        storage_arg, ray_fs = str(Path(storage).resolve()), None
        ray_storage = str(Path(storage_arg) / cfg.name / "_ray")

    param_space = {
        "trial": tune.grid_search([t.model_dump(mode="json") for t in launch_order(trials)]),
        "storage": storage_arg,
        "ray_storage": ray_storage,
    }
    tuner = tune.Tuner(
        tune.with_resources(_trial_fn, {"CPU": TRIAL_ACTOR_CPU}),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent_trials(cfg.resources)),
        run_config=tune.RunConfig(
            # A fresh Tune experiment per invocation: resuming is ours (Parquet + checkpoints),
            # not Tune's, so an earlier invocation's experiment state is never restored.
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=ray_storage,
            storage_filesystem=ray_fs,
            verbose=0,
            callbacks=[tune_hooks.SweepEvents()],
            stop=tune_hooks.GuardStop(),
        ),
    )
    live = tune_hooks.LIVE = tune_hooks.Live.start(on_event, cfg.resources.stall_timeout_s)
    try:
        grid = tuner.fit()
    finally:
        tune_hooks.LIVE = None
    errors: dict[str, str] = {}
    for result in grid:
        if result.error is not None:
            tid = result.config["trial"]["trial_id"] if result.config else "?"
            errors[tid] = short_error(result.error)
    if live.guard.failure is not None:
        for spec in trials:
            if spec.trial_id not in live.finished and spec.trial_id not in errors:
                errors[spec.trial_id] = f"not finished: the sweep was stopped ({live.guard.failure})"
    return errors


#: How Ray's memory monitor words a kill (Ray 2.4x-2.6x), and the node's usage it reports.
_OOM_KILL = re.compile(r"killed due to the node running low on memory|OOM kill reason")
_OOM_USAGE = re.compile(r"was ([\d.]+\s*GB) used / ([\d.]+\s*GB) limit")


def short_error(exc: BaseException | str) -> str:
    """The innermost message of a Ray error chain (or of its text), on one line; a kill by Ray's
    memory monitor is named as such, with what to change (Ray's own advice, the chain's last
    line, suggests more CPUs per task, which would not help a sweep)."""
    if _OOM_KILL.search(str(exc)):
        usage = _OOM_USAGE.search(str(exc))
        at = f" ({usage.group(1)} of {usage.group(2)} in use)" if usage else ""
        return (f"Ray's memory monitor killed a worker of this trial: the node ran out of memory{at}. The "
                "trials running at once need more memory than the node has; set resources."
                "memory_per_worker_gib to a worker's peak (or lower max_concurrent_trials) and rerun: the "
                "sweep resumes")
    text = str(exc).strip().splitlines()
    tail = [line for line in text if line.strip()][-1:] or [type(exc).__name__]
    return tail[0][:500]
