"""Typed configuration: the sweep file and the fully resolved trial it expands into.

Every section is a pydantic model with ``extra="forbid"`` so that a misspelt key is an error, and
every field has a default and a description so that ``specbench config --show`` can list them.
Cross-field rules that need the registries (unknown optimizer, model or dataset names, optimizer
settings, ZeRO compatibility) live in :func:`semantic_problems`, which returns every problem at
once instead of stopping at the first.

Types are taken as written (:func:`validate_strict`): a config is read as YAML 1.2
(:mod:`bench.yaml_config`), and a value whose type does not fit its field is refused, never
converted. A quoted number (``steps: "20"``, ``lr: "0.01"``) is a string and is refused where a
number is expected; ``yes``/``on`` are strings and are refused where a boolean is expected; a
float is refused where an integer is expected. The one widening is an integer where a float is
expected (``damping: 1`` is 1.0). Optimizer settings are validated the same way against the
optimizer's settings model, and trials carry the validated values (:func:`resolved_settings`),
so ``lr: 1`` and ``lr: 1.0`` are one trial.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.probes.settings import ProbeSettings
from bench.problems import pydantic_problems, shown

#: Longest model or dataset spec (a name or a path); longer strings are refused before any
#: registry looks at them.
MAX_SPEC_CHARS = 1024

_M = TypeVar("_M", bound=BaseModel)


def validate_strict(model: type[_M], raw: Any) -> _M:
    """``model`` validated from a loaded document with types as written (see the module doc).

    pydantic's strict mode on JSON input: strict scalars, and lists accepted for tuple fields
    (strict Python input would insist on tuples, which YAML cannot write). Raises
    ``pydantic.ValidationError``, or ``TypeError`` for a value JSON cannot hold.
    """
    return model.model_validate_json(json.dumps(raw, allow_nan=True), strict=True)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LrSchedule(_Strict):
    """Learning-rate schedule: a multiplier of every parameter group's peak ``lr`` per optimizer
    step (:func:`bench.deepspeed_config.lr_lambda`), applied by a ``torch.optim.lr_scheduler.LambdaLR``
    that the DeepSpeed engine steps after each optimizer step. One function serves every
    optimizer, the AdamW side-car groups included."""

    kind: Literal["constant", "cosine", "linear"] = Field(
        "cosine", description="shape after warm-up: constant, cosine decay or linear decay"
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 over this many optimizer steps")
    min_lr_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="final lr as a fraction of the peak (cosine and linear)"
    )


class InputConfig(_Strict):
    """How a trial's input reaches the loop (bench/data/cache.py, bench/data/loader.py). None of it
    changes a batch: a cached corpus gives the same examples as one tokenized in memory, and
    background loaders deliver the sampler's batches in its order."""

    token_cache: bool = Field(
        True, description="tokenize a text corpus once into memory-mapped token files shared by every trial "
        "and rank (false: every worker tokenizes it in memory)"
    )
    cache_dir: str | None = Field(
        None, max_length=MAX_SPEC_CHARS, description="token cache root: a path every node sees or "
        "s3://…, gs://… (a relative path is under the storage); default <storage>/_data_cache"
    )
    tokenize_workers: int | None = Field(
        None, gt=0, description="processes that tokenize a corpus shard by shard when its cache entry is "
        "built (default: the CPUs of the machine building it)"
    )
    loader_workers: int | None = Field(
        None, ge=0, description="background processes per rank that decode training samples ahead of the loop "
        "(default: 2 for datasets decoded on access, i.e. images read from files; 0 otherwise)"
    )
    prefetch_batches: int = Field(
        2, gt=0, description="micro-batches each background loader keeps ready (pinned memory on GPUs)"
    )

    @model_validator(mode="after")
    def _cache_dir_is_supported(self) -> InputConfig:
        from bench.results import remote

        if self.cache_dir and remote.is_uri(self.cache_dir) and remote.scheme(self.cache_dir) not in remote.SCHEMES:
            raise ValueError(f"cache_dir {shown(self.cache_dir)}: unsupported scheme; use a path or an object-store "
                             f"URI ({', '.join(s + '://' for s in remote.SCHEMES)})")
        return self


