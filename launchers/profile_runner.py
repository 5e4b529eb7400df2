"""``specbench profile CONFIG``: the one benchmark entry point, on a Ray cluster.

- ``profiles`` and ``optimizer_step``: one measurement job per alive node, pinned there with
  ``NodeAffinitySchedulingStrategy`` (``soft=False``: a job that ran elsewhere would label
  another machine's timings with this node). Each job asks for ``resources.num_cpus`` CPUs
  (capped at what the node has) and, on nodes that have GPUs, ``resources.num_gpus`` of them,
  and calls :func:`bench.profile.runner.run_profile_job`, which writes
  ``<storage>/<name>/trials/<job_id>/profile.parquet`` itself (job id
  ``<name>-<hostname>-<node id prefix>``).
- ``collectives`` and ``spectral_step``: for every P, one Ray Train worker group of P workers
  (a gloo or nccl process group) runs the sections that ask for that P; rank 0 writes
  ``<storage>/<name>/trials/<name>-<section>-p<P>/profile.parquet``.
- ``probe_overhead``: one Ray task.

Nothing depends on Ray's result plumbing beyond the paths the jobs return. The storage must
therefore be visible to every node (a shared filesystem) for the driver to read the results
back; on one machine it always is.

The config is validated before Ray starts; problems raise :class:`ProfileConfigError`
(a ``bench.problems.ConfigProblems``, which the CLI turns into one list and exit status 2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.profile.config import ProfileConfig, load_profile_config


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> ProfileConfig:
    """Validate a profile YAML file (plus ``storage``/``name`` overrides) or raise
    :class:`ProfileConfigError` with every problem."""
    return load_profile_config(path, overrides)


def _profile_job(config: dict[str, Any], job_id: str, node_id: str) -> dict[str, Any]:
    """Body of one per-node Ray task: measure, write, return where and how much."""
    import warnings

    from bench.profile.config import ProfileConfig
    from bench.profile.runner import run_profile_job
    from bench.results.writer import trial_dir

    warnings.filterwarnings("ignore")
    cfg = ProfileConfig.model_validate(config)
    rows = run_profile_job(cfg, job_id=job_id, node_id=node_id)
    kernels = [r for r in rows if r.get("op") == "kernel"]
    return {
        "path": str((trial_dir(cfg.storage, cfg.name, job_id) / "profile.parquet").resolve()),
        "kernels": len(kernels),
        "ok": sum(r.get("status") == "ok" for r in kernels),
        "steps": sum(r.get("op") == "optimizer_step" for r in rows),
        "node_id": node_id,
    }


def _probe_overhead_job(config: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Body of the probe-overhead Ray task: measure, write ``profile.parquet``, return its path."""
    import warnings

    import pyarrow.parquet as pq
    import torch

    from bench.profile.config import ProfileConfig
    from bench.profile.probe_overhead import measure_probe_overhead
    from bench.results.writer import trial_dir, write_rows

    warnings.filterwarnings("ignore")
    cfg = ProfileConfig.model_validate(config)
    po = cfg.probe_overhead
    torch.set_num_threads(po.threads)
    path = trial_dir(cfg.storage, cfg.name, job_id) / "profile.parquet"
    # A re-run of an interrupted job keeps the points it already measured (probes are long).
    done = pq.read_table(path).to_pylist() if path.is_file() else []
    rows: list[dict[str, Any]] = []

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        rows = measure_probe_overhead(
            widths=po.widths, probe_batches=po.probe_batches, top_ks=po.top_ks,
            default=(po.default_width, po.default_probe_batch, po.default_top_k), modes=po.modes,
            hvp_methods=po.hvp_methods, repeats=po.repeats, n_layer=po.n_layer,
            n_head=po.n_head, seq_len=po.seq_len, train_batch=po.train_batch, interval=po.interval,
            warmup=po.warmup, steps=po.steps, max_bytes=po.max_bytes, seed=cfg.seed,
            sweep_name=cfg.name, job_id=job_id, log=log, done=done,
            on_row=lambda so_far: write_rows("profile", so_far, path),
        )
    finally:
        if rows:
            write_rows("profile", rows, path)
    return {"path": str(path.resolve()), "rows": len(rows)}


