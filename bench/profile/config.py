"""The profile config: what ``specbench profile`` measures, and how.

Sections (each optional, at least one given): ``profiles`` (the optimizers' per-matrix routes
on model shapes, :mod:`bench.profile.kernels`), ``optimizer_step`` (one whole step of every
optimizer, :mod:`bench.profile.optimizer_step`), ``spectral_step`` (sharded vs redundant at P
ranks), ``collectives`` (the owner sharding's bucketed broadcasts at P ranks),
``probe_overhead`` (the curvature probe against the training step), ``data`` (the input
pipeline: the token cache and background image loaders, :mod:`bench.profile.data`) and ``zero``
(memory per rank and step time at ZeRO stages 0–3, :mod:`bench.profile.zero`).

Pydantic models with ``extra="forbid"`` (a misspelt key is an error) and a description for
every field. :func:`load_profile_config` returns a validated :class:`ProfileConfig` or raises
:class:`ProfileConfigError` carrying *every* problem at once (schema errors plus unknown shape
sets, shape names, methods, optimizers and their settings), so that the CLI can print one list
and exit 2 before anything starts. This module imports neither torch nor Ray, except torch
through ``optimizers.validate_settings`` when an ``optimizer_step`` section is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.problems import ConfigProblems, pydantic_problems
from bench.profile import shapes as shape_sets
from bench.profile.flops import METHODS

#: The optimizers' default bucket size (``optimizers.distributed.DEFAULT_BUCKET_CAP_MB``; repeated
#: so that validating a config does not import torch, a test checks the two agree).
DEFAULT_BUCKET_CAP_MB = 25.0


class ProfileConfigError(ConfigProblems):
    """Every problem of a profile config file (``problems``), rendered one per line."""

    kind = "profile config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomShape(_Strict):
    """A matrix shape given explicitly (tests, one-off measurements)."""

    name: str = Field(..., description="label of the shape")
    m: int = Field(..., gt=0, description="rows (output side)")
    n: int = Field(..., gt=0, description="columns (input side)")
    count: int = Field(1, gt=0, description="matrices of this shape in the (custom) model")


class ProfileEntry(_Strict):
    """One group of measurements: shapes × methods × dtypes."""

    shape_sets: list[str] = Field(
        default_factory=list, description=f"named shape sets ({', '.join(shape_sets.available())})"
    )
    shapes: list[str] | None = Field(
        None, description="keep only these shape names of the sets (the `name` column of "
        "`python -m bench.profile.shapes`); null keeps all"
    )
    custom_shapes: list[CustomShape] = Field(default_factory=list, description="extra explicit shapes")
    methods: list[str] = Field(..., min_length=1, description=f"the optimizers' routes to time ({', '.join(METHODS)}; "
                               "'all'): Spectral Newton's svd, gram, solve, polar and Muon's ns5")
    dtypes: list[Literal["fp32", "bf16"]] = Field(
        default_factory=lambda: ["fp32"], description="input dtypes; Spectral Newton's routes upcast bf16 to fp32, "
        "ns5 runs in it (Muon's ns_dtype)"
    )
    batch: int = Field(1, gt=0, description="matrices per call (a batched call over a count)")
    max_elements: int | None = Field(
        None, gt=0, description="skip shapes with more than this many entries (m·n); null: no limit"
    )
    max_call_seconds: float | None = Field(
        None, gt=0, description="override of the top-level max_call_seconds for this entry"
    )

    def method_list(self) -> list[str]:
        """``methods`` with ``all`` expanded, order kept, duplicates dropped."""
        out: list[str] = []
        for m in self.methods:
            for x in (METHODS if m == "all" else (m,)):
                if x not in out:
                    out.append(x)
        return out


class ProfileResources(_Strict):
    """What each per-node measurement job asks of Ray."""

    num_cpus: float = Field(1.0, gt=0, description="CPUs per job (the job's torch threads default to this)")
    num_gpus: float = Field(1.0, ge=0, description="GPUs per job on nodes that have GPUs (0: CPU only)")


class StepOptimizer(_Strict):
    """One optimizer of the optimizer-step comparison (the sweep config's optimizer entry)."""

    name: str = Field(..., description="registry name (optimizers.available())")
    settings: dict[str, Any] = Field(default_factory=dict, description="settings, as in a sweep config")
    label: str | None = Field(None, description="row label (default: the name, plus the settings in brackets)")

    def display(self) -> str:
        if self.label:
            return self.label
        if not self.settings:
            return self.name
        return f"{self.name}[{','.join(f'{k}={v}' for k, v in self.settings.items())}]"


def _default_step_optimizers() -> list[StepOptimizer]:
    return [StepOptimizer(name="adamw"),
            *(StepOptimizer(name="spectral_newton", settings={"method": m}, label=f"spectral_newton[{m}]")
              for m in ("svd", "gram", "solve", "polar")),
            StepOptimizer(name="muon"), StepOptimizer(name="shampoo"), StepOptimizer(name="soap")]


class OptimizerStepConfig(_Strict):
    """One whole ``optimizer.step()`` of every optimizer on a model's parameters
    (:mod:`bench.profile.optimizer_step`), interleaved, relative to a baseline in the same job."""

    models: list[str] = Field(default_factory=lambda: ["resnet18", "vit-tiny", "gpt2-small"], min_length=1,
                              description="catalogue models that can be instantiated (timm and GPT-2 sets)")
    blocks: int | None = Field(1, gt=0, description="GPT-2 models: only this many transformer blocks (their "
                               "matrices, biases and norms; no embeddings or head); null: the whole model")
    dim: int | None = Field(None, gt=0, description="GPT-2 models: width override (tests); null: the model's")
    optimizers: list[StepOptimizer] = Field(default_factory=_default_step_optimizers, min_length=1,
                                            description="optimizers to step, with their settings")
    baseline: str = Field("adamw", description="label every step is divided by (ratio_to_baseline)")
    reference: str | None = Field("muon", description="label the Spectral Newton methods are compared with")
    repeats: int = Field(4, ge=2, description="timed steps per optimizer (the median is reported); Shampoo "
                         "and SOAP alternate regular and refresh steps, half each")
    warmup: int = Field(2, ge=1, description="untimed steps first (state creation, first preconditioner)")
    threads: int = Field(1, gt=0, description="torch threads of the job")


class CollectivesConfig(_Strict):
    """The owner sharding's bucketed broadcasts (:mod:`bench.profile.collectives`) at P ranks: the
    points the cost model's communication constants are fitted on, and a whole model's sync as
    the check of the fit."""

    ranks: list[int] = Field(default_factory=lambda: [2, 4], min_length=1,
                             description="process-group sizes P (each a Ray Train worker group of P workers)")
    sizes_mb: list[float] = Field(default_factory=lambda: [0.0625, 0.25, 1.0, 4.0, 16.0, 64.0], min_length=2,
                                  description="payload of one broadcast bucket, MiB")
    model_blocks: int = Field(4, ge=0, description="also sync the matrices of this many GPT-2 blocks with the "
                              "optimizers' bucket plan (the check; 0: none)")
    model_dim: int = Field(768, gt=0, description="width of those blocks (768: GPT-2 small)")
    bucket_cap_mb: float = Field(DEFAULT_BUCKET_CAP_MB, gt=0, description="bucket size of the model sync (the "
                                 "optimizers' default)")
    repeats: int = Field(7, gt=0, description="timed syncs per size (the median is reported)")
    warmup: int = Field(2, ge=1, description="untimed syncs first")
    cpus_per_rank: float = Field(0.45, gt=0, description="Ray CPUs per worker (CPU runs)")
    threads_per_rank: int = Field(1, gt=0, description="torch threads per CPU worker")


class ZeroModel(_Strict):
    """A GPT-2-shaped model of the ZeRO benchmark: GPT-2's embedding, head and block shapes at
    width ``dim``, ``blocks`` of its blocks (``full_blocks`` of the real model: the analysis
    extrapolates per block)."""

    label: str = Field(..., min_length=1, description="row label, e.g. gpt2-124m or gpt-1.3b")
    blocks: int = Field(2, gt=0, description="transformer blocks instantiated")
    full_blocks: int = Field(12, gt=0, description="blocks of the real model (GPT-2-124M: 12; 1.3B: 24)")
    dim: int = Field(768, gt=0, description="model width")
    heads: int = Field(12, gt=0, description="attention heads (must divide dim)")
    vocab: int = Field(50257, gt=0, description="vocabulary size (GPT-2's)")
    seq_len: int = Field(64, gt=0, description="tokens per sample (one sample per rank and step)")
    ranks: list[int] | None = Field(None, description="process-group sizes P for this model (null: the section's)")
    optimizers: list[str] | None = Field(None, description="labels of the section's optimizers to run (null: all)")


class ZeroConfig(_Strict):
    """Memory per rank and step time at ZeRO stages 0–3 (`bench.profile.zero`): the DeepSpeed engine
    a trial builds, on P gloo ranks in processes the job starts."""

    models: list[ZeroModel] = Field(default_factory=lambda: [ZeroModel(label="gpt2-124m")], min_length=1,
                                    description="GPT-2-shaped models")
    ranks: list[int] = Field(default_factory=lambda: [2], min_length=1, description="process-group sizes P")
    stages: list[Literal[0, 1, 2, 3]] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1,
                                              description="ZeRO stages (0 is the ratio's base: keep it)")
    optimizers: list[StepOptimizer] = Field(
        default_factory=lambda: [StepOptimizer(name=n) for n in ("adamw", "muon", "muon_deepspeed",
                                                                  "spectral_newton")],
        min_length=1, description="optimizers with their settings")
    repeats: int = Field(4, gt=0, description="timed training steps per case (the median is reported)")
    warmup: int = Field(2, ge=1, description="untimed steps first (state creation, buffers)")
    threads: int = Field(1, gt=0, description="torch threads per rank")