class TrainingConfig(_Strict):
    """The training loop of one trial (bench/trial/) and its DeepSpeed configuration."""

    #: Keys that change how a trial is run or recorded but not what it computes; they are left
    #: out of the trial id so that, e.g., a different checkpoint interval still resumes a trial.
    NON_IDENTITY: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "keep_checkpoint", "report_every",
                                                        "input"})

    steps: int = Field(200, gt=0, description="optimizer steps per trial")
    micro_batch_size: int = Field(32, gt=0, description="samples per worker per forward pass")
    grad_accum: int = Field(1, gt=0, description="micro-batches accumulated per optimizer step")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="DeepSpeed training precision")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage")
    grad_clip: float | None = Field(
        1.0, description="gradient clipping by global norm (DeepSpeed gradient_clipping); null disables"
    )
    lr_schedule: LrSchedule = Field(default_factory=LrSchedule)
    log_every: int = Field(10, gt=0, description="steps between rows of the steps table")
    eval_every: int = Field(50, gt=0, description="steps between evaluations on the validation split")
    eval_batch_size: int = Field(256, gt=0, description="per-worker batch size for evaluation")
    report_every: int = Field(
        0,
        ge=0,
        description="steps between progress reports to the driver (0: about 5 per trial); reports cost a "
        "Ray round trip, so keep them rare",
    )
    warmup_steps_excluded: int = Field(
        5, ge=0, description="first steps excluded from the median step time (JIT, allocator warm-up)"
    )
    divergence_loss: float = Field(
        1e4, gt=0, description="a train loss above this (or non-finite) ends the trial as diverged"
    )
    checkpoint_every: int = Field(
        100,
        ge=0,
        description="steps between DeepSpeed checkpoints an interrupted or retried trial resumes from (0: none)",
    )
    keep_checkpoint: bool = Field(
        False, description="keep the last checkpoint after the trial finishes (default: delete it to save disk)"
    )
    input: InputConfig = Field(default_factory=InputConfig, description="the input pipeline: token cache and "
                               "background loaders (not part of the trial id: batches are the same either way)")


class ProbeSchedule(_Strict):
    """When the curvature probe (bench/probes, docs/science/quantities.md) runs inside a trial, and how.

    The probe is a collective (every rank takes part); its time is recorded separately
    (``probe_time_s`` in ``steps``, per-phase rows in ``profile``) and never counted as step time.
    """

    every: int = Field(0, ge=0, description="probe every N optimizer steps (0: only at_steps / at_end)")
    at_steps: list[int] = Field(default_factory=list, description="probe after these optimizer steps")
    at_end: bool = Field(False, description="probe after the last step")
    split: Literal["train", "val"] = Field("train", description="split the fixed probe batch is drawn from")
    settings: ProbeSettings = Field(default_factory=ProbeSettings, description="what the probe measures")

    @property
    def enabled(self) -> bool:
        return self.every > 0 or bool(self.at_steps) or self.at_end

    def due(self, step: int, last: int) -> bool:
        """Whether to probe after optimizer step ``step`` (1-based) of ``last``."""
        return (self.every > 0 and step % self.every == 0) or step in self.at_steps or (self.at_end and step == last)


