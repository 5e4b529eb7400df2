"""specbench analysis: read the Parquet results of sweeps into tables, plots and reports.

Reading results: :mod:`analysis.dataset` (per-trial or consolidated Parquet, schema version and
required columns checked). Reports: :mod:`analysis.report` (``report.md``), with
:mod:`analysis.summary` (per-setting table, intervals), :mod:`analysis.tables` (the one table
builder), :mod:`analysis.plots` (figures, one colour per optimizer entry) and
:mod:`analysis.clock` (wall-clock without probe pauses).

Optimizer comparisons: :mod:`analysis.comparison` (best setting per optimizer under a tuning
budget, time to target, AlgoPerf performance profiles, one per sweep) and
:mod:`analysis.comparison_plots`.

Curvature (docs/science/fits.md): :mod:`analysis.fits` (power-law fits of one layer),
:mod:`analysis.curvature` (the ``layer_fits`` table and its summaries),
:mod:`analysis.curvature_plots`, :mod:`analysis.curvature_report` (the report section),
:mod:`analysis.claims` (the paper's claims as checkable rules) and :mod:`analysis.paper_data`
(the paper's published result files as ``layer_fits``).

This package reads only Parquet, JSON and YAML files; it never imports the training code
(``bench``, ``optimizers``, ``launchers``), so results can be analysed on any machine with
pandas, pyarrow, scipy and matplotlib.
"""

from analysis.claims import ClaimResult, exit_status, format_results, load_claims, verify
from analysis.comparison import (
    best_settings,
    performance_profile,
    performance_profile_scores,
    performance_profiles,
    summarize_time_to_target,
    time_to_target,
)
from analysis.curvature import (
    alpha_by_type,
    layer_fits_from_curvature,
    load_layer_fits,
    participation_summary,
    transfer_error_summary,
)
from analysis.dataset import (
    SCHEMA_VERSION,
    ResultsNotFound,
    ResultsReadError,
    SchemaVersionError,
    find_trial_dirs,
    load_table,
    locate,
    trial_states,
)
from analysis.fits import bic_profile, decomposition_fit, fit_layer, zeta_bound
from analysis.plots import plot_loss_curves
from analysis.report import Report, build_report
from analysis.summary import format_table, optimizer_table, t_interval

__all__ = [
    "ClaimResult",
    "Report",
    "ResultsNotFound",
    "ResultsReadError",
    "SCHEMA_VERSION",
    "SchemaVersionError",
    "alpha_by_type",
    "best_settings",
    "bic_profile",
    "build_report",
    "decomposition_fit",
    "exit_status",
    "find_trial_dirs",
    "fit_layer",
    "format_results",
    "format_table",
    "layer_fits_from_curvature",
    "load_claims",
    "load_layer_fits",
    "load_table",
    "locate",
    "optimizer_table",
    "participation_summary",
    "performance_profile",
    "performance_profile_scores",
    "performance_profiles",
    "plot_loss_curves",
    "summarize_time_to_target",
    "t_interval",
    "time_to_target",
    "transfer_error_summary",
    "trial_states",
    "verify",
    "zeta_bound",
]
