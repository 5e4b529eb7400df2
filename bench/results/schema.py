"""Parquet schema of the result tables (DESIGN.md "Results").

Every file carries ``SCHEMA_VERSION`` twice: as a ``schema_version`` column and in the Parquet
key-value metadata (``specbench.schema_version``), so a reader can refuse a newer dataset before
it reads a single row. Columns are listed here once; the README's "Parquet schema" section
documents their meaning.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
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
        ("optimizer_settings", pa.string()),  # JSON of the resolved settings
        ("tuning_index", pa.int32()),  # setting index within the tuning budget; -1 without tuning
        ("search_space", pa.string()),  # JSON of the optimizer's search space ('{}' without tuning)
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
        ("resumed_from_step", pa.int64()),
        ("num_parameters", pa.int64()),
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
    ]
)

TABLES = {"runs": RUNS, "steps": STEPS}