class ResourcesConfig(_Strict):
    """What each trial asks of the Ray cluster."""

    #: Keys that decide only how trials are scheduled and retried, never what a trial computes
    #: or records: a stopped sweep resumes when they change (more concurrent trials on a bigger
    #: cluster, a longer stall timeout). ``threads_per_worker`` and ``peak_tflops`` are not
    #: among them: one sets every step time, the other every MFU a runs row records.
    SCHEDULING_ONLY: ClassVar[frozenset[str]] = frozenset({"cpus_per_worker", "memory_per_worker_gib",
                                                           "max_concurrent_trials", "max_retries",
                                                           "stall_timeout_s"})

    num_workers: int = Field(2, gt=0, description="DeepSpeed data-parallel workers (Ray Train workers) per trial")
    use_gpu: bool = Field(False, description="one GPU per worker (nccl); false: CPU workers over gloo")
    cpus_per_worker: float = Field(
        0.49,
        gt=0,
        description="Ray CPU resource per worker; below 1 lets several 2-worker trials share a small machine",
    )
    # Ray schedules by the resources a task asks for, not by what it uses: without a memory
    # request two trials whose probes each peak at 9 GiB share a 24 GiB node, and Ray's memory
    # monitor kills one of them mid-run (measured: the LM question's measured-α trials).
    memory_per_worker_gib: float | None = Field(
        None, gt=0, description="memory (GiB) each worker reserves through Ray's `memory` resource: "
        "trials run at once only while their reservations fit a node; set it to a worker's peak "
        "(probes included) when trials would otherwise exhaust the node. null: no reservation"
    )
    max_concurrent_trials: int | None = Field(
        None, gt=0, description="cap on trials running at once (default: as many as resources allow)"
    )
    max_retries: int = Field(
        2, ge=0, description="times a trial whose worker died is restarted (from its last checkpoint)"
    )
    # Long enough for the slowest silent stretch of a healthy trial (start-up, a checkpoint, a
    # probe between two progress reports), short enough that a stuck sweep frees its cluster.
    stall_timeout_s: float | None = Field(
        1800.0, gt=0, description="seconds without any trial starting, reporting or finishing after which "
        "the sweep stops with a description of what it waits for (a rerun resumes); null waits forever"
    )
    # One thread by default: workers share the node's cores, and oversubscribed intra-op threads
    # slow a CPU DeepSpeed step several-fold (about 4x with torch's default count, measured on
    # 2 cores with 2 workers).
    threads_per_worker: int = Field(
        1, gt=0, description="OMP/torch intra-op threads per CPU worker; keep workers × threads ≤ cores"
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="per-device peak TFLOP/s that MFU is measured against (default: the "
        "datasheet dense peak of a known GPU at the training precision; on CPU a float32 matmul "
        "rate measured at trial start)"
    )


class WorkloadConfig(_Strict):
    """A model trained on a dataset. Names resolve through the registries in bench/models and
    bench/data (``builtin:cnn``, ``timm:resnet18``, ``hf:gpt2``; ``sklearn:digits``,
    ``builtin:text``, ``hf:<dataset>``, a local file)."""

    model: str = Field(..., min_length=1, max_length=MAX_SPEC_CHARS,
                       description="model spec, e.g. builtin:cnn, timm:resnet18, hf:gpt2")
    dataset: str = Field(..., min_length=1, max_length=MAX_SPEC_CHARS,
                         description="dataset spec, e.g. sklearn:digits, builtin:text, hf:cifar10, data.parquet")
    model_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model builder")
    dataset_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the dataset loader")


class SearchDim(_Strict):
    """One axis of an optimizer's tuning search space: a range (``low``/``high``, optionally log
    scale or integer) or a list of ``values``."""

    low: float | None = Field(None, description="lower end of a numeric range")
    high: float | None = Field(None, description="upper end of a numeric range")
    log: bool = Field(False, description="sample the range uniformly in log space")
    integer: bool = Field(False, description="round sampled values to integers")
    values: list[Any] | None = Field(None, description="a categorical axis: these values")

    @model_validator(mode="after")
    def _range_or_values(self) -> SearchDim:
        if self.values is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either values or low/high, not both")
            if not self.values:
                raise ValueError("values is empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a search axis needs low and high (or values)")
        if not self.low < self.high:
            raise ValueError(f"low ({shown(self.low)}) must be below high ({shown(self.high)})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale axis needs low > 0")
        return self


#: ``TrialSpec.tuning_stage`` values: a sweep without the two-stage protocol; its screening stage
#: (every setting on one seed); its finalists stage (the best settings on fresh seeds); edge
#: checks (values beyond a finalist's edge on the screening seed, outside the equal budget).
STAGE_SINGLE, STAGE_SCREEN, STAGE_FINAL, STAGE_EDGE = 0, 1, 2, 3