#: The sections that need a process group of P ranks, in the order a group runs them.
GROUP_SECTIONS: tuple[str, ...] = ("collectives", "spectral_step")


def group_job_id(name: str, section: str, ranks: int) -> str:
    """``<name>-<section>-p<P>``: where one section's rows at P ranks are written."""
    return f"{name}-{section.replace('_', '-')}-p{ranks}"


def _group_worker(config: dict[str, Any]) -> None:
    """Body of every Ray Train worker of a distributed measurement (one process group of P): each
    section of ``config["sections"]`` in turn; rank 0 writes each section's rows to its own job."""
    import socket
    import warnings

    import ray.train
    import torch

    from bench.distributed import configure_cpu_threads
    from bench.profile.config import ProfileConfig
    from bench.profile.runner import device_name
    from bench.results.writer import trial_dir, write_rows

    warnings.filterwarnings("ignore")
    cfg = ProfileConfig.model_validate(config["profile"])
    ctx = ray.train.get_context()
    for name in config["sections"]:
        section = getattr(cfg, name)
        if config["use_gpu"]:
            device = torch.device("cuda", ctx.get_local_rank())
        else:
            configure_cpu_threads(section.threads_per_rank)
            device = torch.device("cpu")
        job_id = group_job_id(cfg.name, name, ctx.get_world_size())
        common = {"seed": cfg.seed, "device": device, "sweep_name": cfg.name, "job_id": job_id}
        if name == "collectives":
            from bench.profile.collectives import measure_collectives

            rows = measure_collectives(section, **common)
        else:
            from bench.profile.spectral_step import measure_spectral_step

            rows = measure_spectral_step(blocks=section.blocks, dim=section.dim, method=section.method,
                                         warmup=section.warmup, repeats=section.repeats, **common)
        if ctx.get_world_rank() == 0:
            where = {"device_name": device_name(device), "hostname": socket.gethostname(),
                     "torch_version": torch.__version__}
            write_rows("profile", [{**where, **r} for r in rows], trial_dir(cfg.storage, cfg.name, job_id) / "profile.parquet")


def run_group(cfg: ProfileConfig, ranks: int, use_gpu: bool, log: Callable[[str], None] | None) -> list[Path]:
    """One Ray Train worker group of ``ranks`` workers measuring every section of
    :data:`GROUP_SECTIONS` that asks for P = ``ranks`` (one group launch per P); returns the
    Parquet files it wrote (``<storage>/<name>/trials/<name>-<section>-p<P>/profile.parquet``)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from bench.results.writer import trial_dir

    sections = [s for s in GROUP_SECTIONS if getattr(cfg, s) is not None and ranks in getattr(cfg, s).ranks]
    sweep_dir = (Path(cfg.storage) / cfg.name).resolve()
    trainer = TorchTrainer(
        _group_worker,
        train_loop_config={"profile": cfg.model_dump(mode="json"), "sections": sections, "use_gpu": use_gpu},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=ranks, use_gpu=use_gpu,
            resources_per_worker=None if use_gpu else {"CPU": max(getattr(cfg, s).cpus_per_rank for s in sections)},
        ),
        run_config=ray.train.RunConfig(name=f"{cfg.name}-p{ranks}", storage_path=str(sweep_dir / "_ray")),
    )
    trainer.fit()
    paths = [trial_dir(cfg.storage, cfg.name, group_job_id(cfg.name, s, ranks)) / "profile.parquet" for s in sections]
    if log:
        log(f"  {', '.join(s.replace('_', ' ') for s in sections)} at P={ranks} → {', '.join(map(str, paths))}")
    return paths


def alive_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()`` entries of the alive nodes."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def node_job_options(cfg: ProfileConfig, node: dict[str, Any]) -> dict[str, Any]:
    """Ray task options pinning one job to ``node`` with the configured resources."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    res = node.get("Resources", {})
    cpus = min(cfg.resources.num_cpus, res.get("CPU", 0.0)) or cfg.resources.num_cpus
    gpus = min(cfg.resources.num_gpus, res.get("GPU", 0.0)) if cfg.device != "cpu" else 0.0
    return {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False),
        # A measurement that dies is reported, not retried: a retry would time a different state.
        "max_retries": 0,
    }


