"""specbench analysis: read the Parquet results of sweeps into tables, plots and reports.

This package reads only Parquet files; it never imports the training code (``bench``,
``optimizers``, ``launchers``), so results can be analysed on any machine with pandas, pyarrow
and matplotlib.
"""

from analysis.dataset import (
    SCHEMA_VERSION,
    ResultsNotFound,
    ResultsReadError,
    SchemaVersionError,
    find_trial_dirs,
    load_table,
    trial_states,
)
from analysis.plots import plot_loss_curves
from analysis.report import Report, build_report
from analysis.summary import format_table, optimizer_table, t_interval

__all__ = [
    "SCHEMA_VERSION",
    "Report",
    "ResultsNotFound",
    "ResultsReadError",
    "SchemaVersionError",
    "build_report",
    "find_trial_dirs",
    "format_table",
    "load_table",
    "optimizer_table",
    "plot_loss_curves",
    "t_interval",
    "trial_states",
]