class TuningConfig(_Strict):
    """Equal tuning budgets: every optimizer with a ``search`` space gets ``budget`` settings,
    sampled by a scrambled Halton sequence (quasi-random, seeded) or taken from a full grid of
    its ``values`` axes; reports pick the best setting per optimizer on the validation metric
    and report its seeds on the test metric.

    With ``finalists: 0`` every setting runs with every seed. With ``finalists: N`` the sweep
    runs two stages (the usual protocol when seeds × budget does not fit): stage 1 runs every
    setting on seed index 0; the sweep driver then reads stage 1's Parquet results and runs each
    entry's N best settings (validation metric; diverged or failed settings are never
    finalists) on ``seeds`` fresh seed indices 1..seeds, which every entry shares, so stage 2
    gives paired per-seed comparisons free of the screening seed's selection bias. An entry with
    at most N settings (a fixed setting, a small grid) skips stage 1.

    With ``edge_check: k`` (two-stage sweeps), each finalist whose value on a numeric axis sits
    at an edge of what stage 1 searched (``analysis.tuning.edge_side``) also gets k settings
    beyond that edge, the same setting with only that axis moved outward one typical gap at a
    time (``analysis.tuning.beyond_edge``), screened on seed index 0 alongside stage 2
    (``tuning_stage`` 3). They are outside the equal budget and never enter the comparison;
    they tell the report whether the edge is settled (nothing beyond scored better by more than
    a reseed moves the metric) or the range must be widened.
    """

    method: Literal["halton", "grid"] = Field("halton", description="halton (quasi-random) or grid (values axes only)")
    budget: int = Field(0, ge=0, description="settings per optimizer with a search space (0: no tuning)")
    seed: int | None = Field(None, description="seed of the Halton sequence (default: the sweep seed)")
    finalists: int = Field(
        0, ge=0, description="two-stage protocol: settings per entry re-run on `seeds` fresh seeds after a "
        "one-seed screening of the whole budget (0: one stage, every setting on every seed)"
    )
    edge_check: int = Field(
        0, ge=0, le=8, description="with finalists: settings screened beyond each finalist's edge on a numeric "
        "axis, one typical gap apart, outside the budget; the report says whether the edge is settled (0: none)"
    )


class OptimizerEntry(_Strict):
    """One optimizer of the comparison: fixed settings plus an optional grid over settings, or a
    search space sampled under the sweep's tuning budget."""

    name: str = Field(..., min_length=1, max_length=MAX_SPEC_CHARS,
                      description="built-in optimizer (adamw, spectral_newton, ...), a plug-in's entry-point name, "
                      "or module.path:Class (docs/plugins.md)")
    settings: dict[str, Any] = Field(default_factory=dict, description="settings (see `specbench config --show`)")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="setting -> list of values; the sweep takes the Cartesian product"
    )
    search: dict[str, SearchDim] = Field(
        default_factory=dict, description="setting -> search axis, sampled under tuning.budget"
    )
    label: str | None = Field(None, description="display name in reports (default: name plus grid values)")
    probes: ProbeSchedule | None = Field(
        None, description="this optimizer's probe schedule, replacing the sweep's `probes` for its "
        "trials (e.g. only Spectral Newton with alpha_policy: measured needs probes)"
    )

    memory_per_worker_gib: float | None = Field(
        None, gt=0, description="memory (GiB) each worker of this optimizer's trials reserves, "
        "replacing resources.memory_per_worker_gib for them (e.g. the entry whose probes peak far "
        "above the others' training); scheduling only, like the sweep-wide key"
    )

    def probe_schedule(self, sweep_default: ProbeSchedule) -> ProbeSchedule:
        """The probe schedule of this entry's trials."""
        return self.probes if self.probes is not None else sweep_default

    def trial_resources(self, sweep_default: ResourcesConfig) -> ResourcesConfig:
        """The resources this entry's trials ask Ray for."""
        if self.memory_per_worker_gib is None:
            return sweep_default
        return sweep_default.model_copy(update={"memory_per_worker_gib": self.memory_per_worker_gib})

    @model_validator(mode="after")
    def _grid_not_empty(self) -> OptimizerEntry:
        for key, values in self.grid.items():
            if len(values) == 0:
                raise ValueError(f"grid.{key} is an empty list")
            if key in self.settings:
                raise ValueError(f"'{key}' is both a fixed setting and a grid axis")
        if self.search and self.grid:
            raise ValueError("use either grid or search for one optimizer, not both")
        for key in self.search:
            if key in self.settings:
                raise ValueError(f"'{key}' is both a fixed setting and a search axis")
        return self