def run_profile(
    config: ProfileConfig | str | os.PathLike[str],
    address: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    verbose: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Run the profile on every alive Ray node; returns the written Parquet paths.

    ``config`` is a validated config or a YAML path (validated here first, before Ray starts;
    ``storage`` and ``name`` override the file's). Joins ``address``, reuses a Ray this process
    already initialised (it is then left running), or starts an embedded one
    (``launchers.ray_runner.start_ray``) and shuts it down at the end.
    """
    overrides = {"storage": storage, "name": name}
    if isinstance(config, ProfileConfig):
        cfg = config.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    else:
        cfg = load_config(config, overrides)
    # Jobs write the Parquet themselves, from their own working directory: Ray Train moves a
    # worker's cwd into its session artifacts, so a relative storage must be made absolute here.
    cfg = cfg.model_copy(update={"storage": str(Path(cfg.storage).resolve())})

    import ray

    from launchers.ray_runner import start_ray

    started = not ray.is_initialized()
    if started:
        start_ray(address, verbose=verbose)
    paths: list[Path] = []
    try:
        if cfg.profiles or cfg.optimizer_step is not None or cfg.data is not None or cfg.zero is not None:
            paths += _run_node_jobs(cfg, log)
        if cfg.probe_overhead is not None:
            job_id = f"{cfg.name}-probe-overhead"
            opts = {"num_cpus": min(cfg.probe_overhead.threads, ray.cluster_resources().get("CPU", 1.0)), "max_retries": 0}
            if log:
                log(f"profile '{cfg.name}': probe overhead job {job_id}")
            result = ray.get(ray.remote(_probe_overhead_job).options(**opts).remote(cfg.model_dump(mode="json"), job_id))
            paths.append(Path(result["path"]))
            if log:
                log(f"  {result['rows']} probe-overhead points → {result['path']}")
        use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        group_ranks = sorted({p for s in GROUP_SECTIONS if getattr(cfg, s) is not None for p in getattr(cfg, s).ranks})
        for ranks in group_ranks:
            paths += run_group(cfg, ranks, use_gpu, log)
    finally:
        if started:
            ray.shutdown()
    return paths


def _run_node_jobs(cfg: ProfileConfig, log: Callable[[str], None] | None) -> list[Path]:
    """One measurement job (kernels, optimizer steps) per alive node; returns the Parquet files
    they wrote."""
    import ray

    job = ray.remote(_profile_job)
    refs = []
    for node in alive_nodes():
        node_id = node["NodeID"]
        host = node.get("NodeManagerHostname") or node.get("NodeManagerAddress") or "node"
        job_id = _job_id(cfg.name, host, node_id)
        refs.append(job.options(**node_job_options(cfg, node)).remote(cfg.model_dump(mode="json"), job_id, node_id))
        if log:
            log(f"profile '{cfg.name}': job {job_id} on node {node_id[:8]} ({host})")
    results = ray.get(refs)
    if log:
        for r in results:
            log(f"  {r['ok']}/{r['kernels']} kernels ok, {r['steps']} optimizer steps → {r['path']}")
    return [Path(r["path"]) for r in results]


def _job_id(name: str, host: str, node_id: str) -> str:
    from bench.profile.runner import default_job_id

    return default_job_id(name, node_id, host)


def cli_profile(args) -> int:
    """Body of ``specbench profile CONFIG [--address A] [--storage S] [--name N] [--verbose]``.

    Validates first (a :class:`ProfileConfigError`, one of the CLI's ``ConfigProblems``, propagates:
    ``launchers.cli.main`` prints it and exits 2), then runs and prints the written paths.
    """
    import sys

    cfg = load_config(args.config, {"storage": getattr(args, "storage", None), "name": getattr(args, "name", None)})
    target = Path(cfg.storage) / cfg.name
    target.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    paths = run_profile(cfg, address=getattr(args, "address", None), verbose=getattr(args, "verbose", False), log=log)
    for p in paths:
        print(p)
    if cfg.optimizer_step is not None or cfg.spectral_step is not None or cfg.probe_overhead is not None:
        from analysis.scaling_report import build_scaling_report

        print(build_scaling_report(target).text)
    print(f"fit device cost constants with: python -m launchers.cost fit {target} --name <device>", file=sys.stderr)
    return 0
