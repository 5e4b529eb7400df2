"""The ``layer_fits`` table and its summaries: from per-direction curvature to per-type exponents.

The curvature probe writes one ``curvature`` row per (trial, step, layer, k): σ_k, h_k, h^kron_k,
ρ^δ_k, ρ^A_k, Φ_k, λ^δ_k, λ^A_k, Λ_k, χ_k and the concentration ratio (docs/science/quantities.md#the-curvature-table). This module
turns those rows into one ``layer_fits`` row per (trial, step, layer) with
:func:`analysis.fits.fit_layer` and :func:`analysis.fits.decomposition_fit`, and summarises the
fits the way the paper's Tables 1–2 do (α per model and layer type), plus the transfer error
and the participation ratio against its ζ bound (docs/science/fits.md#zeta-bound).

Summaries default to each trial's *latest* probed step: curvature evolves during training and
the paper's numbers are measured on trained networks, so pooling all steps would mix regimes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.dataset import TRIAL_PATH, Results, load_table, locate, trial_frame, trial_frames
from analysis.fits import EXTRA_KEYS, FIT_KEYS, decomposition_fit, fit_layer

#: Closed vocabulary of layer types (DESIGN.md "Results"); duplicated from the writer on purpose,
#: since analysis never imports training code. Used only to order tables.
LAYER_TYPES = (
    "conv", "conv_stem", "depthwise_conv", "linear", "attn_q", "attn_k", "attn_v", "attn_qkv",
    "attn_out", "mlp_up", "mlp_gate", "mlp_down", "embedding", "head", "norm", "bias", "other",
)  # fmt: skip
#: Identify one layer record. ``trial_path`` (added by :func:`load_table`) is preferred when
#: present because trial ids may repeat across sweeps.
LAYER_KEY = ("step", "layer")
#: Trial columns copied from curvature rows to the layer record when present.
TRIAL_COLUMNS = ("sweep_name", "trial_id", TRIAL_PATH)
#: Per-layer columns copied to the layer record (always present in the output; null if absent).
LAYER_INFO = ("layer_type", "depth")
#: Per-layer columns the probe may write, copied when present.
OPTIONAL_INFO = ("module", "shape_m", "shape_n")
#: Decomposition columns of ``layer_fits``: name in layer_fits <- key of decomposition_fit.
DECOMPOSITION_COLUMNS = {
    "alpha_kron": "alpha_kron",
    "r2_alpha_kron": "r2_alpha_kron",
    "beta": "beta",
    "r2_beta": "r2_beta",
    "phi": "phi",
    "r2_phi": "r2_phi",
    "chi_slope": "chi_slope",
    "r2_chi": "r2_chi",
    "theorem1_residual": "residual",
    "kron_identity_error": "identity_error",
    "n_decomp": "n_points",
    "decomp_reason": "reason",
}
#: Counts describing what a layer's fits rest on: directions with an HVP (K), σ_k recorded (the
#: γ window) and probe samples B (the curvature table's ``samples``; NaN when unknown).
COUNT_COLUMNS = ("n_directions", "n_sigma", "sample_count")
#: Columns of the ``layer_fits`` table after the identifying ones.
LAYER_FITS_COLUMNS = (*FIT_KEYS, *EXTRA_KEYS, *DECOMPOSITION_COLUMNS, *COUNT_COLUMNS)
#: Run attributes joined onto fits for grouping and claim filters.
RUN_INFO = ("model", "dataset", "optimizer_label", "task", "status")
#: Default grouping of the summaries: the paper reports per model (and dataset).
BY_WORKLOAD = ("model", "dataset")


def _trial_key(frame: pd.DataFrame) -> str:
    return TRIAL_PATH if TRIAL_PATH in frame.columns else "trial_id"


def _column(group: pd.DataFrame, name: str) -> np.ndarray | None:
    """Float array of ``name``, or None when the column is absent or entirely null."""
    if name not in group.columns:
        return None
    values = pd.to_numeric(group[name], errors="coerce").to_numpy(dtype=np.float64)
    return None if np.isnan(values).all() else values


def _decomposition(group: pd.DataFrame, h: np.ndarray, window: int) -> dict[str, Any]:
    sigma = _column(group, "sigma")
    h_kron = _column(group, "h_kron")
    parts = [_column(group, c) for c in ("lambda_delta", "lambda_A", "rho_delta", "rho_A")]
    if any(p is None for p in parts):
        # Only the products were recorded: Λ_k·1 and Φ_k·1 are the same factorisation.
        lam, phi = _column(group, "lam"), _column(group, "phi")
        if lam is not None and phi is not None:
            ones = np.ones_like(lam)
            parts = [lam, ones, phi, ones]
    if sigma is None or h_kron is None or any(p is None for p in parts):
        missing = dict.fromkeys(DECOMPOSITION_COLUMNS.values(), np.nan)
        missing.update(n_points=0, reason="no Kronecker factors recorded")
        return missing
    return decomposition_fit(sigma, h, h_kron, *parts, window=window)  # type: ignore[arg-type]


def layer_fits_from_curvature(
    curv: pd.DataFrame, window: int | None = None, gamma_window: int | None = None
) -> pd.DataFrame:
    """Fit every (trial, step, layer) of a ``curvature`` table; one ``layer_fits`` row each.

    Per layer the rows are ordered by ``k`` and passed to :func:`analysis.fits.fit_layer`
    (α, γ, s, R², transfer error, PR_h, PR_grad, ζ bound, BIC winner of the σ profile) and, when
    the Kronecker factors are present, to :func:`analysis.fits.decomposition_fit` (α_kron, β, φ,
    χ slope and the Theorem 1 residual α_kron − (β + φ), docs/science/fits.md#theorem-1-decomposition).

    The probe writes σ_k for k up to its γ window and h_k (and the Kronecker columns) only for
    k ≤ its top-K, NaN beyond. By default the fits follow what was recorded: the α window is the
    layer's K (up to its last finite h_k; the paper's top 20 under the probe's default) and the
    γ window is every recorded σ_k. Integers override either (e.g. ``window=20`` to match the
    paper when the probe recorded more).

    Args:
        curv: the ``curvature`` table (``load_table(path, "curvature")``).
        window: leading directions used for α, s and PR; None: the layer's K.
        gamma_window: leading σ_k used for γ and the BIC profile; None: all recorded σ_k.

    Returns:
        Identifying columns (``sweep_name``, ``trial_id``, ``trial_path`` where present, ``step``,
        ``layer``, ``layer_type``, ``depth`` (null when the curvature rows lack them), then
        ``module``, ``shape_m``, ``shape_n`` where present) followed by
        :data:`LAYER_FITS_COLUMNS`. Empty (with those columns) for an empty input.
    """
    trial = _trial_key(curv)
    id_cols = [*(c for c in TRIAL_COLUMNS if c in curv.columns), *LAYER_KEY, *LAYER_INFO]
    id_cols += [c for c in OPTIONAL_INFO if c in curv.columns]
    if curv.empty:
        return pd.DataFrame(columns=[*id_cols, *LAYER_FITS_COLUMNS])
    missing = {trial, *LAYER_KEY, "k", "sigma", "h"} - set(curv.columns)
    if missing:
        raise ValueError(f"curvature table lacks columns {sorted(missing)}")

    ordered = curv.sort_values([trial, *LAYER_KEY, "k"], kind="stable")
    rows: list[dict[str, Any]] = []
    for _, group in ordered.groupby([trial, *LAYER_KEY], sort=False, dropna=False):
        first = group.iloc[0]
        sigma = pd.to_numeric(group["sigma"], errors="coerce").to_numpy(dtype=np.float64)
        h = pd.to_numeric(group["h"], errors="coerce").to_numpy(dtype=np.float64)
        finite_h = np.flatnonzero(np.isfinite(h))
        k_h = int(finite_h[-1]) + 1 if finite_h.size else len(h)
        win = window if window is not None else max(k_h, 1)
        g_win = gamma_window if gamma_window is not None else max(len(sigma), 1)
        record: dict[str, Any] = {c: first[c] if c in group.columns else None for c in id_cols}
        record.update(fit_layer(sigma, h, window=win, gamma_window=g_win))
        decomp = _decomposition(group, h, win)
        record.update({col: decomp[key] for col, key in DECOMPOSITION_COLUMNS.items()})
        samples = _column(group, "samples")
        record.update(
            n_directions=int(np.isfinite(h[:win]).sum()),
            n_sigma=int(np.isfinite(sigma).sum()),
            sample_count=float(np.nanmax(samples)) if samples is not None else np.nan,
        )
        rows.append(record)
    return pd.DataFrame(rows, columns=[*id_cols, *LAYER_FITS_COLUMNS])


def load_layer_fits(
    results_path: str | os.PathLike[str] | Results,
    window: int | None = None,
    gamma_window: int | None = None,
) -> pd.DataFrame:
    """Every trial's ``layer_fits``; fitted here from ``curvature`` where a trial has no fits.

    A trial with ``layer_fits`` keeps its own fits (they may use a window the probe was
    configured with); a trial with only ``curvature`` is fitted with ``window`` /
    ``gamma_window`` (defaults as in :func:`layer_fits_from_curvature`), one trial at a time.
    Empty DataFrame when no trial has either.
    """
    res = results_path if isinstance(results_path, Results) else locate(results_path)
    fits = load_table(res, "layer_fits")
    have_fits = set(fits[TRIAL_PATH]) if not fits.empty else set()
    computed = [
        layer_fits_from_curvature(curv, window=window, gamma_window=gamma_window)
        for key, curv in trial_frames(res, "curvature")
        if key not in have_fits
    ]
    parts = [f for f in (fits, *computed) if not f.empty]
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def has_curvature(results_path: str | os.PathLike[str] | Results) -> bool:
    """Whether any trial under ``results_path`` has ``curvature`` or ``layer_fits`` rows."""
    res = results_path if isinstance(results_path, Results) else locate(results_path)
    return res.has("curvature") or res.has("layer_fits")


def attach_run_info(fits: pd.DataFrame, runs: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``model``, ``dataset``, ``optimizer_label``, ``task``, ``status`` from ``runs``.

    Joined on ``trial_path`` when both tables have it (unique across sweeps), else on
    ``trial_id``. Columns the fits already carry are kept (e.g. the paper's data, which has no
    runs table); missing ones become ``"unknown"`` so group-bys never drop a layer silently.
    """
    out = fits.copy()
    if runs is not None and not runs.empty:
        key = TRIAL_PATH if TRIAL_PATH in out.columns and TRIAL_PATH in runs.columns else "trial_id"
        if key in runs.columns and key in out.columns:
            info = [c for c in RUN_INFO if c in runs.columns and c not in out.columns]
            meta = runs[[key, *info]].drop_duplicates(key, keep="last")
            out = out.merge(meta, on=key, how="left")
    for col in RUN_INFO:
        if col not in out.columns:
            out[col] = "unknown"
        else:
            out[col] = out[col].astype("object").where(out[col].notna(), "unknown")
    return out


def select_step(fits: pd.DataFrame, step: str | int = "latest") -> pd.DataFrame:
    """Rows of one probed step per trial: ``"latest"`` (default), ``"first"``, an int, or ``"all"``."""
    if fits.empty or step == "all" or "step" not in fits.columns:
        return fits
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        return fits[fits["step"] == step]
    if step not in ("latest", "first"):
        raise ValueError(f"step must be 'latest', 'first', 'all' or an integer, got {step!r}")
    key = _trial_key(fits)
    pick = "max" if step == "latest" else "min"
    chosen = fits.groupby(key, dropna=False)["step"].transform(pick)
    return fits[fits["step"] == chosen]


def _type_order(types: pd.Series) -> pd.Series:
    rank = {t: i for i, t in enumerate(LAYER_TYPES)}
    return types.map(lambda t: rank.get(t, len(rank)))


def alpha_by_type(
    fits: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    by: Sequence[str] = BY_WORKLOAD,
    column: str = "alpha",
    step: str | int = "latest",
    ddof: int = 1,
) -> pd.DataFrame:
    """The exponent per model and layer type, shaped like the paper's Tables 1–2.

    For each group of ``by`` columns and ``layer_type``: ``n`` (layers × trials with a finite
    value), ``median``, ``mean``, ``std`` (``ddof=1``: sample std, as elsewhere in the suite;
    the paper's summary files use the population std, ``ddof=0``), ``min``, ``max`` and
    ``min_r2`` (smallest ``r2_<column>``, the worst fit behind the numbers).

    Args:
        fits: a ``layer_fits`` table. runs: the ``runs`` table for model/dataset (optional when
            ``fits`` already carries them).
        by: grouping columns besides ``layer_type``.
        column: the exponent to summarise (``alpha``, ``gamma``, ``s``, ``beta``, ...).
        step: which probed step per trial (:func:`select_step`).
    """
    cols = [*by, "layer_type", "n", "median", "mean", "std", "min", "max", "min_r2"]
    if fits.empty:
        return pd.DataFrame(columns=cols)
    data = select_step(attach_run_info(fits, runs), step)
    data = data.assign(_v=pd.to_numeric(data[column], errors="coerce"))
    r2_col = f"r2_{column}"
    data["_r2"] = pd.to_numeric(data[r2_col], errors="coerce") if r2_col in data.columns else np.nan
    data = data[np.isfinite(data["_v"])]
    if data.empty:
        return pd.DataFrame(columns=cols)
    types = data["layer_type"] if "layer_type" in data.columns else pd.Series(None, index=data.index)
    data["layer_type"] = types.astype("object").where(types.notna(), "unknown")
    grouped = data.groupby([*by, "layer_type"], sort=False, dropna=False)
    table = grouped.agg(
        n=("_v", "size"),
        median=("_v", "median"),
        mean=("_v", "mean"),
        std=("_v", lambda v: float(np.std(v, ddof=ddof)) if len(v) > ddof else np.nan),
        min=("_v", "min"),
        max=("_v", "max"),
        min_r2=("_r2", "min"),
    ).reset_index()
    table = table.assign(_o=_type_order(table["layer_type"]))
    return table.sort_values([*by, "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)[cols]


def transfer_error_summary(
    fits: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    by: Sequence[str] = BY_WORKLOAD,
    step: str | int = "latest",
) -> pd.DataFrame:
    """Transfer error |s − αγ|/s per group: ``n``, ``median``, ``mean``, ``max`` (docs/science/fits.md).

    The median is the paper's headline statistic (0.99 % over 54 Tiny-ImageNet layers, 1.25 %
    pooled over 93 layers, §4); the max shows the layers where the identity fails (e.g. a
    classifier head whose few directions make γ ill-determined).
    """
    cols = [*by, "n", "median", "mean", "max"]
    if fits.empty:
        return pd.DataFrame(columns=cols)
    data = select_step(attach_run_info(fits, runs), step)
    data = data.assign(_v=pd.to_numeric(data["transfer_error"], errors="coerce"))
    data = data[np.isfinite(data["_v"])]
    if data.empty:
        return pd.DataFrame(columns=cols)
    table = (
        data.groupby(list(by), sort=True, dropna=False)["_v"]
        .agg(n="size", median="median", mean="mean", max="max")
        .reset_index()
    )
    return table[cols]


def participation_summary(
    fits: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    by: Sequence[str] = BY_WORKLOAD,
    step: str | int = "latest",
) -> pd.DataFrame:
    """PR_h against its ζ bound ζ(s)²/ζ(2s) per group (docs/science/fits.md).

    Columns: ``n`` (layers with both PR_h and a finite bound), ``n_within`` (PR_h ≤ bound),
    ``fraction_within``, ``median_pr_h``, ``median_bound``, ``n_unbounded`` (layers fitted but
    with s ≤ 1, where the bound is infinite and the comparison says nothing).
    """
    cols = [*by, "n", "n_within", "fraction_within", "median_pr_h", "median_bound", "n_unbounded"]
    if fits.empty:
        return pd.DataFrame(columns=cols)
    data = select_step(attach_run_info(fits, runs), step)
    pr = pd.to_numeric(data["pr_h"], errors="coerce")
    bound = pd.to_numeric(data["zeta_bound"], errors="coerce")
    data = data.assign(
        _pr=pr,
        _bound=bound,
        _ok=np.isfinite(pr) & np.isfinite(bound),
        _within=np.isfinite(pr) & np.isfinite(bound) & (pr <= bound),
        _unbounded=np.isfinite(pr) & ~np.isfinite(bound),
    )
    rows = []
    for keys, group in data.groupby(list(by), sort=True, dropna=False):
        ok = group[group["_ok"]]
        n = len(ok)
        rows.append(
            {
                **dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True)),
                "n": n,
                "n_within": int(group["_within"].sum()),
                "fraction_within": float(group["_within"].sum()) / n if n else np.nan,
                "median_pr_h": float(ok["_pr"].median()) if n else np.nan,
                "median_bound": float(ok["_bound"].median()) if n else np.nan,
                "n_unbounded": int(group["_unbounded"].sum()),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def trial_curvature(results_path: str | os.PathLike[str] | Results, trial_path: str) -> pd.DataFrame:
    """The ``curvature`` rows of one trial (``trial_path`` as in ``load_table``; empty when it
    has none)."""
    return trial_frame(results_path, "curvature", trial_path)


def decomposition_summary(
    fits: pd.DataFrame,
    runs: pd.DataFrame | None = None,
    by: Sequence[str] = BY_WORKLOAD,
    step: str | int = "latest",
) -> pd.DataFrame:
    """Theorem 1 per group and layer type (docs/science/fits.md#theorem-1-decomposition): medians of α, α_kron, β, φ, χ slope
    and the largest |α_kron − (β + φ)|.

    ``n`` counts layers with a finite α_kron (i.e. with Kronecker factors recorded). The
    mechanisms the paper proposes show up here: LayerNorm flattening ρ^A or residual
    connections flattening ρ^δ move φ, not β.
    """
    cols = [*by, "layer_type", "n", "alpha", "alpha_kron", "beta", "phi", "chi_slope", "max_abs_residual"]
    if fits.empty or "alpha_kron" not in fits.columns:
        return pd.DataFrame(columns=cols)
    data = select_step(attach_run_info(fits, runs), step)
    data = data[np.isfinite(pd.to_numeric(data["alpha_kron"], errors="coerce"))]
    if data.empty:
        return pd.DataFrame(columns=cols)
    types = data["layer_type"] if "layer_type" in data.columns else pd.Series(None, index=data.index)
    data = data.assign(layer_type=types.astype("object").where(types.notna(), "unknown"))
    for col in ("alpha", "alpha_kron", "beta", "phi", "chi_slope", "theorem1_residual"):
        data[col] = pd.to_numeric(data[col], errors="coerce") if col in data.columns else np.nan
    grouped = data.groupby([*by, "layer_type"], sort=False, dropna=False)
    table = grouped.agg(
        n=("alpha_kron", "size"),
        alpha=("alpha", "median"),
        alpha_kron=("alpha_kron", "median"),
        beta=("beta", "median"),
        phi=("phi", "median"),
        chi_slope=("chi_slope", "median"),
        max_abs_residual=(
            "theorem1_residual",
            lambda v: float(np.nanmax(np.abs(v))) if v.notna().any() else np.nan,
        ),
    ).reset_index()
    table = table.assign(_o=_type_order(table["layer_type"]))
    return table.sort_values([*by, "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)[cols]