class SweepConfig(_Strict):
    """A whole sweep: optimizers × workloads × seeds."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200,
                      description="sweep name (results sub-directory)")
    seed: int = Field(0, ge=0, description="root seed: every trial, rank and data-stream seed derives from it")
    seeds: int = Field(1, gt=0, description="number of seeds per (optimizer setting, workload)")
    storage: str = Field(
        "results",
        max_length=MAX_SPEC_CHARS,
        description="results root, a path or s3://bucket/prefix, gs://bucket/prefix; the sweep writes <storage>/<name>/",
    )
    workloads: list[WorkloadConfig] = Field(..., min_length=1)
    optimizers: list[OptimizerEntry] = Field(..., min_length=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    probes: ProbeSchedule = Field(default_factory=ProbeSchedule)

    @model_validator(mode="after")
    def _storage_is_supported(self) -> SweepConfig:
        from bench.results import remote

        if remote.is_uri(self.storage) and remote.scheme(self.storage) not in remote.SCHEMES:
            raise ValueError(
                f"storage {shown(self.storage)}: unsupported scheme {shown(remote.scheme(self.storage))}; use a path "
                f"(a shared filesystem on a cluster) or an object-store URI ({', '.join(s + '://' for s in remote.SCHEMES)})"
            )
        return self

    @model_validator(mode="after")
    def _budget_matches_search(self) -> SweepConfig:
        searching = [e.name for e in self.optimizers if e.search]
        if self.tuning.edge_check and not self.tuning.finalists:
            raise ValueError("tuning.edge_check needs the two-stage protocol (tuning.finalists > 0): it checks "
                             "the finalists' edges against what stage 1 tried")
        if self.tuning.finalists and searching and self.tuning.finalists >= self.tuning.budget:
            raise ValueError(f"tuning.finalists ({self.tuning.finalists}) must be below tuning.budget "
                             f"({self.tuning.budget}): stage 2 re-runs a selection of stage 1's settings")
        if searching and self.tuning.budget == 0:
            raise ValueError(f"optimizers {', '.join(searching)} have a search space but tuning.budget is 0")
        if self.tuning.method == "grid":
            for e in self.optimizers:
                if any(dim.values is None for dim in e.search.values()):
                    raise ValueError(f"tuning.method grid needs 'values' axes; {e.name} has a low/high range")
                size = len(grid_points({k: list(d.values or []) for k, d in e.search.items()}))
                if e.search and size != self.tuning.budget:
                    raise ValueError(
                        f"{e.name}'s search grid has {size} points but tuning.budget is {self.tuning.budget}: "
                        "equal budgets need equal grid sizes"
                    )
        return self

    @model_validator(mode="after")
    def _measured_alpha_has_probes(self) -> SweepConfig:
        # Without a probe, "measured" silently falls back to the by-layer-type table: the trial
        # would be labelled with a policy it never used.
        for i, e in enumerate(self.optimizers):
            policies = [e.settings.get("alpha_policy"), *e.grid.get("alpha_policy", [])]
            if "measured" in policies and not e.probe_schedule(self.probes).enabled:
                raise ValueError(
                    f"optimizers[{i}] ({e.label or e.name}): alpha_policy 'measured' needs a probe "
                    "schedule (the sweep's `probes` or the entry's own `probes`)"
                )
        return self


class TrialSpec(_Strict):
    """A fully resolved trial: everything a worker needs, nothing more (it runs without Ray)."""

    sweep_name: str
    trial_id: str
    trial_index: int
    seed_index: int
    seed: int
    optimizer: str
    optimizer_label: str
    optimizer_settings: dict[str, Any]
    workload: WorkloadConfig
    #: The config entry this trial belongs to (its label, else its name): the unit of a
    #: comparison, so two entries of one optimizer (e.g. two α policies) are compared apart.
    optimizer_entry: str = ""
    training: TrainingConfig
    resources: ResourcesConfig
    config_hash: str
    probes: ProbeSchedule = Field(default_factory=ProbeSchedule)
    tuning_index: int = -1
    search_space: dict[str, Any] = Field(default_factory=dict)
    #: STAGE_SINGLE, STAGE_SCREEN or STAGE_FINAL (:class:`TuningConfig`).
    tuning_stage: int = STAGE_SINGLE


def semantic_problems(cfg: SweepConfig) -> list[str]:
    """Every problem that needs the registries, as readable lines (empty when the sweep is valid).

    Cheap checks only: nothing is downloaded, no model is built.
    """
    problems = _registry_problems(list(enumerate(cfg.workloads)), list(enumerate(cfg.optimizers)),
                                  cfg.training.zero_stage)
    if cfg.training.zero_stage == 3:
        # The curvature probe differentiates the module's own parameters, which ZeRO-3 keeps only as
        # empty placeholders between forward passes (tested: it fails at ZeRO-3, works at 1 and 2).
        for i, entry in enumerate(cfg.optimizers):
            if entry.probe_schedule(cfg.probes).enabled:
                problems.append(f"optimizers[{i}] ({entry.label or entry.name}): curvature probes need whole "
                                "parameters, which training.zero_stage=3 partitions; use zero_stage ≤ 2 for "
                                "probed trials")
    return problems


def partial_semantic_problems(raw: dict[str, Any]) -> list[str]:
    """Registry problems of the entries that are well-formed in a document that failed schema
    validation elsewhere, so that one run of the validator reports every mistake."""

    zero = 0
    training = raw.get("training")
    if isinstance(training, dict) and training.get("zero_stage") in (0, 1, 2, 3):
        zero = training["zero_stage"]
    return _registry_problems(valid_items(WorkloadConfig, raw.get("workloads")),
                              valid_items(OptimizerEntry, raw.get("optimizers")), zero)


def valid_items(model: type[_M], items: Any) -> list[tuple[int, _M]]:
    """``(index, validated item)`` for the items of a document's list that are valid on their own
    (the rest are reported by the schema), so that checks on them can still run."""
    out = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        try:
            out.append((i, validate_strict(model, item)))
        except (ValidationError, TypeError):
            pass
    return out


def _registry_problems(workloads: list[tuple[int, WorkloadConfig]], entries: list[tuple[int, OptimizerEntry]],
                       zero_stage: int) -> list[str]:
    # Imported here so that parsing a config does not import torch-heavy registries needlessly.
    import optimizers
    from bench import data, models
    from optimizers.deepspeed_zero import zero_stage_problems

    problems: list[str] = []
    for i, wl in workloads:
        where = f"workloads[{i}]"
        msg = models.check_spec(wl.model)
        if msg:
            problems.append(f"{where}.model: {msg}")
        else:
            problems.extend(f"{where}.model_args: {m}" for m in models.check_args(wl.model, wl.model_args))
        msg = data.check_spec(wl.dataset)
        if msg:
            problems.append(f"{where}.dataset: {msg}")
        else:
            problems.extend(f"{where}.dataset_args: {m}" for m in data.check_args(wl.dataset, wl.dataset_args))

    for i, entry in entries:
        where = f"optimizers[{i}]"
        msg = optimizers.check_name(entry.name)  # a built-in or a plug-in that loads (optimizers.plugins)
        if msg:
            problems.append(f"{where}.name: {msg}")
            continue
        # Validate the fixed settings with every grid value (and every search-axis bound or value)
        # substituted, so a bad value is reported too.
        for combo in grid_points(entry.grid) + _search_corners(entry.search) or [{}]:
            for m in settings_problems(entry.name, {**entry.settings, **combo}, f"{where}.settings"):
                if m not in problems:
                    problems.append(m)
        # ZeRO compatibility: every optimizer runs at every stage, matrix optimizers through the
        # partition layout (optimizers.deepspeed_zero), with the exceptions that module names.
        for combo in grid_points(entry.grid) + _search_corners(entry.search) or [{}]:
            for m in zero_stage_problems(entry.name, {**entry.settings, **combo}, zero_stage):
                line = f"{where} ({entry.name}): {m}"
                if line not in problems:
                    problems.append(line)
    return problems


def _strict_settings(name: str, settings: dict[str, Any]) -> BaseModel:
    import optimizers

    return validate_strict(optimizers.settings_model(name), settings)


def settings_problems(name: str, settings: dict[str, Any], where: str) -> list[str]:
    """Problems with one optimizer's ``settings`` (empty when valid), from its settings model in
    strict mode: unknown keys (with the allowed ones), types as written, bounds, choices."""
    import optimizers

    try:
        _strict_settings(name, settings)
    except ValidationError as exc:
        allowed = ", ".join(optimizers.settings_model(name).model_fields)
        return pydantic_problems(exc, where, unknown_hint=f"; {name} has the settings {allowed}")
    return []


def resolved_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The validated values of the keys given (``lr: 1`` becomes 1.0, a list of betas stays a
    list): what a trial runs with and what its id hashes. Call after :func:`settings_problems`."""
    return _strict_settings(name, settings).model_dump(mode="json", include=set(settings))


