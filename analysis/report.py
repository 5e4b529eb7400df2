"""Build the sweep report: comparison table, curves and the state of every trial.

The report never hides a trial: failed and diverged trials are listed with their full error
message, and trials without a runs row (still running, or killed) are listed as
``running/incomplete``. A comparison that silently drops the runs that went wrong overstates
the optimizers that produce them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.comparison import ComparisonSection, comparison_section
from analysis.curvature_report import CurvatureSection, curvature_section
from analysis.dataset import INCOMPLETE, TRIAL_PATH, load_table, locate, trial_states
from analysis.input_bound import InputSection, input_section
from analysis.plots import entry_colors, plot_loss_curves, workload_prefix, workload_title
from analysis.provenance import machine_line, provenance_line
from analysis.summary import WORKLOAD, format_table, optimizer_table
from analysis.tables import MISSING, frame_grid

#: Steps columns the curves need; reading only these keeps memory low on long runs.
STEPS_COLUMNS = [
    "trial_id",
    "step",
    "wall_time_s",
    "probe_time_s",
    "train_loss",
    "eval_metric",
    "samples_seen",
    "tokens_seen",
    "step_time_s",
    "data_time_s",
]
#: Order in which trial states are listed (anything else follows alphabetically).
STATE_ORDER = ["completed", "diverged", "failed", INCOMPLETE]


@dataclass
class Report:
    """What :func:`build_report` produced.

    Attributes:
        results_path: the results directory the report was built from.
        out_dir: where ``report.md`` and ``plots/`` were written.
        report_path: the Markdown report.
        table: :func:`analysis.summary.optimizer_table` of the runs.
        text: the table formatted for a terminal, followed by the trial-state counts.
        plot_paths: PNGs written (training curves, then curvature figures).
        trial_states: :func:`analysis.dataset.trial_states` (one row per trial directory).
        state_counts: number of trials per state, e.g. ``{"completed": 4, "failed": 1}``.
        curvature: the "Curvature" section (layer fits, tables, figures), or None when no trial
            has ``curvature`` or ``layer_fits`` data.
        comparison: the "Comparisons" section (best setting per optimizer, time to target,
            performance profiles), or None with fewer than two optimizers; its figures are in
            ``comparison.plot_paths`` (not in ``plot_paths``).
        colors: the one colour per optimizer entry used by every figure of the report.
        input: the "Input pipeline" section (input share per workload, input-bound trials), or
            None when no trial measured its wait for input.
    """

    results_path: Path
    out_dir: Path
    report_path: Path
    table: pd.DataFrame
    text: str
    plot_paths: list[Path] = field(default_factory=list)
    trial_states: pd.DataFrame = field(default_factory=pd.DataFrame)
    state_counts: dict[str, int] = field(default_factory=dict)
    curvature: CurvatureSection | None = None
    comparison: ComparisonSection | None = None
    colors: dict[str, str] = field(default_factory=dict)
    input: InputSection | None = None


def _count_states(states: pd.DataFrame) -> dict[str, int]:
    counts = states["state"].astype(str).value_counts().to_dict()
    ordered = [s for s in STATE_ORDER if s in counts] + sorted(set(counts) - set(STATE_ORDER))
    return {s: int(counts[s]) for s in ordered}


def _counts_line(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    parts = ", ".join(f"{n} {state}" for state, n in counts.items())
    return f"{total} trial{'s' * (total != 1)}: {parts}"


def _item(value: object) -> str:
    """A detail of a list item: ``—`` when missing, integral floats as integers."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return MISSING
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _relative(text: str, root: Path) -> str:
    """``text`` with the absolute results directory replaced by ``<results>``: an error message
    may quote a path of the machine the trial ran on, and a report never shows one."""
    return text.replace(str(root), "<results>")