class SpectralStepConfig(_Strict):
    """The distributed spectral step (`bench.profile.spectral_step`): sharded vs redundant at P ranks."""

    ranks: list[int] = Field(default_factory=lambda: [1, 2], min_length=1, description="process-group sizes P "
                             "to measure (each a Ray Train worker group of P workers)")
    blocks: int = Field(12, gt=0, description="GPT-2 transformer blocks whose matrices are stepped (12: GPT-2 small)")
    dim: int = Field(768, gt=0, description="model width of the blocks (768: GPT-2 small)")
    method: Literal["solve", "gram", "svd", "polar"] = Field("solve", description="Spectral Newton's method")
    repeats: int = Field(5, gt=0, description="timed steps per distribution (the median is reported)")
    warmup: int = Field(2, ge=1, description="untimed steps first (state creation, allocator growth)")
    cpus_per_rank: float = Field(1.0, gt=0, description="Ray CPUs per worker (CPU runs)")
    threads_per_rank: int = Field(1, gt=0, description="torch threads per CPU worker")


class ProbeOverheadConfig(_Strict):
    """Φ_k-estimation overhead against the training step (`bench.profile.probe_overhead`)."""

    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1,
                              description="d_model of the built-in transformer, varied at the default batch and K")
    probe_batches: list[int] = Field(default_factory=lambda: [256, 1024, 2048], min_length=1,
                                     description="probe batch sizes, varied at the default width and K")
    top_ks: list[int] = Field(default_factory=lambda: [5, 10, 20], min_length=1,
                              description="directions K per layer, varied at the default width and batch")
    modes: list[Literal["full", "kronecker", "online"]] = Field(
        default_factory=lambda: ["full"], min_length=1, description="probe modes to measure at every point "
        "(online: the probe batch is the training batch, so not along the probe-batch axis)")
    hvp_methods: list[Literal["auto", "fwd_rev", "batched", "loop"]] = Field(
        default_factory=lambda: ["auto"], min_length=1, description="mode full: exact HVP methods, the first at "
        "every point, all of them at the default point")
    repeats: int = Field(3, gt=0, description="probes per measurement of the modes other than full (median)")
    default_width: int = Field(64, gt=0, description="width of the default point (the built-in transformer's)")
    default_probe_batch: int = Field(2048, gt=0, description="probe batch of the default point (the probe's default)")
    default_top_k: int = Field(20, gt=0, description="K of the default point (the probe's default)")
    n_layer: int = Field(2, gt=0, description="transformer blocks")
    n_head: int = Field(4, gt=0, description="attention heads (must divide every width)")
    seq_len: int = Field(64, gt=0, description="tokens per sample")
    train_batch: int = Field(32, gt=0, description="samples per training step")
    interval: int = Field(100, gt=0, description="probe interval (steps) for the amortised overhead")
    steps: int = Field(10, gt=0, description="timed training steps before and after each probe")
    warmup: int = Field(3, ge=0, description="untimed training steps first")
    max_bytes: int = Field(400_000, gt=0, description="size of the builtin:text corpus the batches come from")
    threads: int = Field(1, gt=0, description="torch threads of the job")


