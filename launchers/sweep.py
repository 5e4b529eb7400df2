"""Loading, validating and expanding a sweep file.

Validation collects every problem (YAML syntax, unknown keys, wrong types, unknown registry
names, incompatible settings) into one :class:`ConfigError` so the user fixes them in one go;
the CLI prints it and exits with status 2 before anything starts.

Expansion is the Cartesian product workloads × optimizer entries × grid points × seeds, in that
nesting order. A trial id is ``<optimizer>-<8 hex of the resolved trial's hash>``: the hash
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
    SweepConfig,
    TrialSpec,
    grid_points,
    partial_semantic_problems,
    resolved_settings,
    search_points,
    semantic_problems,
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


def expand(cfg: SweepConfig) -> list[TrialSpec]:
    """Every trial of the sweep, in a stable order."""
    trials: list[TrialSpec] = []
    tuning_seed = cfg.tuning.seed if cfg.tuning.seed is not None else cfg.seed
    for workload in cfg.workloads:
        for entry in cfg.optimizers:
            if entry.search:
                points = search_points(entry.search, cfg.tuning.method, cfg.tuning.budget,
                                       derive_seed(tuning_seed, "tuning", entry.name))
                indices = list(range(len(points)))
            else:
                points = grid_points(entry.grid) or [{}]
                indices = [-1] * len(points)
            space = {k: v.model_dump(exclude_none=True) for k, v in entry.search.items()}
            probes = entry.probe_schedule(cfg.probes)
            for tuning_index, point in zip(indices, points, strict=True):
                settings = resolved_settings(entry.name, {**entry.settings, **point})
                for seed_index in range(cfg.seeds):
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
                    trials.append(
                        TrialSpec(
                            sweep_name=cfg.name,
                            # A plug-in's module.path:Class would put a colon in a directory name.
                            trial_id=f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', entry.name)}-{digest[:8]}",
                            trial_index=len(trials),
                            seed_index=seed_index,
                            seed=seed,
                            optimizer=entry.name,
                            optimizer_label=_label(entry.name, entry.label, {k: settings[k] for k in point}),
                            optimizer_settings=settings,
                            optimizer_entry=entry.label or entry.name,
                            workload=workload,
                            training=cfg.training,
                            resources=cfg.resources,
                            config_hash=digest,
                            tuning_index=tuning_index,
                            search_space=space,
                            probes=probes,
                        )
                    )
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        # Identical trials (e.g. a duplicated optimizer entry) would overwrite each other's files.
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(cfg.name, [f"optimizers: the sweep contains identical trials ({', '.join(dupes)}); remove duplicates"])
    return trials


def sweep_fingerprint(cfg: SweepConfig) -> str:
    """Hash of what the user wrote (minus storage), stored with the results to recognise the
    same sweep on a re-run. Only keys set in the file count, so a specbench upgrade that adds a
    setting with a default does not orphan existing results (trial ids still change whenever
    what a trial computes changes)."""
    return _hash(cfg.model_dump(mode="json", exclude_unset=True, exclude={"storage"}))
