"""The "Curvature" section of the sweep report (tables and figures of docs/science/fits.md).

Built only when some trial wrote ``curvature.parquet`` or ``layer_fits.parquet``; trials with
curvature but no fits are fitted here (:func:`analysis.curvature.load_layer_fits`). Tables use
each trial's latest probed step; the α-over-training figure uses every step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.curvature import (
    alpha_by_type,
    attach_run_info,
    decomposition_summary,
    has_curvature,
    load_layer_fits,
    participation_summary,
    select_step,
    transfer_error_summary,
    trial_curvature,
)
from analysis.curvature_plots import plot_alpha_by_depth, plot_alpha_over_steps, plot_layer_spectra
from analysis.dataset import TRIAL_PATH, Results, locate
from analysis.plots import workload_prefix
from analysis.tables import frame_grid

#: Report tables are split by optimizer as well: curvature depends on how a network was trained.
BY = ("model", "dataset", "optimizer_label")


@dataclass
class CurvatureSection:
    """What :func:`curvature_section` produced.

    Attributes:
        fits: the ``layer_fits`` of every trial and step (with run attributes).
        tables: ``alpha_by_type``, ``transfer_error``, ``participation``, ``decomposition``.
        plot_paths: PNGs written.
        markdown: lines of the report section. text: the tables for a terminal.
    """

    fits: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    plot_paths: list[Path] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)
    text: str = ""


#: Table columns holding counts (printed as integers; everything else numeric as a decimal).
COUNT_COLUMNS = {"n", "n_within", "n_unbounded"}


#: Figure kinds by file-name suffix, for the report's alt texts.
FIGURE_NAMES = {
    "h_vs_sigma": "h_k vs σ_k per layer",
    "alpha_by_depth": "α by depth",
    "alpha_over_steps": "α over training",
}


def _plots(res: Results, fits: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path]]:
    """Write the figures; return (workload name, path) pairs in workload order."""
    written: list[tuple[str, Path]] = []
    latest = select_step(fits, "latest")
    key = TRIAL_PATH
    for (model, dataset), workload in latest.groupby(["model", "dataset"], sort=True):
        prefix = workload_prefix(model, dataset)
        name = f"{model} on {dataset}"
        # One representative trial for the per-layer scatter (the first by id): the panels show
        # raw points, and overlaying seeds would hide them.
        for trial, trial_fits in workload.sort_values("trial_id").groupby(key, sort=False):
            curv = trial_curvature(res, str(trial))
            if curv.empty:
                continue
            step = trial_fits["step"].iloc[0]
            curv = curv[curv["step"] == step]
            title = f"{name}, trial {trial_fits['trial_id'].iloc[0]}, step {step}"
            path = plot_layer_spectra(curv, trial_fits, out_dir / f"{prefix}__h_vs_sigma.png", title)
            if path is not None:
                written.append((name, path))
                break
        for plot, stem, data in (
            (plot_alpha_by_depth, "alpha_by_depth", workload),
            (
                plot_alpha_over_steps,
                "alpha_over_steps",
                fits[(fits["model"] == model) & (fits["dataset"] == dataset)],
            ),
        ):
            path = plot(data, out_dir / f"{prefix}__{stem}.png", name)
            if path is not None:
                written.append((name, path))
    return written


def curvature_section(
    results_path: str | os.PathLike[str] | Results, out_dir: str | os.PathLike[str], runs: pd.DataFrame | None
) -> CurvatureSection | None:
    """Fits, tables, figures and report text for the curvature data under ``results_path``.

    Returns None when no trial has curvature or layer fits (the report then has no section).
    Figures go to ``<out_dir>/plots/curvature/`` and are linked relative to ``out_dir``.
    """
    res = results_path if isinstance(results_path, Results) else locate(results_path)
    if not has_curvature(res):
        return None
    out = Path(out_dir)
    fits = attach_run_info(load_layer_fits(res), runs)
    tables = {
        "alpha_by_type": alpha_by_type(fits, by=BY),
        "transfer_error": transfer_error_summary(fits, by=BY),
        "participation": participation_summary(fits, by=BY),
        "decomposition": decomposition_summary(fits, by=BY),
    }
    figures = _plots(res, fits, out / "plots" / "curvature") if not fits.empty else []
    section = CurvatureSection(fits=fits, tables=tables, plot_paths=[path for _, path in figures])
    section.markdown = _markdown(section, figures, out)
    section.text = _text(section)
    return section


_CAPTIONS = {
    "alpha_by_type": (
        "α by layer type",
        "Curvature exponent α (h_k ∝ σ_k^α, docs/science/fits.md) at each trial's latest probed step, over "
        "layers × trials: n, median, mean, sample std, range and the worst R² of the α fits "
        "(the shape of the paper's Tables 1–2).",
    ),
    "transfer_error": (
        "Transfer error",
        "Transfer error |s − αγ| / s per layer (s: decay of the sorted h_k; α, γ fitted on independent data); "
        "the paper reports medians of 0.99 % (Tiny-ImageNet ResNet-50) and 1.25 % pooled.",
    ),
    "participation": (
        "Participation ratio against the ζ bound",
        "PR_h = (Σh)²/Σh² against ζ(s)²/ζ(2s), the bound for h_k ∝ k^(−s); layers with s ≤ 1 "
        "(infinite bound) are counted in n_unbounded only.",
    ),
    "decomposition": (
        "Theorem 1 decomposition",
        "Medians of α, α_kron, β (slope of log Λ), φ (slope of log Φ) and the χ slope; "
        "max_abs_residual = max |α_kron − (β + φ)|, zero up to storage round-off (docs/science/fits.md#theorem-1-decomposition).",
    ),
}


def _markdown(section: CurvatureSection, figures: list[tuple[str, Path]], out_dir: Path) -> list[str]:
    fits = section.fits
    n_layers = len(select_step(fits, "latest")) if not fits.empty else 0
    n_missing = int(select_step(fits, "latest")["alpha"].isna().sum()) if not fits.empty else 0
    lines = [
        "## Curvature",
        "",
        f"{n_layers} layer fits at the latest probed step of each trial"
        + (f", {n_missing} without α (see `reason` in layer_fits)." if n_missing else "."),
        "",
    ]
    for name, (heading, caption) in _CAPTIONS.items():
        table = section.tables[name]
        lines += [f"### {heading}", "", caption, ""]
        lines += [frame_grid(table, integers=COUNT_COLUMNS) if not table.empty else "No data.", ""]
    current = None
    for workload, path in figures:
        if workload != current:
            current = workload
            lines += [f"### Curvature figures: {workload}", ""]
        kind = FIGURE_NAMES.get(path.stem.rpartition("__")[2], path.stem)
        rel = Path(os.path.relpath(path, out_dir)).as_posix()
        lines += [f"![{kind}]({rel})", ""]
    return lines


def _text(section: CurvatureSection) -> str:
    parts = ["Curvature (latest probed step per trial)"]
    for name, (heading, _) in _CAPTIONS.items():
        table = section.tables[name]
        if not table.empty:
            parts.append(f"{heading}:\n{frame_grid(table, style='plain', integers=COUNT_COLUMNS)}")
    return "\n\n".join(parts)