class DataCorpus(_Strict):
    """One text corpus of the data benchmark: a dataset spec, or a local corpus generated for the
    benchmark (``generate_mb``) in a temporary directory and deleted after."""

    dataset: str | None = Field(None, description="dataset spec (builtin:text, a local file, hf:…); "
                                "null with generate_mb")
    generate_mb: float | None = Field(None, gt=0, description="generate a JSON-lines corpus of this many MiB "
                                      "of text (never committed; deleted after)")
    dataset_args: dict[str, Any] = Field(default_factory=dict, description="dataset arguments (seq_len, tokenizer…)")


class DataImagesConfig(_Strict):
    """The image input pipeline against a timm model's step rate, on an image set of PNG files
    written for the benchmark (an imagefolder directory read through ``hf:<dir>``)."""

    count: int = Field(1024, gt=0, description="images written")
    size: int = Field(64, gt=0, description="side of each square RGB image, pixels")
    classes: int = Field(10, gt=1, description="class folders")
    model: str = Field("timm:resnet18", description="the model whose step rate the pipeline is compared with")
    micro_batch: int = Field(32, gt=0, description="samples per step")
    steps: int = Field(20, gt=0, description="timed steps per setting (after warmup)")
    warmup: int = Field(3, ge=0, description="untimed steps first (worker start-up, allocator)")
    workers: list[int] = Field(default_factory=lambda: [0, 2], min_length=1,
                               description="background loader workers to compare (0: decoding in the loop)")


