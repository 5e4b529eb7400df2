"""Figures of the curvature analysis: the h–σ power law per layer, α by depth, α over training.

As in :mod:`analysis.plots`, figures are drawn on ``matplotlib.figure.Figure`` with an explicit
Agg canvas (no display, no global pyplot state) and freed once saved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.curvature import LAYER_TYPES
from analysis.plots import figure, save

#: At most this many layers in one small-multiples figure; deeper networks are subsampled evenly
#: in depth (a 150-panel figure is unreadable, and the first, middle and last layers are what
#: differ most).
MAX_PANELS = 30
#: Reference exponents drawn on α plots: Gauss–Newton-like curvature (2) and the flattened,
#: LayerNorm-dominated regime the paper reports for language models (1) (docs/science/fits.md#theorem-1-decomposition).
REFERENCE_ALPHAS = (1.0, 2.0)


def _layer_order(fits: pd.DataFrame) -> pd.DataFrame:
    depth = pd.to_numeric(fits["depth"], errors="coerce") if "depth" in fits.columns else None
    if depth is None or depth.isna().all():
        return fits.reset_index(drop=True)
    return (
        fits.assign(_d=depth)
        .sort_values(["_d", "layer"], kind="stable")
        .drop(columns="_d")
        .reset_index(drop=True)
    )


def _type_colors(types: list[str]) -> dict[str, str]:
    ordered = sorted(
        set(types), key=lambda t: (LAYER_TYPES.index(t) if t in LAYER_TYPES else len(LAYER_TYPES), t)
    )
    return {t: f"C{i % 10}" for i, t in enumerate(ordered)}


def plot_layer_spectra(
    curv: pd.DataFrame, fits: pd.DataFrame, path: str | Path, title: str, max_panels: int = MAX_PANELS
) -> Path | None:
    """Small multiples of h_k against σ_k (log–log), one panel per layer, with the fitted line.

    ``curv`` holds the curvature rows and ``fits`` the ``layer_fits`` rows of *one* trial at one
    step. Each panel shows the positive h_k as points (the count of dropped non-positive h_k in
    the title), the line h = e^b σ^α of :func:`analysis.fits.fit_layer` over the fitted σ range,
    and α with its R². Returns None when there is nothing to draw.
    """
    if curv.empty or fits.empty:
        return None
    from matplotlib.ticker import NullFormatter

    layers = _layer_order(fits)
    if len(layers) > max_panels:
        keep = np.unique(np.linspace(0, len(layers) - 1, max_panels).round().astype(int))
        layers = layers.iloc[keep].reset_index(drop=True)
    by_layer = {name: group for name, group in curv.groupby("layer", sort=False)}
    ncols = min(6, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = figure(2.6 * ncols, 2.3 * nrows + 0.4)
    for i, row in enumerate(layers.itertuples(index=False)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        group = by_layer.get(row.layer)
        if group is not None:
            sigma = pd.to_numeric(group["sigma"], errors="coerce").to_numpy(dtype=float)
            h = pd.to_numeric(group["h"], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(sigma) & np.isfinite(h) & (sigma > 0) & (h > 0)
            ax.loglog(sigma[ok], h[ok], "o", ms=3, color="C0")
            dropped = int((np.isfinite(h) & (h <= 0)).sum())
            alpha = float(row.alpha)
            b = float(getattr(row, "alpha_intercept", np.nan))
            if not np.isfinite(b) and ok.any():
                # Fits written without the intercept: an OLS line passes through the centroid.
                b = float(np.mean(np.log(h[ok])) - alpha * np.mean(np.log(sigma[ok])))
            if ok.any() and np.isfinite(alpha) and np.isfinite(b):
                xs = np.geomspace(sigma[ok].min(), sigma[ok].max(), 20)
                ax.loglog(xs, np.exp(b) * xs**alpha, "-", color="C3", lw=1.2)
        else:
            dropped = 0
        label = f"α={row.alpha:.2f}, R²={row.r2_alpha:.2f}" if np.isfinite(row.alpha) else "no fit"
        if dropped:
            label += f", {dropped} h≤0"
        ax.set_title(f"{row.layer} ({row.layer_type})\n{label}", fontsize=7)
        # Minor log ticks get labels by default when a panel spans less than a decade; at
        # small-multiples size they overlap, so keep only the decade labels.
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(which="both", labelsize=6)
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(f"{title}: h_k vs σ_k (log–log) with the fitted h ∝ σ^α", fontsize=9)
    return save(fig, path)


def _layer_types(data: pd.DataFrame) -> pd.Series:
    """Layer types as strings, ``unknown`` where none was recorded."""
    return data["layer_type"].astype("object").where(data["layer_type"].notna(), "unknown").astype(str)


def _alpha_axes(types: pd.Series) -> tuple[Any, Any, dict[str, Any]]:
    """A figure for α per layer type: the paper's reference exponents as dashed lines, one colour
    per type."""
    fig = figure(7.5, 4.5)
    ax = fig.add_subplot()
    for ref in REFERENCE_ALPHAS:
        ax.axhline(ref, color="0.6", ls="--", lw=0.8)
    return fig, ax, _type_colors(list(types))


def plot_alpha_by_depth(fits: pd.DataFrame, path: str | Path, title: str) -> Path | None:
    """α of every layer against its depth, colored by layer type (one point per trial × layer).

    ``fits`` should hold one step per trial (e.g. the latest). Horizontal guides mark α = 1 and
    α = 2. Layers without a finite α are not drawn. Returns None when nothing is finite.
    """
    data = fits.assign(_a=pd.to_numeric(fits["alpha"], errors="coerce"))
    data = data[np.isfinite(data["_a"])]
    if data.empty:
        return None
    depth = pd.to_numeric(data["depth"], errors="coerce") if "depth" in data.columns else None
    if depth is None or depth.isna().any():
        # No recorded depth: number the layers by their first appearance instead.
        order = {name: i for i, name in enumerate(dict.fromkeys(data["layer"]))}
        depth = data["layer"].map(order)
    data = data.assign(_x=depth.to_numpy(dtype=float))
    types = _layer_types(data)
    fig, ax, colors = _alpha_axes(types)
    for layer_type, color in colors.items():
        sel = types == layer_type
        ax.plot(data.loc[sel, "_x"], data.loc[sel, "_a"], "o", ms=4, color=color, label=layer_type, alpha=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("depth (layer index)")
    ax.set_ylabel("α  (h_k ∝ σ_k^α)")
    ax.set_title(f"{title}: α by depth")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", title="layer type", title_fontsize="small")
    return save(fig, path)


def plot_alpha_over_steps(fits: pd.DataFrame, path: str | Path, title: str) -> Path | None:
    """Median α per layer type at each probed step (over layers and trials), with its IQR band.

    Returns None when fewer than two steps were probed (a single point is not a trajectory).
    """
    data = fits.assign(_a=pd.to_numeric(fits["alpha"], errors="coerce"))
    data = data[np.isfinite(data["_a"])]
    if data.empty or data["step"].nunique() < 2:
        return None
    types = _layer_types(data)
    data = data.assign(_t=types)
    fig, ax, colors = _alpha_axes(types)
    for layer_type, color in colors.items():
        per_step = data[data["_t"] == layer_type].groupby("step")["_a"]
        stats = pd.DataFrame(
            {"median": per_step.median(), "q1": per_step.quantile(0.25), "q3": per_step.quantile(0.75)}
        )
        marker = "o" if len(stats) == 1 else None
        ax.plot(stats.index, stats["median"], color=color, marker=marker, label=layer_type)
        ax.fill_between(stats.index, stats["q1"], stats["q3"], color=color, alpha=0.15, lw=0)
    ax.set_xlabel("step")
    ax.set_ylabel("median α (band: interquartile range)")
    ax.set_title(f"{title}: α over training")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", title="layer type", title_fontsize="small")
    return save(fig, path)