def setting_domain(name: str, key: str) -> dict[str, float]:
    """The values optimizer ``name``'s setting ``key`` can take at all, as ``domain_min`` /
    ``domain_max`` (inclusive; only the ends its settings model states and a value can reach):
    weight decay ``ge=0`` gives ``domain_min`` 0, an integer frequency ``ge=1`` gives 1, an
    ``eps`` with ``gt=0`` gives nothing. Recorded with each trial's search space, so that a report
    can tell a choice at a hard end of the domain (nothing beyond it to search) from one at the
    end of a range the user chose."""
    import annotated_types as at

    import optimizers

    field = optimizers.settings_model(name).model_fields.get(key)
    if field is None:
        return {}
    integer = field.annotation is int
    out: dict[str, float] = {}
    for bound in field.metadata:
        if isinstance(bound, at.Ge):
            out["domain_min"] = bound.ge
        elif isinstance(bound, at.Le):
            out["domain_max"] = bound.le
        elif isinstance(bound, at.Gt) and integer:
            out["domain_min"] = bound.gt + 1
        elif isinstance(bound, at.Lt) and integer:
            out["domain_max"] = bound.lt - 1
    return out


def _search_corners(search: dict[str, SearchDim]) -> list[dict[str, Any]]:
    """One setting per axis extreme (or value), for validating a search space cheaply."""
    out = []
    for key, dim in search.items():
        for value in dim.values if dim.values is not None else [dim.low, dim.high]:
            out.append({k: (value if k == key else _any_value(d)) for k, d in search.items()})
    return out


