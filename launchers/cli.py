"""The ``specbench`` command line.

Every user mistake (bad config, unreadable results, unwritable storage) ends in one readable
message on stderr and exit status 2 before anything starts; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class UsageError(Exception):
    """A user mistake that is not a config-file problem (paths, flags)."""


def _fail(message: str) -> int:
    print(f"specbench: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _writable_dir(path: Path) -> None:
    """Create ``path`` if needed and prove it is writable, or raise UsageError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".specbench-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"storage path {path} is not writable ({exc.strerror or exc})") from None


#: Directories a driver never needs from an object store (checkpoints, pid files, Ray's own).
_DRIVER_SKIP = ("checkpoint", "workers", "_ray")


def _store_problem(storage: str, what: str, exc: Exception) -> UsageError:
    reason = " ".join(str(exc).split())[:300]  # pyarrow's messages span lines
    return UsageError(f"storage {storage} is not {what} ({reason})")


def _storage_root(storage: str, write: bool = True) -> Path:
    """Local root of a storage: the path itself, or for an object-store URI the staging tree
    (bench/results/remote.py), after proving the store is reachable (and writable)."""
    from bench.results import remote

    if not remote.is_uri(storage):
        return Path(storage)
    try:
        mirror = remote.activate(storage)
        if write:
            mirror.check_writable()
        else:
            mirror.exists("")
    except (OSError, ValueError) as exc:  # pyarrow: ArrowIOError (network, auth), ArrowInvalid (URI)
        raise _store_problem(storage, "writable" if write else "readable", exc) from None
    return mirror.local


def _pull_results(storage: str, rel: str) -> None:
    """Bring ``<storage>/<rel>``'s result files into the staging tree (no-op for a path)."""
    from bench.results import remote

    if remote.is_uri(storage):
        try:
            remote.activate(storage).pull_tree(rel, skip_dirs=_DRIVER_SKIP)
        except (OSError, ValueError) as exc:
            raise _store_problem(storage, "readable", exc) from None


def _read_from_store(storage: str, rel: str) -> Path:
    """Download ``<storage>/<rel>``'s result files for a reader and return their local path.
    The mirror is then deactivated: what a reader derives (report, layer_fits, consolidated
    files) stays on this machine."""
    from bench.results import remote

    local = _storage_root(storage, write=False) / rel
    _pull_results(storage, rel)
    remote.deactivate(storage)
    return local


def _results_path(arg: str) -> Path:
    """A RESULTS argument: a local path, or an object-store URI of a sweep (or of a directory of
    sweeps), downloaded to the staging tree first."""
    from bench.results import remote

    if not remote.is_uri(arg):
        return Path(arg)
    parts = arg.split("?", 1)
    root, _, rel = parts[0].rstrip("/").rpartition("/")
    return _read_from_store(root + ("?" + parts[1] if len(parts) > 1 else ""), rel)


