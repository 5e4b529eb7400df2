"""Linear cost fits on relative error: time ≈ a·x + b·x₀ with a, b ≥ 0.

The cost model's one fitting primitive. Kernel fits use x = FLOPs and x₀ = 1 (a: seconds per
FLOP, b: fixed cost per call, :mod:`analysis.cost_model`); broadcast fits use x = s(P)·bytes and
x₀ = r(P) (a: seconds per byte, b: latency per message, :mod:`analysis.comm_cost`).

Relative error is what matters — measured times span five decades, and an ordinary fit would be
decided by the largest points alone — so the fit minimises Σ ((a·x_i + b·x₀_i − t_i)/t_i)²,
i.e. least squares with weights 1/t_i², under a, b ≥ 0: exact two-variable NNLS, the
unconstrained solution when it is feasible, else the better of the two one-variable boundary
solutions, each in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class CostModelError(ValueError):
    """The data cannot support the requested fit or prediction (message says why)."""


@dataclass
class LinearFit:
    """time ≈ a · x + b fitted on relative error (x = FLOPs)."""

    a: float
    b: float
    n: int
    x_min: float
    x_max: float
    median_rel_err: float
    max_rel_err: float
    heldout_median_rel_err: float = math.nan
    points: list[list[Any]] = field(default_factory=list)
    """Measured points [x, seconds, label] the fit rests on."""

    def predict(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.a * x + self.b

    @property
    def rate(self) -> float:
        """Sustained rate 1/a (FLOP/s)."""
        return 1.0 / self.a if self.a > 0 else math.inf


def fit_relative_nnls(
    x: Sequence[float], t: Sequence[float], x0: Sequence[float] | None = None
) -> tuple[float, float]:
    """(a, b) ≥ 0 minimising Σ ((a·x_i + b·x₀_i − t_i)/t_i)² (x₀ = 1 when not given).

    Dividing each equation a·x_i + b·x₀_i = t_i by t_i gives the rows [x_i/t_i, x₀_i/t_i]·[a, b]
    = 1: ordinary least squares on relative residuals. With two unknowns the non-negative
    solution is the unconstrained one when it is feasible, else the better boundary solution
    (a only or b only).
    """
    x = np.asarray(x, dtype=float)
    t = np.asarray(t, dtype=float)
    x0 = np.ones_like(t) if x0 is None else np.asarray(x0, dtype=float)
    if len(x) == 0 or np.any(t <= 0):
        raise CostModelError("a fit needs at least one point and positive times")
    A = np.column_stack([x / t, x0 / t])
    y = np.ones_like(t)

    def loss(a: float, b: float) -> float:
        return float(np.sum((A @ np.array([a, b]) - y) ** 2))

    if len(x) >= 2 and np.linalg.matrix_rank(A) == 2:
        sol, *_ = np.linalg.lstsq(A, y, rcond=None)
        if sol[0] >= 0 and sol[1] >= 0:
            return float(sol[0]), float(sol[1])
    candidates = []
    for col in (0, 1):
        c = A[:, col]
        coef = max(float(c @ y / (c @ c)), 0.0) if c @ c > 0 else 0.0
        candidates.append((coef, 0.0) if col == 0 else (0.0, coef))
    return min(candidates, key=lambda ab: loss(*ab))


def fit_line(x: np.ndarray, t: np.ndarray, labels: Sequence[Any]) -> LinearFit:
    """:func:`fit_relative_nnls` with x₀ = 1, its errors and the points it rests on."""
    a, b = fit_relative_nnls(x, t)
    rel = np.abs((a * x + b) - t) / t
    order = np.argsort(x)
    return LinearFit(
        a=a, b=b, n=len(x), x_min=float(x.min()), x_max=float(x.max()),
        median_rel_err=float(np.median(rel)), max_rel_err=float(rel.max()),
        points=[[float(x[i]), float(t[i]), labels[i]] for i in order],
    )
