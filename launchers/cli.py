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
    """Create ``path`` (the gate found it creatable; this only catches a change since)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"storage path {path} is not writable ({exc.strerror or exc})") from None


#: Directories a driver never needs from an object store (checkpoints, pid files, Ray's own).
_DRIVER_SKIP = ("checkpoint", "workers", "_ray")


def _store_problem(storage: str, what: str, exc: Exception) -> UsageError:
    from launchers.gate import store_problem

    return UsageError(store_problem(storage, what, exc))


def _storage_root(storage: str) -> Path:
    """Local root of a storage: the path itself, or for an object-store URI the staging tree
    (bench/results/remote.py), with its mirror active, after proving the store is reachable
    (writers went through the gate, which proved it writable)."""
    from bench.results import remote

    if not remote.is_uri(storage):
        return Path(storage)
    try:
        mirror = remote.activate(storage)
        mirror.exists("")
    except (OSError, ValueError) as exc:  # pyarrow: ArrowIOError (network, auth), ArrowInvalid (URI)
        raise _store_problem(storage, "readable", exc) from None
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

    local = _storage_root(storage) / rel
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


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("specbench")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "(not installed)"


def _checked(args: argparse.Namespace, *, resources: bool, **kwargs: Any):
    """The validation gate (launchers/gate.py) on a command's CONFIG, overrides and flags;
    ``resources``: check them against this machine when the command would start Ray here."""
    from launchers import gate, ray_runner

    cluster = ray_runner.local_cluster_shape() if resources and not getattr(args, "address", None) else None
    return gate.check_sweep(args.config, args.overrides, {"storage": args.storage, "name": args.name},
                            cluster=cluster, **kwargs)


def _check_joined_cluster(cfg, source: str) -> None:
    """Resources against the Ray cluster this process joined (``--address``)."""
    from launchers import ray_runner
    from launchers.sweep import ConfigError

    problems = ray_runner.sweep_resource_problems(cfg, *ray_runner.cluster_shape())
    if problems:
        raise ConfigError(source, problems)


def _start_ray(address: str | None, verbose: bool = False) -> None:
    from launchers import ray_runner

    try:
        ray_runner.start_ray(address, verbose=verbose)
    except ConnectionError as exc:
        raise UsageError(
            f"cannot join the Ray cluster at {address} ({exc}). A cluster with token authentication "
            "(Ray's default) needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
            "or ~/.ray/auth_token"
        ) from None


# ---------------------------------------------------------------------------------------- sweep
def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.config import STAGE_EDGE
    from bench.results import remote
    from launchers import sweep_state

    # Everything the user can get wrong, in one message, before anything is written or started.
    checked = _checked(args, resources=True, force_new=args.force_new)
    cfg, trials, fingerprints = checked.cfg, checked.trials, checked.fingerprints
    if not args.address:
        _refuse_second_local_ray()
    storage = remote.local_root(cfg.storage)
    remote.activate(cfg.storage)
    _pull_results(cfg.storage, cfg.name)  # an object store's results so far: resume needs them
    sweep_dir = storage / cfg.name
    record = sweep_state.read_record(sweep_dir)
    replacing = not sweep_state.same_sweep(record, fingerprints)  # --force-new (gate-checked)
    if not replacing:
        trials = _with_finalists(cfg, trials, sweep_dir)  # a resumed two-stage sweep's stage 2
    before = (dict.fromkeys((t.trial_id for t in trials), "pending") if replacing
              else sweep_state.states(sweep_dir, [t.trial_id for t in trials]))
    pending = [t for t in trials if before[t.trial_id] not in sweep_state.FINISHED]
    if len(pending) < len(trials):
        print(f"resuming sweep '{cfg.name}': {sweep_state.summary_line(before)}; "
              f"running {len(pending)} of {len(trials)} trials", file=sys.stderr)
    if not pending:
        return _print_report(sweep_dir)
    if not args.address:  # the trials run here: here must be like where the finished ones ran
        finished = [tid for tid, state in before.items() if state in sweep_state.FINISHED]
        _check_same_machine(cfg, sweep_dir, finished, args.allow_other_machine)

    _prepare_data(cfg, pending)
    _start_ray(args.address, verbose=args.verbose)
    try:
        if args.address:
            _check_joined_cluster(cfg, args.config)  # still before anything is written
        moved = sweep_state.check_or_replace(sweep_dir, fingerprints, args.force_new)
        if moved is not None:
            if remote.is_uri(cfg.storage):
                remote.activate(cfg.storage).move(cfg.name, moved.name)
            print(f"previous results moved to {moved}", file=sys.stderr)
        _writable_dir(sweep_dir)
        errors: dict[str, str] = {}
        while pending:  # one pass, or two with the two-stage protocol (stage 2 from stage 1's results)
            _write_sweep_record(sweep_dir, cfg, trials, fingerprints[0])
            print(f"sweep '{cfg.name}': {len(pending)} trials → {sweep_dir.resolve()}", file=sys.stderr)
            errors.update(_run_batch(cfg, pending, trials))
            if errors or not cfg.tuning.finalists:
                break
            _pull_results(cfg.storage, cfg.name)
            more = _with_finalists(cfg, trials, sweep_dir)
            pending = [t for t in more[len(trials):]
                       if sweep_state.trial_state(sweep_dir, t.trial_id) not in sweep_state.FINISHED]
            trials = more
            if pending:
                checks = sum(t.tuning_stage == STAGE_EDGE for t in pending)
                print(f"stage 2: the finalists of stage 1, {len(pending) - checks} trials"
                      + (f", and {checks} edge checks beyond their edges (screening seed)" if checks else ""),
                      file=sys.stderr)
    finally:
        import ray

        ray.shutdown()
    code = _print_report(sweep_dir)
    if errors:
        print(f"{len(errors)} trial(s) failed: {', '.join(sorted(errors))}", file=sys.stderr)
        if cfg.tuning.finalists:
            print("stage 2 starts once every stage-1 trial has finished: run the sweep again to retry them",
                  file=sys.stderr)
        return 1
    return code


def _check_same_machine(cfg, sweep_dir: Path, finished: list[str], allow: bool) -> None:
    """Refuse to resume on a machine unlike the one the finished trials ran on
    (:mod:`launchers.same_machine`), or with ``allow`` say that the sweep now mixes machines."""
    from launchers import same_machine

    found = same_machine.check(sweep_dir, finished, cfg.resources.threads_per_worker) if finished else None
    if found is None or found.alike:
        return
    if allow:
        print(f"warning: {found.describe()}; resuming anyway (--allow-other-machine): the report will "
              "say that its timings compare machines", file=sys.stderr)
        return
    raise UsageError(
        f"{found.describe()}. Resumed here, the sweep's wall-clock, tokens/s and time-to-target would "
        "compare machines, not optimizers. Resume it on a machine like the first, or add "
        "--allow-other-machine to accept the mix (losses and accuracies are unaffected; the report "
        "flags it), or start afresh under another --name"
    )


def _with_finalists(cfg, trials: list, sweep_dir: Path) -> list:
    """``trials`` plus the stage-2 trials of the finalists chosen from stage 1's Parquet results
    and, with ``tuning.edge_check``, the edge checks of those finalists (unchanged without the
    two-stage protocol or while stage 1 is unfinished)."""
    if not cfg.tuning.finalists:
        return trials
    from launchers import stages
    from launchers.sweep import expand

    finalists = stages.choose_finalists(cfg, trials, sweep_dir)
    if finalists is None:
        return trials
    return expand(cfg, finalists, stages.choose_edge_checks(cfg, finalists) if cfg.tuning.edge_check else None)


def _run_batch(cfg, pending: list, trials: list) -> dict[str, str]:
    """Run ``pending`` on the started Ray; a failure row for every trial Ray reports as errored.
    Returns trial_id → error."""
    from bench.trial import record_failure
    from launchers import ray_runner
    from launchers.progress import SweepProgress

    with SweepProgress(len(pending)) as progress:
        errors = ray_runner.run_trials(cfg, pending, cfg.storage, on_event=progress.handle)
    _pull_results(cfg.storage, cfg.name)  # what the workers uploaded, possibly from other nodes
    by_id = {t.trial_id: t for t in trials}
    for tid, err in errors.items():
        if tid in by_id:
            record_failure(by_id[tid], cfg.storage, err)
    return errors


def _prepare_data(cfg, pending: list) -> None:
    """Tokenize every text corpus of the pending trials once, here, before any trial starts: the
    trials then only map the cache (and trials on machines that share no lock never race)."""
    from launchers.data import DataProblem, prepare_workloads, sweep_cache

    cache = sweep_cache(cfg)
    if cache is None:
        return
    try:
        prepare_workloads([t.workload for t in pending], cache, lambda m: print(f"data: {m}", file=sys.stderr))
    except DataProblem as exc:
        raise UsageError(f"{exc} (nothing was started)") from None


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
            f"another Ray instance is running on this machine (GCS at {', '.join(others)}). An embedded Ray "
            "beside it would leave Ray Train unable to release finished trials' resources, so none is "
            f"started. To run the sweep on the running instance, add --address {others[0]}: the trials then "
            "share its CPUs and GPUs with whatever else it runs (on a shared machine it may be someone "
            "else's; it keeps running when the sweep ends). Otherwise run again once it has stopped."
        )


def _print_report(results: Path, out: Path | None = None, lm_question: bool = False) -> int:
    from analysis import ResultsNotFound, ResultsReadError, SchemaVersionError, build_report
    from launchers.derived_tables import write_layer_fits

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
def _trial_of(args: argparse.Namespace, trials: list) -> Any:
    if not 0 <= args.trial < len(trials):
        raise UsageError(f"--trial {args.trial} is out of range: the sweep has trials 0..{len(trials) - 1}")
    return trials[args.trial]


def cmd_train(args: argparse.Namespace) -> int:
    from launchers.derived_tables import write_layer_fits
    from launchers.local import run_local

    flags = ["--workers must be at least 1"] if args.workers is not None and args.workers < 1 else []
    # One trial's files go beside whatever the sweep directory holds (trial ids keep configs
    # apart), so another config's results under the name are no reason to refuse.
    checked = _checked(args, resources=False, resume=False, extra=flags)
    cfg = checked.cfg
    # Several --trial indices share one validation (seconds on a loaded machine); every index is
    # checked before the first trial starts.
    specs = [_trial_of(argparse.Namespace(trial=index), checked.trials) for index in args.trial]
    storage = _storage_root(cfg.storage)
    _writable_dir(storage / cfg.name)
    failed = []
    for spec in specs:
        if args.workers is not None:
            spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"num_workers": args.workers})})
        print(f"trial {spec.trial_index}: {spec.trial_id} ({spec.optimizer_label}, {spec.workload.model} on "
              f"{spec.workload.dataset}, {spec.resources.num_workers} worker(s), no Ray)", file=sys.stderr)
        if not run_local(spec, cfg.storage):
            print(f"trial {spec.trial_id} failed (see the traceback above)", file=sys.stderr)
            failed.append(spec.trial_id)
            continue
        write_layer_fits(storage / cfg.name / "trials" / spec.trial_id)
        print(f"results in {(storage / cfg.name / 'trials' / spec.trial_id).resolve()}", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------- probe
def cmd_probe(args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    flags = [f"--checkpoint {checkpoint} does not exist"] if checkpoint is not None and not checkpoint.exists() else []
    checked = _checked(args, resources=False, resume=False, extra=flags)
    cfg, spec = checked.cfg, _trial_of(args, checked.trials)
    storage = _storage_root(cfg.storage)
    _writable_dir(storage / cfg.name)
    from bench.distributed import configure_cpu_threads
    from bench.probes.standalone import probe_checkpoint
    from launchers.derived_tables import write_layer_fits

    configure_cpu_threads(max(1, os.cpu_count() or 1))
    try:
        out = probe_checkpoint(spec, storage, checkpoint)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    write_layer_fits(storage / cfg.name / "trials" / spec.trial_id)
    print(f"probed {out['layers']} layers at step {out['step']} → {out['files']['curvature']}")
    for row in out["unsupported"]:
        print(f"  not (fully) probed: {row.get('layer', row.get('name'))}: {row.get('reason')}")
    return 0


# --------------------------------------------------------------------------------------- report
def _is_config(arg: str) -> bool:
    return Path(arg).suffix in (".yaml", ".yml") and Path(arg).is_file()


def _sweep_dir_of_config(path: str, storage: str | None = None) -> Path:
    """The results directory a sweep file names (``<storage>/<name>``; an object store's files
    are downloaded to the staging tree first)."""
    from bench.results import remote
    from launchers.sweep import load_config

    cfg = load_config(path, {"storage": storage})
    if remote.is_uri(cfg.storage):
        return _read_from_store(cfg.storage, cfg.name)
    return Path(cfg.storage) / cfg.name


def _output_dir(arg: str | None, flag: str) -> Path | None:
    """An output directory flag, refused before any work if it cannot be created and written."""
    from launchers.gate import writable_problem

    if arg is None:
        return None
    problem = writable_problem(arg, flag)
    if problem:
        raise UsageError(problem)
    return Path(arg)


def cmd_report(args: argparse.Namespace) -> int:
    out = _output_dir(args.out, "--out")
    path = _sweep_dir_of_config(args.results) if _is_config(args.results) else _results_path(args.results)
    if not path.exists():
        raise UsageError(f"results path {path} does not exist")
    return _print_report(path, out, lm_question=args.lm_question)


# --------------------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    from analysis import ResultsNotFound, ResultsReadError, SchemaVersionError
    from analysis.claims import ClaimsError, exit_status, format_results, verify, verify_published

    if not args.results and not args.published:
        raise UsageError("give a RESULTS directory, or --published DIR to check the paper's own result files")
    results_path = _results_path(args.results) if args.results else None
    if results_path is not None and not results_path.exists():
        raise UsageError(f"results path {args.results} does not exist")
    if args.claims and Path(args.claims).is_dir():
        raise UsageError(f"--claims {args.claims} is a directory; give a claims YAML file")
    try:
        results = (verify_published(args.published, args.claims) if args.published
                   else verify(results_path, args.claims))
    except (ResultsNotFound, ResultsReadError, SchemaVersionError, ClaimsError, FileNotFoundError) as exc:
        return _fail(str(exc))
    print(format_results(results, allow_missing=args.allow_missing))
    return exit_status(results, allow_missing=args.allow_missing)


# ----------------------------------------------------------------------------------------- data
def cmd_data(args: argparse.Namespace) -> int:
    from launchers.data import DataProblem
    from launchers.data import cmd_data as run

    workers = getattr(args, "workers", None)
    flags = ["--workers must be at least 1"] if workers is not None and workers < 1 else []
    try:
        return run(args, lambda: _checked(args, resources=False, resume=False, extra=flags))
    except DataProblem as exc:
        raise UsageError(str(exc)) from None


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
    from launchers.gate import check_sweep, output_file_problem

    flags = [p for p in [output_file_problem(args.output, "-o")] if p] if args.output else []
    cluster = None
    if args.target == "slurm":
        node = {"CPU": float(args.cpus_per_node), "GPU": float(args.gpus_per_node)}
        cluster = ({k: args.nodes * v for k, v in node.items()}, [node] * max(args.nodes, 0))
    # The whole config is validated (and its resources against the allocation) before anything is
    # generated; storage and hub access are the cluster's, so they are not checked from here.
    cfg = check_sweep(args.config, cluster=cluster, here=False, extra=flags).cfg
    name = args.name or cfg.name
    try:
        if args.target == "slurm":
            text = render_sbatch(
                args.config, nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
                time=args.time, partition=args.partition, account=args.account,
                storage=args.storage or cfg.storage, name=name, venv=args.venv, port=args.port,
                exclusive=args.exclusive, mem=args.mem, extra_sbatch=args.sbatch_option or [],
            )
        else:
            text = render_rayjob(
                args.config, image=args.image, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                cpus_per_worker=args.cpus_per_worker, memory=args.memory, storage=args.storage, name=name,
                namespace=args.namespace, volume_claim=args.volume_claim, ttl_seconds=args.ttl_seconds,
            )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"-o {args.output}: cannot write ({exc.strerror or exc})") from None
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


# --------------------------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    from bench.results import remote
    from launchers import sweep_state

    if _is_config(args.name):
        sweep_dir = _sweep_dir_of_config(args.name, args.storage)
    elif args.storage and remote.is_uri(args.storage):
        sweep_dir = _read_from_store(args.storage, args.name)
    elif Path(args.name).is_dir() and not args.storage:
        sweep_dir = Path(args.name)
    else:
        sweep_dir = Path(args.storage or "results") / args.name
    try:
        record = sweep_state.read_record(sweep_dir)
    except sweep_state.SweepMismatch as exc:
        raise UsageError(str(exc)) from None
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
    from launchers.derived_tables import consolidate

    out = _output_dir(args.out, "--out")
    path = _results_path(args.results)
    if not path.exists():
        raise UsageError(f"results path {path} does not exist")
    try:
        written = consolidate(path, out)
    except (ResultsNotFound, ResultsReadError, SchemaVersionError) as exc:
        return _fail(str(exc))
    for table, (file, rows) in written.items():
        print(f"{table:<12} {rows:>8} rows → {file}")
    return 0


# --------------------------------------------------------------------------------------- config
def _with_args(spec: str, args: dict[str, Any]) -> str:
    from bench.problems import clip

    if not args:
        return spec
    return spec + clip("{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(args.items())) + "}")


def cmd_config(args: argparse.Namespace) -> int:
    from launchers.listing import describe_defaults

    if not args.config:
        if args.overrides:
            raise UsageError("overrides need a CONFIG: specbench config CONFIG KEY=VALUE ...")
        print(describe_defaults())
        return 0
    # The same gate as `sweep` (and with --address the same joined-cluster check), so that a
    # config that passes here starts.
    checked = _checked(args, resources=True, force_new=args.force_new)
    if args.address:
        _start_ray(args.address)
        try:
            _check_joined_cluster(checked.cfg, args.config)
        finally:
            import ray

            ray.shutdown()
    if args.show:
        print(json.dumps(checked.cfg.model_dump(mode="json"), indent=2))
    tuning = checked.cfg.tuning
    later = ""
    if tuning.finalists:
        screened = len({(t.workload.model_dump_json(), t.optimizer_entry) for t in checked.trials if t.tuning_stage == 1})
        edges = ""
        if tuning.edge_check:
            numeric = sum(tuning.finalists * tuning.edge_check
                          * sum(d.values is None or all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in d.values) for d in e.search.values())
                          for e in checked.cfg.optimizers if e.search) * len(checked.cfg.workloads)
            edges = f", edge checks up to {numeric} more (finalists' values at the edge of a numeric axis)"
        later = (f" (stage 1 and unscreened entries; stage 2 adds up to {screened * tuning.finalists * checked.cfg.seeds} "
                 f"trials: the finalists chosen from stage 1's results{edges})")
    print(f"config OK: {len(checked.trials)} trials{later}", file=sys.stderr)
    for t in checked.trials:
        print(f"  [{t.trial_index}] {t.trial_id}  {t.optimizer_label}  {_with_args(t.workload.model, t.workload.model_args)}"
              f" / {_with_args(t.workload.dataset, t.workload.dataset_args)}  seed {t.seed_index}"
              + (f"  stage {t.tuning_stage}" if t.tuning_stage else ""))
    return 0


# ----------------------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    from launchers.listing import LISTINGS

    print(LISTINGS[args.what]())
    return 0


# ----------------------------------------------------------------------------------------- main
_OVERRIDES_HELP = ("override config keys after CONFIG, read like YAML values, e.g. training.steps=20 "
                   "optimizers.0.settings.lr=1e-3 resources.num_workers=1")


def _placement_flags(p: argparse.ArgumentParser, what: str = "results") -> None:
    p.add_argument("--storage", help=f"{what} root, a path or s3://bucket/prefix, gs://bucket/prefix "
                   "(overrides the config's storage)")
    p.add_argument("--name", help="sweep name, the results sub-directory (overrides the config's name)")


def build_parser() -> argparse.ArgumentParser:
    from launchers.listing import LISTINGS

    parser = argparse.ArgumentParser(prog="specbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"specbench {_version()}",
                        help="print the installed specbench version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sweep", help="validate, expand and run a sweep on Ray, then report")
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument("--address", help="Ray cluster to join ('auto', 'HEAD_IP:6379', 'ray://host:10001'); "
                   "default: an embedded Ray on this machine")
    _placement_flags(p)
    p.add_argument("--verbose", action="store_true", help="show Ray and DeepSpeed logs")
    p.add_argument("--force-new", action="store_true",
                   help="results of a different config exist under this name: move them aside and start afresh")
    p.add_argument("--allow-other-machine", action="store_true",
                   help="resume even though this machine's CPU type differs from the one the finished trials "
                        "recorded, or its measured peak by more than 1.5x (their timings then compare machines)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("train", help="run one trial of a sweep without Ray (debugging)")
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument("--trial", type=int, nargs="+", default=[0], metavar="N",
                   help="trial index, or several run one after another (see `specbench config CONFIG`; default 0)")
    p.add_argument("--workers", type=int, help="local worker processes over gloo (default: resources.num_workers)")
    _placement_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("probe", help="run the curvature probe on a trial's checkpoint (or initial weights)")
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument("--trial", type=int, default=0, help="trial index (see `specbench config CONFIG`; default 0)")
    p.add_argument("--checkpoint", help="a trial's checkpoint/ directory or one of its step<N> tags; "
                   "omit to probe the initial weights")
    _placement_flags(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("report", help="tables and plots from a results directory")
    p.add_argument("results", help="a sweep directory (<storage>/<name>), a directory of sweeps, a sweep's "
                   "object-store URI, or the sweep's CONFIG file")
    p.add_argument("--out", help="where to write report.md and plots (default: <results>/report)")
    p.add_argument("--lm-question", action="store_true",
                   help="also write lm_question.md/.html: the α map and optimizer comparison of language "
                   "models (results: a root holding configs/lm/ sweeps)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("data", help="the token cache: tokenize a sweep's text corpora once before it runs "
                       "(prepare), show (list) or delete (clear) cache entries")
    from launchers.data import add_data_arguments

    add_data_arguments(p, _OVERRIDES_HELP)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("profile", help="time the spectral kernels on every Ray node (writes the profile table)")
    p.add_argument("config", help="profile YAML (configs/profile/)")
    p.add_argument("--address", help="Ray cluster to join; default: an embedded Ray on this machine")
    p.add_argument("--storage", help="results root (overrides the config's storage)")
    p.add_argument("--name", help="job name (overrides the config's name)")
    p.add_argument("--verbose", action="store_true", help="show Ray logs")
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
    csub = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    q = csub.add_parser("slurm", help="sbatch script: Ray head + workers across the allocation, then the sweep")
    q.add_argument("config", help="sweep YAML file (validated here, copied into the script's command)")
    q.add_argument("--nodes", type=int, required=True, help="nodes in the allocation (#SBATCH --nodes)")
    q.add_argument("--cpus-per-node", type=int, required=True, help="CPUs Ray may use on each node")
    q.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0)")
    q.add_argument("--time", required=True, help="SLURM time limit, e.g. 24:00:00")
    q.add_argument("--partition", required=True, help="SLURM partition (#SBATCH --partition)")
    q.add_argument("--account", help="SLURM account to charge (#SBATCH --account)")
    q.add_argument("--storage", help="results root on a shared filesystem or object store (default: the config's)")
    q.add_argument("--name", help="sweep name (default: the config's)")
    q.add_argument("--venv", default=".venv", help="virtual environment activated on every node (default .venv)")
    q.add_argument("--port", type=int, default=20000,
                   help="first port of the Ray port blocks; each job takes its own block by job id (default 20000)")
    q.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=True,
                   help="whole nodes for the job (default); --no-exclusive shares them and needs --mem")
    q.add_argument("--mem", help="memory per node, Slurm units (e.g. 480G); default: all of it (--mem=0)")
    q.add_argument("--sbatch-option", action="append", help="extra #SBATCH line content (repeatable)")
    q.add_argument("-o", "--output", help="write to this file instead of stdout")
    q.set_defaults(func=cmd_cluster)
    q = csub.add_parser("kuberay", help="KubeRay RayJob + ConfigMap manifest for the sweep")
    q.add_argument("config", help="sweep YAML file (validated here, shipped in the ConfigMap)")
    q.add_argument("--image", required=True, help="container image with specbench installed")
    q.add_argument("--workers", type=int, required=True, help="Ray worker pods")
    q.add_argument("--cpus-per-worker", required=True, help="Kubernetes quantity, e.g. 8 or 500m")
    q.add_argument("--memory", required=True, help="per worker, e.g. 64Gi")
    q.add_argument("--gpus-per-worker", type=int, default=0, help="GPUs per worker pod (default 0)")
    q.add_argument("--storage", required=True, help="results root on the mounted shared volume (e.g. /results) "
                   "or s3://bucket/prefix")
    q.add_argument("--name", help="sweep name and RayJob name (default: the config's)")
    q.add_argument("--namespace", default="default", help="Kubernetes namespace (default: default)")
    q.add_argument("--volume-claim", default="specbench-results",
                   help="ReadWriteMany PersistentVolumeClaim mounted at --storage (default specbench-results)")
    q.add_argument("--ttl-seconds", type=int, default=0,
                   help="keep the Ray cluster (and its GPUs) this long after the sweep ends; default 0")
    q.add_argument("-o", "--output", help="write to this file instead of stdout")
    q.set_defaults(func=cmd_cluster)

    p = sub.add_parser("status", help="list the trials of a sweep by state")
    p.add_argument("name", help="sweep name (under --storage), a sweep directory, or the sweep's CONFIG file")
    p.add_argument("--storage", help="results root (default: results, or the config's storage)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("consolidate", help="rebuild one Parquet file per table from the per-trial files")
    p.add_argument("results", help="a sweep directory or a sweep's object-store URI")
    p.add_argument("--out", help="output directory (default: <results>/consolidated)")
    p.set_defaults(func=cmd_consolidate)

    p = sub.add_parser("config", help="validate a sweep file as `sweep` would and list its trials, or show "
                       "every key with its default")
    p.add_argument("config", nargs="?", help="sweep YAML file (omit to list every key, default and setting)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument("--show", action="store_true", help="with CONFIG: print the resolved config with every default")
    p.add_argument("--address", help="check resources against this Ray cluster (joined, then left) instead of "
                   "this machine")
    _placement_flags(p)
    p.add_argument("--force-new", action="store_true",
                   help="as for sweep: do not report another config's results under this name")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("list", help="what the registries hold: models (with sizes), datasets, optimizers "
                       "(with settings)")
    p.add_argument("what", choices=sorted(LISTINGS), help="which registry to list")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    _project_env()
    args = build_parser().parse_args(argv)  # --version, --help and flag mistakes end here, fast
    from bench.problems import ConfigProblems  # sweep and profile configs alike

    try:
        return int(args.func(args) or 0)
    except ConfigProblems as exc:
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
