"""The validation gate: everything a user can get wrong, checked together before anything runs.

``sweep``, ``config``, ``train`` and ``probe`` pass through :func:`check_sweep`, in this order:

1. the file (exists, is a file, UTF-8, within the size bounds) and its YAML
   (:mod:`bench.yaml_config`: YAML 1.2 types, no duplicate keys, bounded aliases);
2. the command line's ``path=value`` overrides (:mod:`launchers.overrides`);
3. the schema (strict types) and the registries (names, settings, ZeRO compatibility);
4. this machine: hub datasets and tokenizers it cannot fetch (offline, not cached);
5. storage: writable, or an object store that accepts a test object, and not holding another
   config's results under the sweep's name; probed without creating ``<storage>/<name>/``;
6. resources: the trial's request against the cluster's shape (this machine for an embedded Ray;
   the joined cluster for ``--address``, checked by the caller after joining).

A document that cannot be read stops at step 1; otherwise every later step runs on whatever
parts are valid, and all problems end in one :class:`~launchers.sweep.ConfigError` (exit status
2). Nothing is written and Ray is not started before the gate has passed.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError, create_model

from bench.config import (
    ResourcesConfig,
    SweepConfig,
    TrialSpec,
    WorkloadConfig,
    valid_items,
    validate_strict,
)
from bench.problems import clip, shown
from launchers.sweep import (
    ConfigError,
    expand,
    merge_document,
    read_document,
    sweep_fingerprints,
    validate_document,
)

#: (cluster totals, per-node resources), as ``ray_runner.local_cluster_shape`` returns them.
ClusterShape = tuple[dict[str, float], list[dict[str, float]]]

# The two fields that place a sweep's results, validated on their own when the rest fails.
_Placement = create_model("_Placement", name=(str, SweepConfig.model_fields["name"]),
                          storage=(str, SweepConfig.model_fields["storage"]))


@dataclass
class CheckedSweep:
    """A sweep that passed the gate."""

    cfg: SweepConfig
    trials: list[TrialSpec]
    #: :func:`launchers.sweep.sweep_fingerprints`: the first is written, any one resumes.
    fingerprints: tuple[str, ...]


def check_sweep(path: str | Path, assignments: list[str] | tuple[str, ...] = (),
                overrides: dict[str, Any] | None = None, *, cluster: ClusterShape | None = None,
                force_new: bool = False, here: bool = True, resume: bool = True,
                extra: list[str] | tuple[str, ...] = ()) -> CheckedSweep:
    """Run the gate on a sweep file (see the module doc).

    ``cluster``: the shape resources are checked against (None: not checked here); ``here``:
    whether this machine runs the trials or drives them (then its hub access and the storage are
    checked; not for a script generated for another cluster); ``resume``: whether it
    continues the sweep under its name (then another config's results there are refused unless
    ``force_new``); ``extra``: problems the caller found in its own flags, reported with the rest.
    """
    source = str(path)
    try:
        raw, problems = read_document(path)
        doc, more = merge_document(raw, source, overrides, assignments)
    except ConfigError as exc:
        raise ConfigError(source, [*extra, *exc.problems]) from None
    problems = [*extra, *problems, *more]
    cfg: SweepConfig | None = None
    try:
        cfg = validate_document(doc, source)
    except ConfigError as exc:
        problems += exc.problems
    workloads = list(enumerate(cfg.workloads)) if cfg else valid_items(WorkloadConfig, doc.get("workloads"))
    if here:
        problems += availability_problems(workloads)
    fingerprints = sweep_fingerprints(cfg) if cfg and resume else None
    placement = cfg or _valid(_Placement, doc)
    if here and placement is not None:
        problems += storage_problems(placement.storage, placement.name, fingerprints, force_new)
    resources = cfg.resources if cfg else _valid(ResourcesConfig, doc.get("resources", {}))
    if cluster is not None and resources is not None:
        from launchers.ray_runner import resource_problems, sweep_resource_problems

        problems += sweep_resource_problems(cfg, *cluster) if cfg else resource_problems(resources, *cluster)
    if problems or cfg is None:
        raise ConfigError(source, problems)
    return CheckedSweep(cfg, expand(cfg), sweep_fingerprints(cfg))


def _valid(model: Any, raw: Any) -> Any:
    try:
        return validate_strict(model, raw)
    except (ValidationError, TypeError):
        return None


def availability_problems(workloads: list[tuple[int, WorkloadConfig]]) -> list[str]:
    """Hub datasets and tokenizers of valid workloads that this machine cannot fetch."""
    from bench import data
    from bench.data import hub

    problems = []
    for i, wl in workloads:
        if not data.check_args(wl.dataset, wl.dataset_args):  # a valid spec with valid args
            problems += [f"workloads[{i}].dataset: {p}" for p in hub.availability_problems(wl.dataset, wl.dataset_args)]
    return problems


# ------------------------------------------------------------------------------------- storage
def writable_problem(path: str | Path, what: str) -> str | None:
    """Why the directory ``path`` could not be created and written, or None.

    Nothing is created: a probe file goes into the deepest directory of ``path`` that exists and
    is removed at once."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{what} {shown(str(path))} is not writable: {shown(str(existing))} is a file, not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".specbench-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{what} {shown(str(path))} is not writable ({exc.strerror or exc} in {shown(str(existing))})"
    return None