def _any_value(dim: SearchDim) -> Any:
    return dim.values[0] if dim.values is not None else dim.low


def search_points(search: dict[str, SearchDim], method: str, budget: int, seed: int) -> list[dict[str, Any]]:
    """``budget`` settings from a search space.

    ``halton``: the first ``budget`` points of a scrambled Halton sequence in [0, 1)^d (scipy's
    ``qmc.Halton``, seeded), mapped per axis: linear or log-linear between low and high,
    ``values[floor(u·len)]`` for categorical axes. Quasi-random points cover the space more evenly
    than random ones for the small budgets optimizer comparisons can afford.
    ``grid``: the Cartesian product of the ``values`` axes; it must have exactly ``budget`` points
    so that every optimizer gets the same budget.
    """
    import math

    keys = sorted(search)
    if method == "grid":
        points = grid_points({k: list(search[k].values or []) for k in keys})
        if len(points) != budget:
            raise ValueError(f"the grid has {len(points)} points but tuning.budget is {budget}")
        return points
    from scipy.stats import qmc

    unit = qmc.Halton(d=len(keys), scramble=True, seed=seed).random(budget)
    points = []
    for row in unit:
        point: dict[str, Any] = {}
        for u, key in zip(row, keys, strict=True):
            dim = search[key]
            if dim.values is not None:
                point[key] = dim.values[min(int(u * len(dim.values)), len(dim.values) - 1)]
                continue
            lo, hi = float(dim.low), float(dim.high)  # type: ignore[arg-type]
            value = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if dim.log else lo + u * (hi - lo)
            # Four significant digits: readable labels, and no setting differs below measurability.
            point[key] = int(round(value)) if dim.integer else float(f"{value:.4g}")
        points.append(point)
    return points


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a grid in a stable order (keys sorted, values in the given order)."""
    import itertools

    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
