"""α per parameter from a probe, for Spectral Newton's ``measured`` α policy (docs/science/spectral_newton.md).

Two fits, chosen by ``probes.settings.alpha_source`` (`bench.probes.settings.ProbeSettings`):

- ``exact``: α, the OLS slope of log h_k on log σ_k over the positive h_k of a layer
  (docs/science/fits.md#curvature-exponent-alpha, the convention of ``analysis.fits.fit_layer``);
- ``kronecker``: α_kron, the slope of log h^kron_k on log σ_k, i.e. the slope of log Λ_k plus
  that of log Φ_k (Theorem 1 without the χ term, docs/science/fits.md#theorem-1-decomposition), over the common points of
  ``analysis.fits.decomposition_fit``: σ, h^kron, Λ, Φ and — when the layer has exact h — h all
  positive, so that the value is the ``alpha_kron`` column of ``layer_fits``.

The trial cannot import ``analysis``, which reads only Parquet, so the few lines are repeated here
and a test checks that both agree. A fused QKV weight has one parameter but three probed views
(q, k, v): it gets the median of their α. A layer with fewer than 5 usable points has no fit;
a fit that is not finite and > 0 cannot be a transfer-function exponent and is skipped with a
reason (the optimizer keeps its previous α), never an error.

:func:`alpha_interval` is the percentile bootstrap of α over the HVP pass's blocks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from statistics import median
from typing import Any

import numpy as np

MIN_POINTS = 5  # docs/science/fits.md#missing-fits: fewer positive points → no fit
SOURCES = ("exact", "kronecker")


def _finite_positive(values: Sequence[float | None]) -> np.ndarray:
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(arr) & (arr > 0)


def slope(sigma: Sequence[float], y: Sequence[float], keep: np.ndarray | None = None) -> float | None:
    """OLS slope of log y on log σ over the points where both are finite and > 0 (and ``keep``),
    or None with fewer than 5 such points or no spread in σ."""
    mask = _finite_positive(sigma) & _finite_positive(y)
    if keep is not None:
        mask &= keep
    if int(mask.sum()) < MIN_POINTS:
        return None
    x = np.log(np.asarray(sigma, dtype=np.float64)[mask])
    if np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, np.log(np.asarray(y, dtype=np.float64)[mask]), 1)[0])


def layer_alpha(sigma: Sequence[float], h: Sequence[float]) -> float | None:
    """α: slope of log h on log σ over the points with h > 0 and σ > 0, or None (< 5 points)."""
    return slope(sigma, h)


def layer_alpha_kron(sigma: Sequence[float], h_kron: Sequence[float], lam: Sequence[float],
                     phi: Sequence[float], h: Sequence[float]) -> float | None:
    """α_kron on the decomposition's common points (module docstring), or None (< 5 points)."""
    keep = _finite_positive(lam) & _finite_positive(phi)
    if np.isfinite(np.array([np.nan if v is None else v for v in h], dtype=np.float64)).any():
        keep &= _finite_positive(h)  # the layer has exact h: the common points need h > 0 too
    return slope(sigma, h_kron, keep)


def alpha_interval(sigma: np.ndarray, h_blocks: np.ndarray, terms: np.ndarray, resamples: int,
                   seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of α from per-block curvature sums.

    ``h_blocks`` (B × K): Σ over block b's loss terms of ⟨D_k, ∇²ℓ D_k⟩; ``terms`` (B): the
    block's loss terms. Each resample draws B blocks with replacement (multinomial counts w) and
    refits α on h*_k = Σ_b w_b h_{b,k} / Σ_b w_b N_b. NaN when there are fewer than two blocks,
    no resamples, or fewer than half of the resamples give a fit.
    """
    n_blocks = h_blocks.shape[0]
    if resamples < 1 or n_blocks < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks), size=resamples).astype(np.float64)
    h_star = (weights @ h_blocks) / (weights @ terms)[:, None]
    fits = [layer_alpha(list(sigma), list(row)) for row in h_star]
    values = np.array([f for f in fits if f is not None], dtype=np.float64)
    if values.size * 2 < resamples:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def usable(alpha: float | None) -> str | None:
    """Why a fit cannot be Spectral Newton's α (None when it can)."""
    if alpha is None:
        return f"no fit (fewer than {MIN_POINTS} usable directions)"
    if not math.isfinite(alpha) or alpha <= 0:
        return f"fitted alpha {alpha:.4g} is not finite and > 0"
    return None


def alpha_by_parameter(curvature_rows: list[dict[str, Any]], source: str = "exact"
                       ) -> tuple[dict[str, float], dict[str, str]]:
    """``({"<module>.weight": α}, {"<module>.weight": reason skipped})`` from one probe's rows.

    A parameter is skipped when none of its views has a usable fit (:func:`usable`); the
    median is taken over the usable views.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown alpha source {source!r} (known: {', '.join(SOURCES)})")
    cols = ("sigma", "h", "h_kron", "lam", "phi")
    per_layer: dict[str, tuple[str, dict[str, list[float]]]] = {}
    for row in curvature_rows:
        module, values = per_layer.setdefault(row["layer"], (row["module"], {c: [] for c in cols}))
        for c in cols:
            values[c].append(row.get(c, math.nan))
    fitted: dict[str, list[float]] = defaultdict(list)
    reasons: dict[str, list[str]] = defaultdict(list)
    for layer, (module, v) in per_layer.items():
        name = f"{module}.weight"
        alpha = (layer_alpha(v["sigma"], v["h"]) if source == "exact"
                 else layer_alpha_kron(v["sigma"], v["h_kron"], v["lam"], v["phi"], v["h"]))
        why = usable(alpha)
        if why is None:
            fitted[name].append(float(alpha))  # type: ignore[arg-type]
        else:
            reasons[name].append(f"{layer}: {why}")
    alphas = {name: float(median(values)) for name, values in fitted.items()}
    skipped = {name: "; ".join(why) for name, why in reasons.items() if name not in alphas}
    return alphas, skipped
