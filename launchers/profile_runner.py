"""``specbench profile CONFIG``: the kernel profile measured on every node of a Ray cluster.

One measurement job per alive node, pinned there with ``NodeAffinitySchedulingStrategy``
(``soft=False``: a job that ran elsewhere would label another machine's timings with this node).
Each job asks for ``resources.num_cpus`` CPUs (capped at what the node has) and, on nodes that
have GPUs, ``resources.num_gpus`` of them, and calls :func:`bench.profile.runner.run_kernel_profile`,
which writes ``<storage>/<name>/trials/<job_id>/profile.parquet`` itself (job id
``<name>-<hostname>-<node id prefix>``); nothing depends on Ray's result plumbing beyond the
paths the jobs return. The storage must therefore be visible to every node (a shared
filesystem) for the driver to read the results back; on one machine it always is.

The config is validated before Ray starts; problems raise :class:`ProfileConfigError`
(a ``launchers.sweep.ConfigError``, which the CLI turns into one list and exit status 2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.profile.config import ProfileConfig, load_profile_config
from bench.profile.config import ProfileConfigError as _BenchConfigError
from launchers.sweep import ConfigError


class ProfileConfigError(ConfigError):
    """A profile config's problems, as the CLI's ConfigError (exit 2)."""

    def render(self) -> str:
        lines = [f"invalid profile config {self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> ProfileConfig:
    """Validate a profile YAML file (plus ``storage``/``name`` overrides) or raise
    :class:`ProfileConfigError` with every problem."""
    try:
        return load_profile_config(path, overrides)
    except _BenchConfigError as exc:
        raise ProfileConfigError(exc.source, exc.problems) from None


def _profile_job(config: dict[str, Any], job_id: str, node_id: str) -> dict[str, Any]:
    """Body of one per-node Ray task: measure, write, return where and how much."""
    import warnings

    from bench.profile.config import ProfileConfig
    from bench.profile.runner import run_kernel_profile
    from bench.results.writer import trial_dir

    warnings.filterwarnings("ignore")
    cfg = ProfileConfig.model_validate(config)
    rows = run_kernel_profile(cfg, job_id=job_id, node_id=node_id)
    kernels = [r for r in rows if r.get("op") == "kernel"]
    return {
        "path": str((trial_dir(cfg.storage, cfg.name, job_id) / "profile.parquet").resolve()),
        "kernels": len(kernels),
        "ok": sum(r.get("status") == "ok" for r in kernels),
        "node_id": node_id,
    }


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

    import ray

    from launchers.ray_runner import start_ray

    started = not ray.is_initialized()
    if started:
        start_ray(address, verbose=verbose)
    try:
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
    finally:
        if started:
            ray.shutdown()
    if log:
        for r in results:
            log(f"  {r['ok']}/{r['kernels']} kernels ok → {r['path']}")
    return [Path(r["path"]) for r in results]


def _job_id(name: str, host: str, node_id: str) -> str:
    from bench.profile.runner import default_job_id

    return default_job_id(name, node_id, host)


def cli_profile(args) -> int:
    """Body of ``specbench profile CONFIG [--address A] [--storage S] [--name N] [--verbose]``.

    Validates first (a :class:`ProfileConfigError`, i.e. the CLI's ``ConfigError``, propagates:
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
    print(f"analyse with: python -m analysis.cost_report {target} --name <device-profile-name>", file=sys.stderr)
    return 0
