"""Parquet schema of the result tables (DESIGN.md "Results").

Every file carries ``SCHEMA_VERSION`` twice: as a ``schema_version`` column and in the Parquet
key-value metadata (``specbench.schema_version``), so a reader can refuse a file of another
version before it reads a single row. Columns are listed here once; the README's "Parquet schema"
section documents their meaning.

Versioning rule: any change to a table below (a column added, removed, renamed or retyped, or a
column's meaning changed) bumps ``SCHEMA_VERSION``, updates :data:`REQUIRED` when it concerns an
identifying column, and extends :mod:`bench.results.upgrade`. The reader (``analysis.dataset``)
duplicates the version and :data:`REQUIRED` — analysis never imports bench — and a test checks
that the two sides agree.

History:

- 1: ``runs``, ``steps``, ``curvature``, ``profile``; ``layer_fits`` written without a
  declaration or a ``schema_version`` column. Columns were added to ``runs`` under this number
  (``optimizer_entry``, ``tuning_index``, ``search_space``, the ``median_*`` throughput
  columns...), so a version-1 file may lack any of them.
- 2: the same columns, now guaranteed: every declared column is in every file (null where a
  value was not measured), every :data:`REQUIRED` column is present and non-null, and
  ``layer_fits`` is declared here (:data:`LAYER_FITS`) and carries the version like the others.
- 3: the probe's modes (issue 14). ``runs``: ``probe_mode``, ``alpha_source``,
  ``measured_alpha_json``; ``curvature``: ``probe_mode``, ``h_samples``, ``alpha_lo``,
  ``alpha_hi``, ``term_scale``, ``lambda_delta_bound``, ``lambda_A_bound``; ``layer_fits``:
  ``probe_mode``, ``alpha_lo``, ``alpha_hi``; ``profile``: ``probe_mode``. Every probe before
  version 3 was mode ``full``, which the upgrade writes into the curvature and layer_fits rows
  and the ``curvature_probe`` profile rows (``bench.results.upgrade._from_v2``).
  Also the input pipeline (issue 19): ``steps.data_time_s`` (seconds per step the loop waited
  for input, inside ``step_time_s``) and ``runs.data_cache_key`` (the token-cache entry a trial
  read its corpus from, ``""`` when it tokenized in memory or its data is not a text corpus);
  a file upgraded from 2 holds nulls there (not measured).
- 4: ``runs.tuning_stage``, required: 0 for a sweep without the two-stage tuning protocol
  (every earlier file), 1 for its screening stage, 2 for its finalists
  (``bench.config.TuningConfig``; issue 16).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 4
METADATA_KEY = b"specbench.schema_version"

#: One row per trial. ``config.*`` columns (the flattened resolved trial config) are added
#: dynamically next to these fixed columns.
RUNS = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("sweep_name", pa.string()),
        ("trial_id", pa.string()),
        ("trial_index", pa.int32()),
        ("optimizer", pa.string()),
        ("optimizer_label", pa.string()),
        ("optimizer_entry", pa.string()),  # the config entry (label or name): the unit compared
        ("optimizer_settings", pa.string()),  # JSON of the resolved settings
        ("tuning_index", pa.int32()),  # setting index within the tuning budget; -1 without tuning
        ("search_space", pa.string()),  # JSON of the optimizer's search space ('{}' without tuning)
        ("tuning_stage", pa.int32()),  # 0 one stage; 1 screening (one seed); 2 finalists (fresh seeds)
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("task", pa.string()),  # classification | lm
        ("metric_name", pa.string()),  # accuracy | perplexity
        ("metric_goal", pa.string()),  # max | min
        ("world_size", pa.int32()),
        ("seed_index", pa.int32()),
        ("seed", pa.int64()),
        ("status", pa.string()),  # completed | diverged | failed
        ("error", pa.string()),
        ("steps_completed", pa.int64()),
        ("samples_seen", pa.int64()),
        ("tokens_seen", pa.int64()),
        ("final_train_loss", pa.float64()),
        ("final_eval_loss", pa.float64()),
        ("final_eval_metric", pa.float64()),
        ("best_eval_metric", pa.float64()),
        ("best_step", pa.int64()),
        ("test_loss", pa.float64()),
        ("test_metric", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("median_step_time_s", pa.float64()),
        ("median_samples_per_s", pa.float64()),  # at the median step time
        ("median_tokens_per_s", pa.float64()),  # LM tasks; NaN otherwise
        ("median_model_flops_per_s", pa.float64()),  # per device
        ("median_mfu", pa.float64()),
        ("model_flops_per_sample", pa.float64()),  # one forward + backward, counted by torch
        ("peak_flops_per_s", pa.float64()),  # the MFU denominator, per device
        ("peak_flops_source", pa.string()),  # config | datasheet:<GPU> | measured-matmul
        ("resumed_from_step", pa.int64()),
        ("probe_unsupported_json", pa.string()),  # layers the curvature probe could not (fully) measure
        ("probe_mode", pa.string()),  # full | kronecker | online; '' without probes
        ("alpha_source", pa.string()),  # exact | kronecker: the fit a measured-α optimizer takes; '' without probes
        ("measured_alpha_json", pa.string()),  # per probe and parameter: α set, or skipped with the reason
        ("num_parameters", pa.int64()),
        ("data_cache_key", pa.string()),  # token-cache entry of the corpus (bench/data/cache.py); "" when none
        ("started_at", pa.string()),
        ("finished_at", pa.string()),
        ("config_hash", pa.string()),
        ("config_json", pa.string()),
        ("versions_json", pa.string()),
        ("git_commit", pa.string()),
        ("hardware_json", pa.string()),
    ]
)

#: One row per logged optimizer step. ``opt_*`` columns (the optimizer's own step metrics, e.g.
#: ``opt_spectral_time_s``, ``opt_fallbacks``) are added dynamically.
STEPS = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("trial_id", pa.string()),
        ("step", pa.int64()),
        ("samples_seen", pa.int64()),
        ("tokens_seen", pa.int64()),
        ("wall_time_s", pa.float64()),
        ("lr", pa.float64()),
        ("train_loss", pa.float64()),
        ("eval_loss", pa.float64()),
        ("eval_metric", pa.float64()),
        ("step_time_s", pa.float64()),
        ("fwd_bwd_time_s", pa.float64()),
        ("optimizer_time_s", pa.float64()),
        ("comm_time_s", pa.float64()),
        ("data_time_s", pa.float64()),  # waiting for input (inside step_time_s): what prefetching leaves
        ("probe_time_s", pa.float64()),
        ("samples_per_s", pa.float64()),  # global batch / mean step time of the interval
        ("tokens_per_s", pa.float64()),  # LM tasks; NaN otherwise
        ("model_flops_per_s", pa.float64()),  # per device: model FLOPs of a step / step time / ranks
        ("mfu", pa.float64()),  # model_flops_per_s / runs.peak_flops_per_s
    ]
)

#: One row per measurement of the estimation-cost profiler (``bench.profile``) and of the
#: curvature probe's phases. ``op`` says which: ``kernel`` (one optimizer route on one shape,
#: ``bench.profile.kernels.measure_kernel``), ``shape`` (catalogue: a model's shapes with counts
#: and per-method FLOPs, for whole-model predictions), ``optimizer_step`` (one whole step of an
#: optimizer), ``collective`` (the owner sharding's broadcasts, ``bytes`` moved),
#: ``spectral_step``, ``probe_overhead`` or ``curvature_probe`` (a probe phase, ``bench.probes``).
#: Other columns (``labels``, ``predicted_seconds``, ``bucket_bytes``…) are added dynamically.
PROFILE = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("sweep_name", pa.string()),
        ("trial_id", pa.string()),  # the measurement job id (one per node) or the training trial
        ("step", pa.int64()),  # training step of a probe row; null for profiler rows
        ("op", pa.string()),  # kernel | shape | optimizer_step | collective | spectral_step | probe_overhead | curvature_probe
        ("phase", pa.string()),
        ("method", pa.string()),  # the optimizers' routes: svd, gram, solve, polar (Spectral Newton), ns5 (Muon)
        ("status", pa.string()),  # ok | error | unsupported | skipped | catalog
        ("error", pa.string()),
        ("model", pa.string()),  # op=shape: the model the catalogue row belongs to
        ("shape_set", pa.string()),
        ("shape_name", pa.string()),
        ("layer", pa.string()),
        ("layer_type", pa.string()),
        ("shape", pa.string()),  # "m x n" as "768x2304"
        ("shape_m", pa.int64()),
        ("shape_n", pa.int64()),
        ("k", pa.int64()),
        ("count", pa.int64()),  # matrices of this shape in the model
        ("batch", pa.int64()),  # matrices per timed call
        ("dtype", pa.string()),  # input dtype (fp32 | bf16)
        ("compute_dtype", pa.string()),  # what the arithmetic ran in (decompositions upcast bf16)
        ("upcast", pa.bool_()),
        ("device", pa.string()),  # cpu | cuda
        ("device_name", pa.string()),
        ("node_id", pa.string()),
        ("hostname", pa.string()),
        ("ranks", pa.int32()),
        ("threads", pa.int32()),
        ("repeats", pa.int32()),
        ("warmup", pa.int32()),
        ("seconds", pa.float64()),  # median of the timed calls (probe rows: the phase's time)
        ("seconds_min", pa.float64()),
        ("seconds_p25", pa.float64()),
        ("seconds_p75", pa.float64()),
        ("flops", pa.float64()),  # closed form, bench.profile.flops
        ("flops_per_s", pa.float64()),
        ("ceiling_seconds", pa.float64()),  # same-size matmul, same job
        ("ceiling_flops_per_s", pa.float64()),
        ("efficiency", pa.float64()),  # flops_per_s / ceiling_flops_per_s
        ("peak_memory_bytes", pa.float64()),
        ("memory_kind", pa.string()),  # cuda_max_allocated_delta | analytic_workspace | cpu_peak_rss_growth
        ("workspace_bytes", pa.float64()),  # analytic estimate, every device
        ("bytes", pa.float64()),  # op=collective: payload bytes
        ("ns_steps", pa.int32()),
        ("top_k", pa.int32()),
        ("niter", pa.int32()),
        ("torch_version", pa.string()),
        ("started_at", pa.string()),
        ("probe_mode", pa.string()),  # op=curvature_probe / probe_overhead: full | kronecker | online
    ]
)

#: One row per (trial, probe step, layer, k): docs/science/quantities.md#the-curvature-table quantities from bench/probes. Rows with
#: k beyond the probe's top_k (kept for wider γ fits) carry only ``sigma``.
CURVATURE = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("trial_id", pa.string()),
        ("step", pa.int64()),
        ("layer", pa.string()),
        ("layer_type", pa.string()),
        ("module", pa.string()),
        ("depth", pa.int64()),
        ("shape_m", pa.int64()),
        ("shape_n", pa.int64()),
        ("k", pa.int64()),
        *[
            (name, pa.float64())
            for name in (
                "sigma", "h", "h_kron", "rho_delta", "rho_A", "phi", "lambda_delta", "lambda_A", "lam",
                "chi", "concentration", "samples", "loss_terms", "positions", "grad_check",
            )
        ],
        ("probe_mode", pa.string()),  # full | kronecker | online
        *[
            (name, pa.float64())
            for name in (
                "h_samples",  # samples behind h (the probe batch or its h_samples sub-sample); NaN without h
                "alpha_lo", "alpha_hi",  # 95 % bootstrap interval of the layer's α (per layer)
                "term_scale",  # S = Σ_r ‖δ_r‖‖a_r‖ / N, the scale of the rank cutoff (per layer)
                "lambda_delta_bound", "lambda_A_bound",  # 0 ≤ λ_k − lambda_k ≤ bound (sketched factors)
            )
        ],
    ]
)

#: One row per (trial, probe step, layer): the fits of docs/science/fits.md computed from that layer's
#: ``curvature`` rows by ``analysis.curvature.layer_fits_from_curvature`` (column meanings: the
#: README's "Parquet schema"). Written by the report/train/probe commands, not by the trial.
LAYER_FITS = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("sweep_name", pa.string()),
        ("trial_id", pa.string()),
        ("step", pa.int64()),
        ("layer", pa.string()),
        ("layer_type", pa.string()),
        ("depth", pa.int64()),
        ("module", pa.string()),
        ("shape_m", pa.int64()),
        ("shape_n", pa.int64()),
        *[(name, pa.float64()) for name in (
            "alpha", "r2_alpha", "gamma", "r2_gamma", "s", "r2_s", "transfer_error", "pr_h", "pr_grad",
            "zeta_bound",
        )],
        ("n_positive", pa.int64()),  # positive h_k in the α window (a fit needs 5)
        ("reason", pa.string()),  # why α is missing; empty when fitted
        ("bic_winner", pa.string()),  # power_law | exponential | lognormal: the σ_k decay by BIC
        ("p_h", pa.float64()),  # the exponent the ζ bound is evaluated at
        ("alpha_intercept", pa.float64()),
        *[(name, pa.float64()) for name in (
            "alpha_kron", "r2_alpha_kron", "beta", "r2_beta", "phi", "r2_phi", "chi_slope", "r2_chi",
            "theorem1_residual", "kron_identity_error",
        )],
        ("n_decomp", pa.int64()),
        ("decomp_reason", pa.string()),
        ("n_directions", pa.int64()),
        ("n_sigma", pa.int64()),
        ("sample_count", pa.float64()),
        ("probe_mode", pa.string()),  # the mode of the curvature rows the fits come from
        ("alpha_lo", pa.float64()),  # the probe's 95 % bootstrap interval of α
        ("alpha_hi", pa.float64()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "runs": RUNS, "steps": STEPS, "curvature": CURVATURE, "layer_fits": LAYER_FITS, "profile": PROFILE,
}  # fmt: skip

#: Columns every file of a table must hold, non-null, at this version: what identifies a row and
#: says how to read it (the comparison's unit, the metric's direction, the seed). A reader relies
#: on them without a fallback; other declared columns may be null (not measured).
REQUIRED: dict[str, tuple[str, ...]] = {
    "runs": (
        "sweep_name", "trial_id", "optimizer", "optimizer_label", "optimizer_entry", "tuning_index",
        "tuning_stage", "model", "dataset", "task", "metric_name", "metric_goal", "seed_index", "status",
    ),
    "steps": ("trial_id", "step"),
    "curvature": ("trial_id", "step", "layer", "layer_type", "k"),
    "layer_fits": ("sweep_name", "trial_id", "step", "layer", "layer_type"),
    "profile": ("op",),
}  # fmt: skip
