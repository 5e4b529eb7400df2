"""α per parameter from a probe, for Spectral Newton's ``measured`` α policy (docs/science/spectral_newton.md).

α is the OLS slope of log h_k on log σ_k over the positive h_k of a layer (docs/science/fits.md, the same
convention as ``analysis.fits.fit_layer``; the trial cannot import ``analysis``, which reads only
Parquet, so the few lines are repeated here and a test checks that both agree). A fused QKV
weight has one parameter but three probed views (q, k, v): it gets the median of their α.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import median
from typing import Any

import numpy as np

MIN_POINTS = 5  # docs/science/fits.md decision: fewer positive h_k → no fit


def layer_alpha(sigma: list[float], h: list[float]) -> float | None:
    """Slope of log h on log σ over the points with h > 0 and σ > 0, or None with < 5 points."""
    pts = [(s, v) for s, v in zip(sigma, h, strict=True) if v is not None and s is not None
           and math.isfinite(v) and math.isfinite(s) and v > 0 and s > 0]
    if len(pts) < MIN_POINTS:
        return None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    if np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def alpha_by_parameter(curvature_rows: list[dict[str, Any]]) -> dict[str, float]:
    """``{"<module>.weight": α}`` from one probe's curvature rows."""
    per_layer: dict[str, tuple[str, list[float], list[float]]] = {}
    for row in curvature_rows:
        entry = per_layer.setdefault(row["layer"], (row["module"], [], []))
        entry[1].append(row["sigma"])
        entry[2].append(row["h"])
    per_param: dict[str, list[float]] = defaultdict(list)
    for module, sigma, h in per_layer.values():
        alpha = layer_alpha(sigma, h)
        if alpha is not None:
            per_param[f"{module}.weight"].append(alpha)
    return {name: float(median(values)) for name, values in per_param.items()}