class DataConfig(_Strict):
    """The input pipeline (`bench.profile.data`): time to the first training step and peak memory per
    rank with and without the token cache, and image decoding against a model's step rate."""

    corpora: list[DataCorpus] = Field(default_factory=lambda: [DataCorpus(dataset="builtin:text")],
                                      description="text corpora to load with and without the token cache")
    ranks: int = Field(2, gt=0, description="rank processes that load each corpus at once (a process group)")
    model: str = Field("builtin:transformer", description="model trained for the first step")
    model_args: dict[str, Any] = Field(default_factory=lambda: {"d_model": 64, "n_layer": 2, "n_head": 4},
                                       description="its arguments")
    micro_batch: int = Field(8, gt=0, description="samples in the first step")
    tokenize_workers: int | None = Field(None, gt=0, description="processes building a cache entry (default: CPUs)")
    images: DataImagesConfig | None = Field(None, description="also measure the image input pipeline")
    threads: int = Field(1, gt=0, description="torch threads per rank")


class ProfileConfig(_Strict):
    """A kernel profile: measured once per Ray node (or once by ``python -m bench.profile.runner``)."""

    name: str = Field("profile", min_length=1, description="results go to <storage>/<name>/trials/<job_id>/")
    storage: str = Field("results", description="results root directory")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (null: resources.num_cpus, at least 1)")
    repeats: int = Field(5, gt=0, description="timed calls per kernel (the median is reported)")
    warmup: int = Field(1, ge=1, description="untimed calls before timing (the first also measures memory)")
    damping: float = Field(0.1, ge=0, description="d of T(σ; α) = σ/(σ^α + d) in Spectral Newton's routes")
    matrix: Literal["gaussian", "power_law"] = Field(
        "gaussian", description="test matrices: i.i.d. Gaussian, or a σ_i = 1/i spectrum (gradient-like)"
    )
    seed: int = Field(0, description="seed of the test matrices")
    float32_matmul_precision: Literal["highest", "high", "medium"] = Field(
        "highest", description="torch.set_float32_matmul_precision (high: TF32 on NVIDIA GPUs)"
    )
    max_call_seconds: float = Field(
        60.0, gt=0, description="skip a kernel whose single call is predicted (from smaller shapes of the same "
        "method) to take longer than this"
    )
    max_kernel_seconds: float = Field(
        20.0, gt=0, description="cap on the timed calls of one kernel: fewer repeats when a call is slow"
    )
    min_kernel_seconds: float = Field(
        0.3, ge=0, description="cheap kernels are timed several times per round until about this many seconds "
        "of calls are timed (a steadier median on a shared machine)"
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="stop measuring after this many seconds per job (the rest is recorded as skipped)"
    )
    flush_every_s: float = Field(30.0, gt=0, description="rewrite the partial Parquet file this often")
    shape_source: Literal["auto", "derived", "frozen"] = Field(
        "auto", description="timm/GPT-2 shapes: derive by instantiation (auto falls back to the frozen copy)"
    )
    catalog_models: list[str] = Field(
        default_factory=shape_sets.available, description="models whose shape counts are written as "
        "op=shape rows (the cost model's whole-model predictions use them)"
    )
    resources: ProfileResources = Field(default_factory=ProfileResources)
    profiles: list[ProfileEntry] = Field(default_factory=list, description="groups of kernel measurements")
    optimizer_step: OptimizerStepConfig | None = Field(
        None, description="also time one whole step of every optimizer (relative to AdamW, and to Muon)"
    )
    spectral_step: SpectralStepConfig | None = Field(
        None, description="also time the sharded vs redundant Spectral Newton step at each P"
    )
    collectives: CollectivesConfig | None = Field(
        None, description="also time the owner sharding's bucketed broadcasts at each P (communication constants)"
    )
    probe_overhead: ProbeOverheadConfig | None = Field(
        None, description="also measure the curvature probe's cost against the training step"
    )
    data: DataConfig | None = Field(
        None, description="also measure the input pipeline: token cache vs in-memory tokenization, image loaders"
    )
    zero: ZeroConfig | None = Field(
        None, description="also measure memory per rank and step time at ZeRO stages 0-3 (own process groups)"
    )