def output_file_problem(path: str | Path, what: str) -> str | None:
    """Why a file could not be written at ``path`` (its directory must exist), or None."""
    path = Path(path)
    if path.is_dir():
        return f"{what} {shown(str(path))} is a directory; give a file name"
    if not path.parent.is_dir():
        return f"{what} {shown(str(path))}: directory {shown(str(path.parent))} does not exist"
    return writable_problem(path.parent, what)


def store_problem(storage: str, what: str, exc: Exception) -> str:
    """An object store that could not be used, with pyarrow's reason on one line."""
    return f"storage {shown(storage)} is not {what} ({clip(' '.join(str(exc).split()), 300)})"


def storage_problems(storage: str, name: str, fingerprints: tuple[str, ...] | None, force_new: bool) -> list[str]:
    """Whether ``<storage>/<name>`` can take this sweep's results: writable, and not holding
    another config's results (unless ``force_new``)."""
    from pyarrow import fs as pafs

    from bench.results import remote
    from launchers import sweep_state

    if remote.is_uri(storage):
        if remote.scheme(storage) not in remote.SCHEMES:
            return []  # the schema reported it
        try:
            mirror = remote.Mirror(storage)
            mirror.check_writable()
            record_path = f"{mirror.root}/{name}/sweep.json"
            exists = mirror.fs.get_file_info(record_path).type == pafs.FileType.File
            text = mirror.fs.open_input_stream(record_path).read() if exists else None
        except (OSError, ValueError) as exc:  # pyarrow: ArrowIOError (network, auth), ArrowInvalid (URI)
            return [store_problem(storage, "writable", exc)]
        sweep_dir = f"{storage.split('?', 1)[0].rstrip('/')}/{name}"
        try:
            record = sweep_state.parse_record(text, f"{sweep_dir}/sweep.json") if text is not None else None
        except sweep_state.SweepMismatch as exc:
            return [str(exc)]
    else:
        sweep_dir = Path(storage) / name
        if sweep_dir.exists() and not sweep_dir.is_dir():
            return [f"storage: {shown(str(sweep_dir))} is a file, not a sweep directory"]
        problem = writable_problem(sweep_dir, "storage path")
        if problem:
            return [problem]
        try:
            record = sweep_state.read_record(sweep_dir)
        except (sweep_state.SweepMismatch, OSError) as exc:
            return [str(exc)]
    if fingerprints is None:
        return []
    problem = sweep_state.mismatch(record, fingerprints, sweep_dir, force_new)
    return [problem] if problem else []
