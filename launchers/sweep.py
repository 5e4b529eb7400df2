"""Loading, validating and expanding a sweep file.

Validation collects every problem (YAML syntax, unknown keys, wrong types, unknown registry
names, incompatible settings) into one :class:`ConfigError` so the user fixes them in one go;
the CLI prints it and exits with status 2 before anything starts.

Expansion is the Cartesian product workloads × optimizer entries × grid points × seeds, in that
nesting order (with the two-stage tuning protocol, stage 1's part of it; stage 2 is added by
the driver from stage 1's results, :mod:`launchers.stages`). A trial id is ``<optimizer>-<8 hex of the resolved trial's hash>``: the hash
covers everything that changes what the trial computes (workload, optimizer and settings,
training, resources, seed) and nothing else, so the same trial keeps its id when unrelated
entries are added to the sweep.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bench import yaml_config
from bench.config import (
    OptimizerEntry,
    ResourcesConfig,
    SweepConfig,
    TrialSpec,
    grid_points,
    partial_semantic_problems,
    resolved_settings,
    search_points,
    semantic_problems,
    setting_domain,
    validate_strict,
)
from bench.problems import ConfigProblems, pydantic_problems
from bench.seeds import derive_seed, trial_seed
from launchers.overrides import apply_overrides


class ConfigError(ConfigProblems):
    """A user mistake in a sweep file: ``problems`` lists every one of them."""

    kind = "sweep config"


def read_document(path: str | Path) -> tuple[Any, list[str]]:
    """The YAML document of a config file (:mod:`bench.yaml_config` rules) with the problems that
    still leave a document (duplicate keys); ConfigError when there is none."""
    try:
        return yaml_config.load(path)
    except yaml_config.YamlProblems as exc:
        raise ConfigError(str(path), exc.problems) from None


def merge_document(raw: Any, source: str, overrides: dict[str, Any] | None = None,
                   assignments: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """A private copy of a loaded document with the command line's ``path=value``
    ``assignments`` and its ``overrides`` of top-level keys (None values ignored) applied, and
    the problems of the assignments."""
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the file must be a YAML mapping (key: value) at the top level"])
    try:
        doc = json.loads(json.dumps(raw, allow_nan=True))  # a copy that shares nothing (YAML aliases do)
    except (TypeError, ValueError) as exc:  # a caller's Python object no config file can hold
        raise ConfigError(source, [f"the document holds a value that is not YAML data ({exc})"]) from None
    problems = apply_overrides(doc, list(assignments))
    doc.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return doc, problems


def validate_document(doc: dict[str, Any], source: str, problems: list[str] | None = None) -> SweepConfig:
    """A merged document as a :class:`SweepConfig`, or one :class:`ConfigError` with every
    problem of every layer (``problems`` found before, schema, registries, duplicate trials)."""
    problems = list(problems or [])
    try:
        cfg = validate_strict(SweepConfig, doc)
    except ValidationError as exc:
        raise ConfigError(source, problems + pydantic_problems(exc) + partial_semantic_problems(doc)) from None
    problems += semantic_problems(cfg)
    if not problems:
        try:
            expand(cfg)  # duplicate trials are a config mistake too; report them before anything runs
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(source, problems)
    return cfg


def parse_config(raw: Any, source: str = "<config>", overrides: dict[str, Any] | None = None,
                 assignments: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Validate a loaded YAML document (plus command-line assignments and overrides, see
    :func:`merge_document`) into a :class:`SweepConfig`; :class:`ConfigError` lists every problem."""
    doc, problems = merge_document(raw, source, overrides, assignments)
    return validate_document(doc, source, problems)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                assignments: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Read and validate a sweep file (see :func:`parse_config`)."""
    raw, problems = read_document(path)
    doc, more = merge_document(raw, str(path), overrides, assignments)
    return validate_document(doc, str(path), problems + more)


def _hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _label(name: str, entry_label: str | None, point: dict[str, Any]) -> str:
    base = entry_label or name
    if not point:
        return base
    return base + "(" + ",".join(f"{k}={v}" for k, v in point.items()) + ")"


#: A (workload index, optimizer entry index) of a sweep: the unit stage 2 selects finalists in.
EntryKey = tuple[int, int]


def entry_points(cfg: SweepConfig) -> dict[EntryKey, list[tuple[int, dict[str, Any]]]]:
    """Every (tuning index, setting point) of every entry on every workload, in sweep order:
    ``budget`` points of a search space (tuning index 0..budget-1), else the grid points (-1)."""
    tuning_seed = cfg.tuning.seed if cfg.tuning.seed is not None else cfg.seed
    out: dict[EntryKey, list[tuple[int, dict[str, Any]]]] = {}
    for w in range(len(cfg.workloads)):
        for e, entry in enumerate(cfg.optimizers):
            if entry.search:
                points = search_points(entry.search, cfg.tuning.method, cfg.tuning.budget,
                                       derive_seed(tuning_seed, "tuning", entry.name))
                out[(w, e)] = list(enumerate(points))
            else:
                out[(w, e)] = [(-1, p) for p in grid_points(entry.grid) or [{}]]
    return out


def search_space(entry: OptimizerEntry) -> dict[str, dict[str, Any]]:
    """An entry's search space as recorded with each trial (``runs.search_space``): each axis's
    range or values plus the setting's own domain, what a report needs to judge a choice."""
    return {k: {**v.model_dump(exclude_none=True), **setting_domain(entry.name, k)} for k, v in entry.search.items()}