def semantic_problems(cfg: ProfileConfig) -> list[str]:
    """Problems pydantic cannot see: unknown names, entries that select nothing."""
    problems: list[str] = []
    sections = (cfg.profiles, cfg.optimizer_step, cfg.spectral_step, cfg.collectives, cfg.probe_overhead, cfg.data,
                cfg.zero)
    if not any(sections):
        problems.append("nothing to measure: give profiles, optimizer_step, spectral_step, collectives, "
                        "probe_overhead, data or zero")
    if cfg.zero is not None:
        problems += _zero_problems(cfg.zero)
    if cfg.data is not None:
        for i, corpus in enumerate(cfg.data.corpora):
            if (corpus.dataset is None) == (corpus.generate_mb is None):
                problems.append(f"data.corpora.{i}: give exactly one of dataset and generate_mb")
    if cfg.optimizer_step is not None:
        problems += _optimizer_step_problems(cfg.optimizer_step)
    if cfg.collectives is not None and min(cfg.collectives.ranks) < 2:
        problems.append("collectives.ranks: every P must be at least 2 (one rank communicates nothing)")
    if cfg.probe_overhead is not None:
        po = cfg.probe_overhead
        bad = sorted({w for w in [*po.widths, po.default_width] if w % po.n_head})
        if bad:
            problems.append(f"probe_overhead.widths: {bad} not divisible by n_head {po.n_head}")
    known = set(shape_sets.available())
    for name in cfg.catalog_models:
        if name not in known:
            problems.append(f"catalog_models: unknown shape set {name!r}")
    for i, entry in enumerate(cfg.profiles):
        where = f"profiles.{i}"
        for name in entry.shape_sets:
            if name not in known:
                problems.append(f"{where}.shape_sets: unknown shape set {name!r}; known: {', '.join(sorted(known))}")
        for method in entry.methods:
            if method != "all" and method not in METHODS:
                problems.append(f"{where}.methods: unknown method {method!r}; known: {', '.join(METHODS)}, all")
        if not entry.shape_sets and not entry.custom_shapes:
            problems.append(f"{where}: give shape_sets or custom_shapes")
        if entry.shapes is not None and all(n in known for n in entry.shape_sets):
            # Names are checked against the frozen/config copies: no timm import needed here.
            names = {s.name for n in entry.shape_sets for s in _static(n).shapes}
            for s in entry.shapes:
                if s not in names:
                    problems.append(f"{where}.shapes: {s!r} is not a shape of {', '.join(entry.shape_sets)}")
    return problems