def _fence(text: str) -> str:
    """Wrap ``text`` in a code fence longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def _trial_heading(row: pd.Series) -> str:
    return f"### `{row['trial_id']}` — {row['state']}"


def _problem_section(states: pd.DataFrame, root: Path) -> list[str]:
    """Failed and diverged trials, each with its full error message."""
    bad = states[~states["state"].isin(["completed", INCOMPLETE])]
    if bad.empty:
        return ["No trial failed or diverged."]
    lines: list[str] = []
    for _, row in bad.iterrows():
        lines.append(_trial_heading(row))
        lines.append("")
        details = [
            ("sweep", row.get("sweep_name")),
            ("optimizer", row.get("optimizer_label")),
            ("model", row.get("model")),
            ("dataset", row.get("dataset")),
            ("seed index", row.get("seed_index")),
            ("steps completed", row.get("steps_completed")),
            ("directory (relative to the results)", row.get(TRIAL_PATH)),
        ]
        lines += [f"- {name}: {_item(value)}" for name, value in details]
        lines.append("")
        error = row.get("error")
        if error is None or pd.isna(error) or not str(error).strip():
            lines.append("(no error message recorded)")
        else:
            lines.append(_fence(_relative(str(error), root)))
        lines.append("")
    return lines


def _plot_section(plot_paths: list[Path], out_dir: Path, table: pd.DataFrame) -> list[str]:
    if not plot_paths:
        return ["No curves to plot (no completed trial with logged steps).", ""]
    # File names are "<workload prefix>__<curve>.png" (analysis.plots); map prefixes back to the
    # unslugged names for the headings.
    names = {workload_prefix(*w): workload_title(*w) for w in table[WORKLOAD].itertuples(index=False)}
    lines: list[str] = []
    current = None
    for path in plot_paths:
        workload, _, curve = path.stem.rpartition("__")
        if workload != current:
            current = workload
            lines += [f"### {names.get(workload, workload)}", ""]
        rel = Path(os.path.relpath(path, out_dir)).as_posix()
        lines += [f"![{curve.replace('_', ' ')}]({rel})", ""]
    return lines


def render_markdown(
    results_path: Path,
    out_dir: Path,
    table: pd.DataFrame,
    plot_paths: list[Path],
    states: pd.DataFrame,
    counts: dict[str, int],
    curvature_lines: list[str] | None = None,
    comparison_lines: list[str] | None = None,
    input_lines: list[str] | None = None,
    provenance: str | None = None,
) -> str:
    """The text of ``report.md`` (``curvature_lines`` / ``comparison_lines`` / ``input_lines``:
    the optional Curvature, Comparisons and Input pipeline sections; ``provenance``: the
    :func:`analysis.provenance.provenance_line` and ``machine_line`` of the runs, one per line). Paths are relative: the results directory to the
    report's, trial directories to the results directory."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# specbench report",
        "",
        f"- results: `{Path(os.path.relpath(results_path, out_dir)).as_posix()}` (relative to this report)",
        f"- generated: {now}",
        f"- {_counts_line(counts)}",
        *[f"- {line}" for line in (provenance or "").splitlines()],
        "",
        "## Optimizer comparison",
        "",
        "Mean ± sample standard deviation over the *completed* seeds of each setting; "
        "diverged and failed trials are counted in `ok/div/fail`, not averaged (they are listed "
        "below). Within each workload the best final eval metric comes first (↑ higher is "
        "better, ↓ lower is better).",
        "",
        format_table(table, style="markdown"),
        "",
        "## Curves",
        "",
        "One line per setting, in its optimizer entry's colour (settings of one entry differ by line "
        "style): mean over completed seeds aligned by step, shaded min–max band. Wall-clock axes "
        "are training time: curvature-probe pauses are excluded.",
        "",
        *_plot_section(plot_paths, out_dir, table),
        *(comparison_lines or []),
        *(input_lines or []),
        *(curvature_lines or []),
        "## Failed and diverged trials",
        "",
        *_problem_section(states, results_path),
        "",
        "## Running or incomplete trials",
        "",
        "Trials with no runs row yet: still running, or stopped before recording their end.",
        "",
    ]
    incomplete = states[states["state"] == INCOMPLETE]
    if incomplete.empty:
        lines.append("None.")
    else:
        lines.append(frame_grid(incomplete, ["sweep_name", "trial_id", "n_steps_logged", "last_step", TRIAL_PATH],
                                integers={"last_step"}))
    lines += [
        "",
        "## All trials",
        "",
        frame_grid(
            states,
            ["sweep_name", "trial_id", "state", "optimizer_label", "model", "dataset", "seed_index",
             "steps_completed", "last_step"],
            integers={"seed_index", "steps_completed", "last_step"},
        ),  # fmt: skip
        "",
    ]
    return "\n".join(lines)


def build_report(
    results_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> Report:
    """Read a sweep, a folder of sweeps or a consolidated directory, write ``report.md`` and
    plots, return a :class:`Report`.

    Args:
        results_path: a sweep directory, a parent of several sweeps, or a consolidated directory
            (:func:`analysis.dataset.locate`).
        out_dir: where to write; default ``<results_path>/report/``. Plots go to
            ``<out_dir>/plots/`` and are linked from ``report.md`` by relative paths.

    Raises:
        ResultsNotFound: no results under ``results_path``.
        SchemaVersionError: some file was written at another schema version.
        ResultsReadError: some file lacks a required column.
    """
    res = locate(results_path)  # fail early, with the clear message, before creating out_dir
    root = res.root
    out = Path(out_dir) if out_dir is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)

    runs = load_table(res, "runs")
    steps = load_table(res, "steps", columns=STEPS_COLUMNS)
    states = trial_states(res)
    counts = _count_states(states)
    colors = entry_colors(runs["optimizer_entry"]) if not runs.empty else {}

    table = optimizer_table(runs)
    plot_paths = plot_loss_curves(steps, runs, out / "plots", colors)
    code = "\n".join(line for line in (provenance_line(runs), machine_line(runs)) if line)
    text = f"{format_table(table, style='plain')}\n\n{_counts_line(counts)}\n{code}"
    curvature = curvature_section(res, out, runs)
    if curvature is not None:
        text += f"\n\n{curvature.text}"
    comparison = comparison_section(runs, steps, out, colors=colors)
    if comparison is not None:
        text += f"\n\n{comparison.text}"
    pipeline = input_section(runs, steps)
    if pipeline is not None:
        text += f"\n\n{pipeline.text}"

    markdown = render_markdown(
        root, out, table, plot_paths, states, counts,
        curvature.markdown if curvature is not None else None,
        comparison.markdown if comparison is not None else None,
        pipeline.markdown if pipeline is not None else None,
        code,
    )  # fmt: skip
    if curvature is not None:
        plot_paths = [*plot_paths, *curvature.plot_paths]
    report_path = out / "report.md"
    report_path.write_text(markdown, encoding="utf-8")
    return Report(
        results_path=root, out_dir=out, report_path=report_path, table=table, text=text, plot_paths=plot_paths,
        trial_states=states, state_counts=counts, curvature=curvature, comparison=comparison, colors=colors,
        input=pipeline,
    )  # fmt: skip