def expand(cfg: SweepConfig, finalists: dict[EntryKey, list[int]] | None = None,
           edge_checks: dict[EntryKey, list[tuple[int, dict[str, Any]]]] | None = None) -> list[TrialSpec]:
    """The trials the sweep can run before any result exists, in a stable order.

    One stage (``tuning.finalists: 0``): every setting × seed indices 0..seeds-1. Two stages:
    stage 1, every setting of an entry with more than ``finalists`` settings on seed index 0;
    any other entry goes straight to stage 2. ``finalists`` (entry → positions in its
    :func:`entry_points` list, chosen from stage 1's results by the driver) adds their stage-2
    trials: seed indices 1..seeds, fresh for every entry alike. ``edge_checks`` (entry →
    (tuning index, setting) beyond a finalist's edge, :func:`launchers.stages.choose_edge_checks`)
    adds them after, on seed index 0 (stage 3).
    """
    from bench.config import STAGE_EDGE, STAGE_FINAL, STAGE_SCREEN, STAGE_SINGLE

    final_seeds = range(1, cfg.seeds + 1)
    every = entry_points(cfg)
    trials: list[TrialSpec] = []
    for key, points in every.items():
        if cfg.tuning.finalists == 0:
            trials += _trials(cfg, key, points, range(cfg.seeds), STAGE_SINGLE, len(trials))
        elif len(points) > cfg.tuning.finalists:
            trials += _trials(cfg, key, points, [0], STAGE_SCREEN, len(trials))
        else:
            trials += _trials(cfg, key, points, final_seeds, STAGE_FINAL, len(trials))
    for key, positions in (finalists or {}).items():
        chosen = [every[key][i] for i in positions]
        trials += _trials(cfg, key, chosen, final_seeds, STAGE_FINAL, len(trials))
    for key, checks in (edge_checks or {}).items():
        trials += _trials(cfg, key, checks, [0], STAGE_EDGE, len(trials))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        # Identical trials (e.g. a duplicated optimizer entry) would overwrite each other's files.
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(cfg.name, [f"optimizers: the sweep contains identical trials ({', '.join(dupes)}); remove duplicates"])
    return trials


def _trials(cfg: SweepConfig, key: EntryKey, points: list[tuple[int, dict[str, Any]]], seed_indices,
            stage: int, first_index: int) -> list[TrialSpec]:
    """The trials of one entry's ``points`` × ``seed_indices`` in ``stage``; trial indices from
    ``first_index``."""
    workload, entry = cfg.workloads[key[0]], cfg.optimizers[key[1]]
    space = search_space(entry)
    probes = entry.probe_schedule(cfg.probes)
    out: list[TrialSpec] = []
    for tuning_index, point in points:
        settings = resolved_settings(entry.name, {**entry.settings, **point})
        for seed_index in seed_indices:
            seed = trial_seed(cfg.seed, seed_index)
            identity = {
                "workload": workload.model_dump(mode="json"),
                "optimizer": entry.name,
                "settings": settings,
                "training": cfg.training.model_dump(mode="json", exclude=set(cfg.training.NON_IDENTITY)),
                "world_size": cfg.resources.num_workers,
                "use_gpu": cfg.resources.use_gpu,
                "seed": seed,
                "probes": probes.model_dump(mode="json") if probes.enabled else None,
            }
            digest = _hash(identity)
            out.append(
                TrialSpec(
                    sweep_name=cfg.name,
                    # A plug-in's module.path:Class would put a colon in a directory name.
                    trial_id=f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', entry.name)}-{digest[:8]}",
                    trial_index=first_index + len(out),
                    seed_index=seed_index,
                    seed=seed,
                    optimizer=entry.name,
                    optimizer_label=_label(entry.name, entry.label, {k: settings[k] for k in point}),
                    optimizer_settings=settings,
                    optimizer_entry=entry.label or entry.name,
                    workload=workload,
                    training=cfg.training,
                    resources=entry.trial_resources(cfg.resources),
                    config_hash=digest,
                    tuning_index=tuning_index,
                    search_space=space,
                    probes=probes,
                    tuning_stage=stage,
                )
            )
    return out


def sweep_fingerprints(cfg: SweepConfig) -> tuple[str, ...]:
    """Hashes of what the user wrote (minus storage) that recognise the same sweep on a re-run:
    the first is the one a sweep record is written with, the others are the ones earlier
    specbench versions wrote for the same file, so their results still resume.

    Only keys set in the file count, so a specbench upgrade that adds a setting with a default
    does not orphan existing results (trial ids still change whenever what a trial computes
    changes); nor do the resources keys that only schedule trials
    (:attr:`bench.config.ResourcesConfig.SCHEDULING_ONLY`), so a user may resume a stopped sweep
    with more trials at once or a longer stall timeout (an optimizer entry's own
    ``memory_per_worker_gib`` does not count either)."""
    written = cfg.model_dump(mode="json", exclude_unset=True, exclude={"storage": True})
    resources = written.get("resources", {})
    # An entry's own reservation did not exist before either: a file that adds it to a sweep
    # recorded then is still that sweep.
    entries = [{k: v for k, v in entry.items() if k != "memory_per_worker_gib"} for entry in written["optimizers"]]
    current = {**written, "optimizers": entries,
               "resources": {k: v for k, v in resources.items() if k not in ResourcesConfig.SCHEDULING_ONLY}}
    # Before the scheduling-only keys were left out, only stall_timeout_s was.
    before = {**written, "optimizers": entries,
              "resources": {k: v for k, v in resources.items() if k != "stall_timeout_s"}}
    if not current["resources"]:
        del current["resources"]  # a file that sets only scheduling keys is the file without them
    if "resources" not in cfg.model_fields_set:
        del before["resources"]  # as that version's model_dump(exclude_unset=True) left it: absent
    return tuple(dict.fromkeys((_hash(current), _hash(before))))