def _optimizer_step_problems(cfg: OptimizerStepConfig) -> list[str]:
    """Unknown or non-instantiable models, unknown optimizers or settings, duplicate labels and a
    baseline or reference that is not among the labels."""
    problems = []
    for name in cfg.models:
        if name not in shape_sets.INSTANTIABLE:
            problems.append(f"optimizer_step.models: {name!r} cannot be instantiated here; "
                            f"use one of {', '.join(shape_sets.INSTANTIABLE)}")
    labels = [o.display() for o in cfg.optimizers]
    problems += _entry_problems("optimizer_step.optimizers", cfg.optimizers)
    if len(set(labels)) != len(labels):
        problems.append(f"optimizer_step.optimizers: labels must be unique (got {', '.join(labels)})")
    for key in ("baseline", "reference"):
        value = getattr(cfg, key)
        if value is not None and value not in labels:
            problems.append(f"optimizer_step.{key}: {value!r} is not one of the labels {', '.join(labels)}")
    return problems


def _entry_problems(where: str, entries: list[StepOptimizer]) -> list[str]:
    """Unknown optimizer names and invalid settings of ``entries`` (``where``: their config path)."""
    import optimizers  # imports torch: only when a section needs it

    problems = []
    for i, entry in enumerate(entries):
        if entry.name not in optimizers.available():
            problems.append(f"{where}.{i}.name: unknown optimizer {entry.name!r}; "
                            f"known: {', '.join(optimizers.available())}")
            continue
        problems += [f"{where}.{i}.settings: {p}" for p in optimizers.validate_settings(entry.name, entry.settings)]
    return problems


def _zero_problems(cfg: ZeroConfig) -> list[str]:
    """Unknown optimizers or settings, combinations a trial would refuse, heads not dividing the width,
    no ZeRO-0 base for the ratio."""
    import optimizers
    from optimizers.deepspeed_zero import zero_stage_problems

    problems = _entry_problems("zero.optimizers", cfg.optimizers)
    if 0 not in cfg.stages:
        problems.append("zero.stages: include 0 (every step time is reported relative to ZeRO-0)")
    labels = [o.display() for o in cfg.optimizers]
    for i, entry in enumerate(cfg.optimizers):
        for stage in cfg.stages if entry.name in optimizers.available() else []:
            problems += [f"zero.optimizers.{i} at stage {stage}: {p}"
                         for p in zero_stage_problems(entry.name, entry.settings, stage)]
    for i, m in enumerate(cfg.models):
        if m.dim % m.heads:
            problems.append(f"zero.models.{i}: heads {m.heads} do not divide dim {m.dim}")
        for name in m.optimizers or []:
            if name not in labels:
                problems.append(f"zero.models.{i}.optimizers: {name!r} is not one of {', '.join(labels)}")
        if any(p < 1 for p in m.ranks or cfg.ranks):
            problems.append(f"zero.models.{i}.ranks: every P must be at least 1")
    if any(p < 1 for p in cfg.ranks):
        problems.append("zero.ranks: every P must be at least 1")
    return problems


def _static(name: str) -> shape_sets.ShapeSet:
    return shape_sets.get(name, "frozen")


def parse_profile_config(
    raw: Any, source: str = "<config>", overrides: dict[str, Any] | None = None
) -> ProfileConfig:
    """Validate a loaded YAML document plus CLI overrides (``storage``, ``name``; None ignored)."""
    if not isinstance(raw, dict):
        raise ProfileConfigError(source, ["the file must be a YAML mapping (key: value) at the top level"])
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        cfg = ProfileConfig.model_validate(raw)
    except ValidationError as exc:
        raise ProfileConfigError(source, pydantic_problems(exc)) from None
    problems = semantic_problems(cfg)
    if problems:
        raise ProfileConfigError(source, problems)
    return cfg


def load_profile_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ProfileConfig:
    """Read and validate a profile YAML file; :class:`ProfileConfigError` lists every problem."""
    from bench import yaml_config

    try:
        raw, duplicates = yaml_config.load(path)  # the sweep files' YAML rules: 1.2 numbers, no duplicate keys
    except yaml_config.YamlProblems as exc:
        raise ProfileConfigError(str(path), exc.problems) from None
    try:
        cfg = parse_profile_config(raw, str(path), overrides)
    except ProfileConfigError as exc:
        raise ProfileConfigError(str(path), [*duplicates, *exc.problems]) from None
    if duplicates:
        raise ProfileConfigError(str(path), duplicates)
    return cfg