def _project_env() -> None:
    """Quiet, reproducible defaults for every process this command starts."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # DeepSpeed JIT-compiles its CPU ops once; keep them in a per-user cache unless told otherwise.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "specbench" / "torch_extensions"))


# ---------------------------------------------------------------------------------------- sweep
def cmd_sweep(args: argparse.Namespace) -> int:
    from launchers import sweep_state
    from launchers.sweep import expand, load_config, sweep_fingerprint

    cfg = load_config(args.config, {"storage": args.storage, "name": args.name})
    if not args.address:
        _refuse_second_local_ray()  # before anything is created
    storage = _storage_root(cfg.storage)
    _pull_results(cfg.storage, cfg.name)  # an object store's results so far: resume needs them
    sweep_dir = storage / cfg.name
    fingerprint = sweep_fingerprint(cfg)
    try:
        moved = sweep_state.check_or_replace(sweep_dir, fingerprint, args.force_new)
    except sweep_state.SweepMismatch as exc:
        raise UsageError(str(exc)) from None
    if moved is not None:
        from bench.results import remote

        if remote.is_uri(cfg.storage):
            remote.activate(cfg.storage).move(cfg.name, moved.name)  # the mirror _storage_root activated
        print(f"previous results moved to {moved}", file=sys.stderr)
    _writable_dir(sweep_dir)
    trials = expand(cfg)
    before = sweep_state.states(sweep_dir, [t.trial_id for t in trials])
    pending = [t for t in trials if before[t.trial_id] not in sweep_state.FINISHED]
    if len(pending) < len(trials):
        print(f"resuming sweep '{cfg.name}': {sweep_state.summary_line(before)}; "
              f"running {len(pending)} of {len(trials)} trials", file=sys.stderr)
    if not pending:
        return _print_report(sweep_dir)

    from launchers import ray_runner

    if not args.address:
        problems = ray_runner.resource_problems(cfg.resources, *ray_runner.local_cluster_shape())
        if problems:
            from launchers.sweep import ConfigError

            raise ConfigError(args.config, problems)
    try:
        ray_runner.start_ray(args.address, verbose=args.verbose)
    except ConnectionError as exc:
        raise UsageError(
            f"cannot join the Ray cluster at {args.address} ({exc}). A cluster with token authentication "
            "(Ray's default) needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
            "or ~/.ray/auth_token"
        ) from None
    try:
        if args.address:
            problems = ray_runner.resource_problems(cfg.resources, *ray_runner.cluster_shape())
            if problems:
                from launchers.sweep import ConfigError

                raise ConfigError(args.config, problems)
        _write_sweep_record(sweep_dir, cfg, trials, fingerprint)
        print(f"sweep '{cfg.name}': {len(pending)} trials → {sweep_dir.resolve()}", file=sys.stderr)
        from launchers.progress import SweepProgress

        with SweepProgress(len(pending)) as progress:
            errors = ray_runner.run_trials(cfg, pending, cfg.storage, on_event=progress.handle)
    finally:
        import ray

        ray.shutdown()

    from bench.trial import record_failure

    _pull_results(cfg.storage, cfg.name)  # what the workers uploaded, possibly from other nodes
    by_id = {t.trial_id: t for t in trials}
    for tid, err in errors.items():
        if tid in by_id:
            record_failure(by_id[tid], cfg.storage, err)
    code = _print_report(sweep_dir)
    if errors:
        print(f"{len(errors)} trial(s) failed: {', '.join(sorted(errors))}", file=sys.stderr)
        return 1
    return code


def _write_sweep_record(sweep_dir: Path, cfg, trials, fingerprint: str) -> None:
    from bench.results.writer import write_atomic_text

    record = {
        "name": cfg.name,
        "fingerprint": fingerprint,
        "config": cfg.model_dump(mode="json"),
        "trials": [{"trial_id": t.trial_id, "optimizer_label": t.optimizer_label, "seed_index": t.seed_index,
                    "model": t.workload.model, "dataset": t.workload.dataset} for t in trials],
    }
    write_atomic_text(json.dumps(record, indent=2, sort_keys=True), sweep_dir / "sweep.json")


def _refuse_second_local_ray() -> None:
    """An embedded Ray must be the only Ray on the machine (see ``ray_runner.other_local_ray``)."""
    from launchers import ray_runner

    others = ray_runner.other_local_ray()
    if others:
        raise UsageError(
            f"another Ray instance is running on this machine (GCS at {', '.join(others)}); a second, "
            "embedded one would leave Ray Train unable to release finished trials' resources. Join it "
            f"with --address {others[0]}, or stop it (ray stop) and run again"
        )


def _print_report(results: Path, out: Path | None = None, lm_question: bool = False) -> int:
    from analysis import ResultsNotFound, ResultsReadError, SchemaVersionError, build_report
    from analysis.consolidate import write_layer_fits

    try:
        write_layer_fits(results)  # the layer_fits table of every probed trial, from its curvature rows
        report = build_report(results, out)
        if lm_question:
            from analysis.lm_question import build_lm_question

            lm = build_lm_question(results, report.out_dir)
    except (ResultsNotFound, ResultsReadError, SchemaVersionError) as exc:
        return _fail(str(exc))
    print(report.text)
    print(f"\nreport: {report.report_path}  ({len(report.plot_paths)} plots in {report.out_dir / 'plots'})")
    if lm_question:
        print("\n".join(["", "The language-model question:", *(f"  {line}" for line in lm.conclusions)]))
        print(f"lm question: {lm.markdown_path} and {lm.html_path.name}")
    return 0


# ---------------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from launchers.local import run_local
    from launchers.sweep import expand, load_config

    cfg = load_config(args.config, {"storage": args.storage, "name": args.name})
    trials = expand(cfg)
    if not 0 <= args.trial < len(trials):
        raise UsageError(f"--trial {args.trial} is out of range: the sweep has trials 0..{len(trials) - 1}")
    spec = trials[args.trial]
    if args.workers is not None:
        if args.workers < 1:
            raise UsageError("--workers must be at least 1")
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"num_workers": args.workers})})
    storage = _storage_root(cfg.storage)
    _writable_dir(storage / cfg.name)
    print(f"trial {spec.trial_index}: {spec.trial_id} ({spec.optimizer_label}, {spec.workload.model} on "
          f"{spec.workload.dataset}, {spec.resources.num_workers} worker(s), no Ray)", file=sys.stderr)
    ok = run_local(spec, cfg.storage)
    if not ok:
        print(f"trial {spec.trial_id} failed (see the traceback above)", file=sys.stderr)
        return 1
    from analysis.consolidate import write_layer_fits

    write_layer_fits(storage / cfg.name / "trials" / spec.trial_id)
    print(f"results in {(storage / cfg.name / 'trials' / spec.trial_id).resolve()}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------- probe
def cmd_probe(args: argparse.Namespace) -> int:
    from launchers.sweep import expand, load_config

    cfg = load_config(args.config, {"storage": args.storage, "name": args.name})
    trials = expand(cfg)
    if not 0 <= args.trial < len(trials):
        raise UsageError(f"--trial {args.trial} is out of range: the sweep has trials 0..{len(trials) - 1}")
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None and not checkpoint.exists():
        raise UsageError(f"checkpoint {checkpoint} does not exist")
    storage = _storage_root(cfg.storage)
    _writable_dir(storage / cfg.name)
    from analysis.consolidate import write_layer_fits
    from bench.distributed import configure_cpu_threads
    from bench.probes.standalone import probe_checkpoint

    configure_cpu_threads(max(1, os.cpu_count() or 1))
    try:
        out = probe_checkpoint(trials[args.trial], storage, checkpoint)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    write_layer_fits(storage / cfg.name / "trials" / trials[args.trial].trial_id)
    print(f"probed {out['layers']} layers at step {out['step']} → {out['files']['curvature']}")
    for row in out["unsupported"]:
        print(f"  not (fully) probed: {row.get('layer', row.get('name'))}: {row.get('reason')}")
    return 0


# --------------------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    path = _results_path(args.results)
    if not path.exists():
        raise UsageError(f"results path {path} does not exist")
    return _print_report(path, Path(args.out) if args.out else None, lm_question=args.lm_question)


# --------------------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    from analysis import ResultsNotFound, ResultsReadError, SchemaVersionError
    from analysis.claims import ClaimsError, exit_status, format_results, verify, verify_published

    if not args.results and not args.published:
        raise UsageError("give a RESULTS directory, or --published DIR to check the paper's own result files")
    results_path = _results_path(args.results) if args.results else None
    if results_path is not None and not results_path.exists():
        raise UsageError(f"results path {args.results} does not exist")
    try:
        results = (verify_published(args.published, args.claims) if args.published
                   else verify(results_path, args.claims))
    except (ResultsNotFound, ResultsReadError, SchemaVersionError, ClaimsError, FileNotFoundError) as exc:
        return _fail(str(exc))
    print(format_results(results, allow_missing=args.allow_missing))
    return exit_status(results, allow_missing=args.allow_missing)


# ------------------------------------------------------------------------------ profile / cost
def cmd_profile(args: argparse.Namespace) -> int:
    from launchers.profile_runner import cli_profile, load_config

    load_config(args.config, {"storage": args.storage, "name": args.name})  # bad input first: exit 2
    if not args.address:
        _refuse_second_local_ray()
    return int(cli_profile(args) or 0)


def cmd_cost(args: argparse.Namespace) -> int:
    from launchers.cost import cmd_cost as run

    return int(run(args) or 0)


# -------------------------------------------------------------------------------------- cluster
def cmd_cluster(args: argparse.Namespace) -> int:
    from launchers.cluster import render_rayjob, render_sbatch
    from launchers.ray_runner import resource_problems
    from launchers.sweep import ConfigError, load_config

    cfg = load_config(args.config)  # the whole config is validated before anything is generated
    name = args.name or cfg.name
    try:
        if args.target == "slurm":
            nodes = [{"CPU": float(args.cpus_per_node), "GPU": float(args.gpus_per_node)}] * args.nodes
            total = {"CPU": args.nodes * float(args.cpus_per_node), "GPU": args.nodes * float(args.gpus_per_node)}
            problems = resource_problems(cfg.resources, total, nodes)
            if problems:
                raise ConfigError(args.config, problems)
            text = render_sbatch(
                args.config, nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
                time=args.time, partition=args.partition, account=args.account,
                storage=args.storage or cfg.storage, name=name, venv=args.venv, port=args.port,
                extra_sbatch=args.sbatch_option or [],
            )
        else:
            text = render_rayjob(
                args.config, image=args.image, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                cpus_per_worker=args.cpus_per_worker, memory=args.memory, storage=args.storage, name=name,
                namespace=args.namespace, volume_claim=args.volume_claim,
            )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


# --------------------------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    from bench.results import remote
    from launchers import sweep_state

    if args.storage and remote.is_uri(args.storage):
        sweep_dir = _read_from_store(args.storage, args.name)
    elif Path(args.name).is_dir() and not args.storage:
        sweep_dir = Path(args.name)
    else:
        sweep_dir = Path(args.storage or "results") / args.name
    record = sweep_state.read_record(sweep_dir)
    if record is None:
        raise UsageError(f"no sweep at {sweep_dir} (expected {sweep_dir / 'sweep.json'})")
    trials = record["trials"]
    st = sweep_state.states(sweep_dir, [t["trial_id"] for t in trials])
    print(f"sweep '{record['name']}' at {sweep_dir.resolve()}: {sweep_state.summary_line(st)}")
    for t in trials:
        print(f"  {st[t['trial_id']]:<12} {t['trial_id']:<28} {t['optimizer_label']}  {t['model']} / {t['dataset']}"
              f"  seed {t['seed_index']}")
    return 0


# ---------------------------------------------------------------------------------- consolidate
def cmd_consolidate(args: argparse.Namespace) -> int:
    from analysis import ResultsNotFound, ResultsReadError, SchemaVersionError
    from analysis.consolidate import consolidate

    path = _results_path(args.results)
    if not path.exists():
        raise UsageError(f"results path {path} does not exist")
    try:
        written = consolidate(path, Path(args.out) if args.out else None)
    except (ResultsNotFound, ResultsReadError, SchemaVersionError) as exc:
        return _fail(str(exc))
    for table, (file, rows) in written.items():
        print(f"{table:<12} {rows:>8} rows → {file}")
    return 0


# --------------------------------------------------------------------------------------- config
def cmd_config(args: argparse.Namespace) -> int:
    if args.config:
        from launchers.sweep import expand, load_config

        cfg = load_config(args.config)
        if args.show:
            print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        trials = expand(cfg)
        print(f"config OK: {len(trials)} trials", file=sys.stderr)
        for t in trials:
            print(f"  [{t.trial_index}] {t.trial_id}  {t.optimizer_label}  {t.workload.model} / {t.workload.dataset}"
                  f"  seed {t.seed_index}")
        return 0
    print(_describe_defaults())
    return 0


def _describe_defaults() -> str:
    """Every section's keys with defaults and descriptions, plus every optimizer's settings."""
    import optimizers
    from bench.config import (
        LrSchedule,
        OptimizerEntry,
        ResourcesConfig,
        SweepConfig,
        TrainingConfig,
        WorkloadConfig,
    )

    lines: list[str] = []

    def section(title: str, model) -> None:
        lines.append(f"{title}:")
        for name, field in model.model_fields.items():
            default: Any = field.default if field.default_factory is None else field.default_factory()
            if hasattr(default, "model_dump"):
                default = "{...}"
            shown = "(required)" if field.is_required() else json.dumps(default, default=str)
            lines.append(f"  {name}: {shown}    # {field.description or ''}")
        lines.append("")

    section("(top level)", SweepConfig)
    section("workloads[]", WorkloadConfig)
    section("optimizers[]", OptimizerEntry)
    section("training", TrainingConfig)
    section("training.lr_schedule", LrSchedule)
    section("resources", ResourcesConfig)
    for name in optimizers.available():
        lines.append(f"optimizers[].settings for name: {name}")
        for field, default, desc in optimizers.describe(name):
            lines.append(f"  {field}: {json.dumps(default, default=str)}    # {desc}")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="validate, expand and run a sweep on Ray, then report")
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("--address", help="Ray cluster to join ('auto', 'ray://host:10001'); default: embedded local Ray")
    p.add_argument("--storage", help="results root (overrides the config's storage)")
    p.add_argument("--name", help="sweep name (overrides the config's name)")
    p.add_argument("--verbose", action="store_true", help="show Ray and DeepSpeed logs")
    p.add_argument("--force-new", action="store_true",
                   help="results of a different config exist under this name: move them aside and start afresh")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("train", help="run one trial of a sweep without Ray (debugging)")
    p.add_argument("config")
    p.add_argument("--trial", type=int, default=0, help="trial index (see `specbench config CONFIG`)")
    p.add_argument("--workers", type=int, help="local worker processes (default: resources.num_workers)")
    p.add_argument("--storage")
    p.add_argument("--name")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("probe", help="run the curvature probe on a trial's checkpoint (or initial weights)")
    p.add_argument("config")
    p.add_argument("--trial", type=int, default=0, help="trial index (see `specbench config CONFIG`)")
    p.add_argument("--checkpoint", help="a trial's checkpoint/ directory or one of its step<N> tags; "
                   "omit to probe the initial weights")
    p.add_argument("--storage")
    p.add_argument("--name")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("report", help="tables and plots from a results directory")
    p.add_argument("results", help="a sweep directory (<storage>/<name>) or a directory of sweeps")
    p.add_argument("--out", help="where to write report.md and plots (default: <results>/report)")
    p.add_argument("--lm-question", action="store_true",
                   help="also write lm_question.md/.html: the α map and optimizer comparison of language "
                   "models (results: a root holding configs/lm/ sweeps)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("profile", help="time the spectral kernels on every Ray node (writes the profile table)")
    p.add_argument("config", help="profile YAML (configs/profile/)")
    p.add_argument("--address", help="Ray cluster to join; default: embedded local Ray")
    p.add_argument("--storage", help="results root (overrides the config)")
    p.add_argument("--name", help="job name (overrides the config)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("cost", help="predicted per-step cost of a model's matrix work on N devices, from device "
                       "cost constants")
    from launchers.cost import add_cost_arguments

    add_cost_arguments(p)
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("verify", help="check the paper's claims against a results directory (PASS/FAIL/NO DATA)")
    p.add_argument("results", nargs="?", help="a sweep directory with curvature / layer_fits tables")
    p.add_argument("--claims", help="claims YAML (default: configs/paper/claims.yaml)")
    p.add_argument("--allow-missing", action="store_true", help="exit 0 when claims have NO DATA but none FAIL")
    p.add_argument("--published", metavar="DIR", help="check the paper's published JSON result files instead")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("cluster", help="generate a SLURM sbatch script or a KubeRay RayJob manifest for a sweep")
    csub = p.add_subparsers(dest="target", required=True)
    q = csub.add_parser("slurm", help="sbatch script: Ray head + workers across the allocation, then the sweep")
    q.add_argument("config")
    q.add_argument("--nodes", type=int, required=True)
    q.add_argument("--cpus-per-node", type=int, required=True)
    q.add_argument("--gpus-per-node", type=int, default=0)
    q.add_argument("--time", required=True, help="SLURM time limit, e.g. 24:00:00")
    q.add_argument("--partition", required=True)
    q.add_argument("--account")
    q.add_argument("--storage", help="results root on a shared filesystem (default: the config's)")
    q.add_argument("--name")
    q.add_argument("--venv", default=".venv")
    q.add_argument("--port", type=int, default=6379)
    q.add_argument("--sbatch-option", action="append", help="extra #SBATCH line content (repeatable)")
    q.add_argument("-o", "--output", help="write to this file instead of stdout")
    q.set_defaults(func=cmd_cluster)
    q = csub.add_parser("kuberay", help="KubeRay RayJob + ConfigMap manifest for the sweep")
    q.add_argument("config")
    q.add_argument("--image", required=True, help="container image with specbench installed")
    q.add_argument("--workers", type=int, required=True)
    q.add_argument("--cpus-per-worker", required=True, help="Kubernetes quantity, e.g. 8 or 500m")
    q.add_argument("--memory", required=True, help="per worker, e.g. 64Gi")
    q.add_argument("--gpus-per-worker", type=int, default=0)
    q.add_argument("--storage", required=True, help="results root on the mounted shared volume, e.g. /results")
    q.add_argument("--name")
    q.add_argument("--namespace", default="default")
    q.add_argument("--volume-claim", default="specbench-results")
    q.add_argument("-o", "--output")
    q.set_defaults(func=cmd_cluster)

    p = sub.add_parser("status", help="list the trials of a sweep by state")
    p.add_argument("name", help="sweep name (under --storage) or a sweep directory")
    p.add_argument("--storage", help="results root (default: results)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("consolidate", help="rebuild one Parquet file per table from the per-trial files")
    p.add_argument("results", help="a sweep directory")
    p.add_argument("--out", help="output directory (default: <results>/consolidated)")
    p.set_defaults(func=cmd_consolidate)

    p = sub.add_parser("config", help="validate a sweep file and list its trials, or show every default")
    p.add_argument("config", nargs="?", help="sweep YAML file (omit with --show to list all defaults)")
    p.add_argument("--show", action="store_true", help="print the resolved config with every default")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from launchers.sweep import ConfigError

    _project_env()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted; results written so far are kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `specbench config X | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
