"""Power-law fits of one layer's curvature spectra (docs/science/fits.md, including the Theorem 1 decomposition).

Everything here works on the per-direction numbers of one layer at one step: the gradient's
singular values σ_1 ≥ σ_2 ≥ … and the exact curvatures h_k = ⟨D_k, H D_k⟩ along D_k = u_k v_kᵀ
(docs/science/quantities.md). All fits are ordinary least squares of natural logarithms (the base only rescales
intercepts, never slopes or R²), and R² is the ordinary coefficient of determination
1 − SS_res / SS_tot of that regression.

Conventions, checked against the paper's own result files (``results_alpha_triangle.json``:
all 24 layers reproduce ``alpha``, ``r2_alpha``, ``gamma``, ``r2_gamma``, ``s_hessian``,
``r2_s_hessian``, ``predicted_s`` and ``triangle_relative_error`` to round-off, ≤ 2e-14):

- **α** (§2): slope of log h_k on log σ_k over k = 1…window, using only the points with
  h_k > 0 (and σ_k > 0, which holds for any nonzero gradient).
- **γ** (§2): −slope of log σ_k on log k over k = 1…gamma_window with *all* σ_k, including
  the k whose h_k was dropped. Fitting γ on the positive-h subset instead changes γ by 1.9
  on the file's ``fc`` layer and 2.2 on ``classifier.3``, so the file uses all k.
- **s** (§2): −slope of log h_(r) on log r, where h_(1) ≥ h_(2) ≥ … are the positive h_k of
  the α window sorted in decreasing order and r = 1…n_positive. (Ranking all h_k and then
  dropping the non-positive ones gives the same ranks, because non-positive values sort last;
  the file cannot tell the two apart and they are the same number.) Fitting h in its σ order
  (log h_k on log k) does *not* reproduce the file (errors 0.003–0.25).
- **transfer error** |s − αγ| / s, with αγ the file's ``predicted_s``.
- ``results_conv_gap_v2.json`` agrees as well (α and R² of 6 layers from raw σ, h to ~1e-7, the
  precision of its float32-rounded values). The BIC values and ``sigma_gamma`` of
  ``results_kronecker_spectral.json`` were computed on spectra longer than the 30 values it
  stores, so they cannot check :func:`bic_profile`; its conventions are the textbook ones below.

Decisions where the paper is silent (docs/science/decisions.md):

- Fewer than :data:`MIN_POINTS` (5) positive h_k in the window: every fit of the layer is NaN
  and ``reason`` says why; never an exception (docs/science/fits.md). γ and PR_grad are withheld too,
  although they need no h, so that every column of a layer's record describes the same layers
  and per-type tables never mix counts.
- PR_h is computed over the same positive h_k as α and s: the participation ratio and its
  ζ bound (which assumes h_k ∝ k^(−p) > 0) are only meaningful for a positive profile, and the
  bound's exponent p is the s fitted on exactly those values.
- σ is put in decreasing order (h_k travels with its σ_k) if the caller passes it unsorted, so
  k is always the singular-value rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import zeta

#: Fewest positive points a slope is fitted on (docs/science/fits.md **decision**).
MIN_POINTS = 5
#: Default number of leading directions k = 1…K used for α, s and PR (the paper's top-K = 20).
DEFAULT_WINDOW = 20
#: Keys every :func:`fit_layer` result has, in this order (the ``layer_fits`` columns).
FIT_KEYS = (
    "alpha", "r2_alpha", "gamma", "r2_gamma", "s", "r2_s",
    "transfer_error", "pr_h", "pr_grad", "zeta_bound",
)  # fmt: skip
#: Additional keys of :func:`fit_layer`: points used, why something is missing, the BIC family of
#: the σ profile, the exponent used for the ζ bound, and the α line's intercept (for plots).
EXTRA_KEYS = ("n_positive", "reason", "bic_winner", "p_h", "alpha_intercept")
#: Rank-profile families compared by :func:`bic_profile`, with their number of coefficients.
BIC_FAMILIES = {"power_law": 2, "exponential": 2, "lognormal": 3}
#: Residuals below this (in natural-log units, i.e. relative 1e-9) are below the resolution of
#: float32 probe data; RSS is floored at n·LOG_RESOLUTION² so that two families fitting a
#: profile "exactly" tie on fit and the BIC penalty, not round-off, decides between them.
LOG_RESOLUTION = 1e-9


@dataclass(frozen=True)
class LineFit:
    """Least-squares line y ≈ intercept + slope·x with its ordinary R² over ``n`` points.

    ``slope`` is NaN when x has no spread (or n < 2); ``r2`` is NaN when y has no spread, since
    0/0 is not a goodness of fit.
    """

    slope: float
    intercept: float
    r2: float
    n: int


def ols(x: ArrayLike, y: ArrayLike) -> LineFit:
    """Ordinary least squares of ``y`` on ``x`` (with intercept) and R² = 1 − SS_res/SS_tot.

    Written out with centred sums rather than calling a solver: for one regressor this is
    exact, cheap (thousands of layers × steps) and makes the degenerate cases explicit.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    n = int(xs.size)
    if n < 2:
        return LineFit(np.nan, np.nan, np.nan, n)
    dx = xs - xs.mean()
    dy = ys - ys.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        return LineFit(np.nan, np.nan, np.nan, n)
    slope = float(dx @ dy) / sxx
    intercept = float(ys.mean() - slope * xs.mean())
    sst = float(dy @ dy)
    resid = dy - slope * dx
    r2 = 1.0 - float(resid @ resid) / sst if sst > 0.0 else np.nan
    return LineFit(slope, intercept, r2, n)


def participation_ratio(values: ArrayLike) -> float:
    """PR = (Σ v_k)² / Σ v_k² (docs/science/fits.md): the effective number of contributing directions.

    Equals K for a flat profile of K values and 1 when one value dominates. NaN when empty or
    all zero.
    """
    v = np.asarray(values, dtype=np.float64)
    denom = float(v @ v)
    if v.size == 0 or denom == 0.0:
        return np.nan
    return float(v.sum()) ** 2 / denom


def zeta_bound(p: float) -> float:
    """Upper bound ζ(p)² / ζ(2p) on the participation ratio of a profile h_k ∝ k^(−p) (§2).

    For h_k = k^(−p), k = 1…∞, PR = (Σ k^(−p))² / Σ k^(−2p) = ζ(p)²/ζ(2p); a finite window only
    lowers it. Finite only for p > 1 (ζ(p) diverges at p ≤ 1): NaN there. Values: 2.5 at p = 2
    (= (π²/6)² / (π⁴/90)), ≈ 5.68 at 1.5, ≈ 1.74 at 2.5.
    """
    if not np.isfinite(p) or p <= 1.0:
        return np.nan
    return float(zeta(p) ** 2 / zeta(2.0 * p))


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _descending_order(sigma: np.ndarray) -> np.ndarray:
    """Permutation putting σ in decreasing order, NaN last; stable, so sorted input is kept."""
    key = np.where(np.isnan(sigma), -np.inf, sigma)
    return np.argsort(-key, kind="stable")


def _positive(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values > 0)


def _missing_result(n_positive: int, reason: str) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(FIT_KEYS, np.nan)
    out.update(n_positive=n_positive, reason=reason, bic_winner=None, p_h=np.nan, alpha_intercept=np.nan)
    return out


def fit_layer(
    sigma: ArrayLike,
    h: ArrayLike,
    window: int = DEFAULT_WINDOW,
    gamma_window: int | None = None,
) -> dict[str, Any]:
    """Fit α, γ, s, the transfer error and the participation ratios of one layer (docs/science/fits.md).

    With σ_k the gradient's singular values (decreasing, k = 1…) and h_k the exact curvature
    along the k-th singular direction:

    - α: slope of log h_k on log σ_k, k ≤ ``window``, h_k > 0 (h_k ∝ σ_k^α).
    - γ: −slope of log σ_k on log k, k ≤ ``gamma_window``, all σ_k > 0 (σ_k ∝ k^(−γ)).
    - s: −slope of log h_(r) on log r over the same positive h_k sorted decreasingly
      (h_(r) ∝ r^(−s)). Since h ∝ σ^α and σ ∝ k^(−γ), s = αγ algebraically; the transfer
      error |s − αγ| / s measures how well α and γ, fitted on independent data (HVPs vs SVD),
      predict s.
    - PR_h, PR_grad: (Σv)²/Σv² of the positive h_k, and of σ_k, k ≤ ``window``.
    - ζ bound: ζ(p)²/ζ(2p) with p = s (``p_h``), the bound PR_h obeys under h_k ∝ k^(−p);
      NaN with a reason for p ≤ 1.
    - ``bic_winner``: the family :func:`bic_profile` picks for the σ profile (γ window).

    Args:
        sigma: σ_k, k = 1…; may extend beyond ``window`` so γ can use a wider window.
        h: h_k aligned with ``sigma`` (h[i] belongs to sigma[i]); may be shorter than ``sigma``
            or hold NaN for directions without an HVP. Non-positive and NaN h_k are dropped.
        window: number of leading directions for α, s, PR_h and PR_grad.
        gamma_window: number of leading σ_k for γ and the BIC profile (default ``window``).

    Returns:
        A dict with :data:`FIT_KEYS` and :data:`EXTRA_KEYS`. With fewer than
        :data:`MIN_POINTS` positive h_k every fit is NaN and ``reason`` says why. ``reason``
        is None when everything was fitted, otherwise "; "-joined explanations of what is NaN.

    Raises:
        ValueError: malformed input (not 1-D, ``h`` longer than ``sigma``, window < 1) — a
            programming error, unlike missing data, which never raises.
    """
    sig = _as_1d(sigma, "sigma")
    hh = _as_1d(h, "h")
    if hh.size > sig.size:
        raise ValueError(f"h has {hh.size} values but sigma only {sig.size}; h_k needs its σ_k")
    if window < 1 or (gamma_window is not None and gamma_window < 1):
        raise ValueError(f"window and gamma_window must be ≥ 1, got {window}, {gamma_window}")
    g_window = window if gamma_window is None else gamma_window

    hh = np.concatenate([hh, np.full(sig.size - hh.size, np.nan)])
    order = _descending_order(sig)
    sig, hh = sig[order], hh[order]

    sig_w, h_w = sig[:window], hh[:window]
    keep = _positive(h_w) & _positive(sig_w)
    n_pos = int(keep.sum())
    if n_pos < MIN_POINTS:
        return _missing_result(
            n_pos, f"only {n_pos} positive h_k in the window of {sig_w.size} (need ≥ {MIN_POINTS})"
        )

    reasons: list[str] = []
    out: dict[str, Any] = {}

    fit_a = ols(np.log(sig_w[keep]), np.log(h_w[keep]))
    if np.isnan(fit_a.slope):
        reasons.append("α undefined: σ_k constant over the positive h_k")
    out["alpha"], out["r2_alpha"] = fit_a.slope, fit_a.r2

    # γ uses every positive σ_k of its own window, including k whose h_k was dropped (this is
    # what the paper's files do, see the module docstring).
    sig_g = sig[:g_window]
    k_g = np.arange(1, sig_g.size + 1, dtype=np.float64)
    g_ok = _positive(sig_g)
    if int(g_ok.sum()) < MIN_POINTS:
        fit_g = LineFit(np.nan, np.nan, np.nan, int(g_ok.sum()))
        reasons.append(f"γ undefined: only {int(g_ok.sum())} positive σ_k (need ≥ {MIN_POINTS})")
    else:
        fit_g = ols(np.log(k_g[g_ok]), np.log(sig_g[g_ok]))
    out["gamma"], out["r2_gamma"] = -fit_g.slope, fit_g.r2

    h_sorted = np.sort(h_w[keep])[::-1]
    ranks = np.arange(1, n_pos + 1, dtype=np.float64)
    fit_s = ols(np.log(ranks), np.log(h_sorted))
    s = -fit_s.slope
    out["s"], out["r2_s"] = s, fit_s.r2

    predicted = out["alpha"] * out["gamma"]
    out["transfer_error"] = abs(s - predicted) / abs(s) if np.isfinite(s) and s != 0 else np.nan
    if np.isfinite(s) and s == 0:
        reasons.append("transfer error undefined: s = 0")

    out["pr_h"] = participation_ratio(h_w[keep])
    out["pr_grad"] = participation_ratio(sig_w[_positive(sig_w)])
    out["zeta_bound"] = zeta_bound(s)
    if np.isfinite(s) and s <= 1.0:
        reasons.append(f"ζ bound infinite: decay exponent p = s = {s:.3g} ≤ 1")

    bic = bic_profile(sig_g)
    out.update(
        n_positive=n_pos,
        reason="; ".join(reasons) or None,
        bic_winner=bic["winner"],
        p_h=s,
        alpha_intercept=fit_a.intercept,
    )
    return {key: out[key] for key in (*FIT_KEYS, *EXTRA_KEYS)}


def bic_profile(values: ArrayLike) -> dict[str, Any]:
    """Choose the rank-profile family of ``values`` (v_1, v_2, … at ranks k = 1, 2, …) by BIC.

    docs/science/fits.md compares three models of log v_k, each fitted by least squares:

    - ``power_law``: log v = a + b log k (v ∝ k^b), 2 coefficients;
    - ``exponential``: log v = a + b k (v ∝ e^(bk)), 2 coefficients;
    - ``lognormal``: log v = a + b log k + c (log k)² (log-normal in rank), 3 coefficients.

    BIC = n ln(RSS/n) + p ln n, the Gaussian-likelihood BIC up to a constant shared by the three
    families (the error variance, one more parameter each, cancels in the comparison); the
    smallest BIC wins, ties going to the earlier family above. RSS is floored at
    n·:data:`LOG_RESOLUTION`², so that exact data picks the simplest exact family. Non-positive
    and NaN values are dropped, keeping the ranks of the others.

    Returns:
        ``{"winner": family or None, "bic": {family: BIC}, "coef": {family: coefficients
        (a, b[, c])}, "n": points used, "reason": None or why nothing was chosen}``. Fewer than
        :data:`MIN_POINTS` positive values: winner None, BICs NaN.
    """
    v = _as_1d(values, "values")
    k = np.arange(1, v.size + 1, dtype=np.float64)
    ok = _positive(v)
    n = int(ok.sum())
    nan_bic = dict.fromkeys(BIC_FAMILIES, np.nan)
    if n < MIN_POINTS:
        return {
            "winner": None,
            "bic": nan_bic,
            "coef": {},
            "n": n,
            "reason": f"only {n} positive values (need ≥ {MIN_POINTS})",
        }
    y = np.log(v[ok])
    kk = k[ok]
    lk = np.log(kk)
    designs = {
        "power_law": np.column_stack([np.ones(n), lk]),
        "exponential": np.column_stack([np.ones(n), kk]),
        "lognormal": np.column_stack([np.ones(n), lk, lk**2]),
    }
    bic: dict[str, float] = {}
    coef: dict[str, tuple[float, ...]] = {}
    floor = n * LOG_RESOLUTION**2
    for family, design in designs.items():
        c, *_ = np.linalg.lstsq(design, y, rcond=None)
        resid = y - design @ c
        rss = max(float(resid @ resid), floor)
        bic[family] = n * np.log(rss / n) + BIC_FAMILIES[family] * np.log(n)
        coef[family] = tuple(float(x) for x in c)
    winner = min(BIC_FAMILIES, key=lambda f: (bic[f], list(BIC_FAMILIES).index(f)))
    return {"winner": winner, "bic": bic, "coef": coef, "n": n, "reason": None}


#: Keys of :func:`decomposition_fit`.
DECOMPOSITION_KEYS = (
    "alpha", "r2_alpha", "alpha_kron", "r2_alpha_kron", "beta", "r2_beta", "phi", "r2_phi",
    "chi_slope", "r2_chi", "residual", "identity_error", "n_points", "reason",
)  # fmt: skip


def decomposition_fit(
    sigma: ArrayLike,
    h: ArrayLike | None,
    h_kron: ArrayLike,
    lambda_delta: ArrayLike,
    lambda_A: ArrayLike,
    rho_delta: ArrayLike,
    rho_A: ArrayLike,
    window: int = DEFAULT_WINDOW,
) -> dict[str, Any]:
    """The Theorem 1 decomposition of the curvature exponent (docs/science/fits.md#theorem-1-decomposition).

    With Λ_k = λ^δ_k λ^A_k (rank-matched Kronecker-factor eigenvalues) and Φ_k = ρ^δ_k ρ^A_k
    (alignment ratios), the Kronecker curvature is h^kron_k = Φ_k Λ_k, so
    log h^kron_k = log Φ_k + log Λ_k. OLS slopes are linear in the response, hence on one
    common set of points

        α_kron = β + φ,   β = d log Λ / d log σ,   φ = d log Φ / d log σ,

    exactly, and likewise α = α_kron + χ slope with χ_k = h_k / h^kron_k. The reported
    ``residual`` α_kron − (β + φ) is therefore zero up to round-off *and* up to how far the
    stored h^kron departs from the stored ΦΛ (``identity_error`` = max_k |log h^kron_k −
    log Φ_k Λ_k|, e.g. ~1e-7 for float32 storage); a larger residual means the probe's four
    factors and its h^kron disagree.

    All slopes use the same points: k ≤ ``window`` (by decreasing σ) where σ, h^kron, Λ, Φ and,
    if given, h are finite and positive. Fitting α on more points than α_kron would break the
    identities, which is why this α can differ from :func:`fit_layer`'s when some h^kron_k or
    Φ_k are unusable.

    Args:
        sigma: σ_k. ``h``: exact h_k, or None when only the Kronecker side is known (then
            ``alpha``, ``chi_slope`` and their R² are NaN).
        h_kron, lambda_delta, lambda_A, rho_delta, rho_A: per-k arrays aligned with ``sigma``.
        window: number of leading directions.

    Returns:
        A dict with :data:`DECOMPOSITION_KEYS`; slopes are NaN (with ``reason``) when fewer
        than :data:`MIN_POINTS` points qualify.
    """
    sig = _as_1d(sigma, "sigma")
    arrays = {
        "h_kron": _as_1d(h_kron, "h_kron"),
        "lambda_delta": _as_1d(lambda_delta, "lambda_delta"),
        "lambda_A": _as_1d(lambda_A, "lambda_A"),
        "rho_delta": _as_1d(rho_delta, "rho_delta"),
        "rho_A": _as_1d(rho_A, "rho_A"),
    }
    if h is not None:
        arrays["h"] = _as_1d(h, "h")
    for name, arr in arrays.items():
        if arr.size != sig.size:
            raise ValueError(f"{name} has {arr.size} values, sigma {sig.size}")
    order = _descending_order(sig)[:window]
    sig = sig[order]
    arrays = {name: arr[order] for name, arr in arrays.items()}
    lam = arrays["lambda_delta"] * arrays["lambda_A"]
    phi = arrays["rho_delta"] * arrays["rho_A"]
    hk = arrays["h_kron"]

    keep = _positive(sig) & _positive(hk) & _positive(lam) & _positive(phi)
    if h is not None:
        keep &= _positive(arrays["h"])
    n = int(keep.sum())
    out: dict[str, Any] = dict.fromkeys(DECOMPOSITION_KEYS, np.nan)
    out["n_points"] = n
    out["reason"] = None
    if n < MIN_POINTS:
        out["reason"] = f"only {n} directions with σ, h, h_kron, Λ, Φ all positive (need ≥ {MIN_POINTS})"
        return out

    x = np.log(sig[keep])
    log_hk, log_lam, log_phi = np.log(hk[keep]), np.log(lam[keep]), np.log(phi[keep])
    fits = {
        "alpha_kron": ols(x, log_hk),
        "beta": ols(x, log_lam),
        "phi": ols(x, log_phi),
    }
    if h is not None:
        log_h = np.log(arrays["h"][keep])
        fits["alpha"] = ols(x, log_h)
        fits["chi"] = ols(x, log_h - log_hk)
    for name, fit in fits.items():
        slope_key = "chi_slope" if name == "chi" else name
        out[slope_key] = fit.slope
        out[f"r2_{name}"] = fit.r2
    out["residual"] = out["alpha_kron"] - (out["beta"] + out["phi"])
    out["identity_error"] = float(np.max(np.abs(log_hk - log_lam - log_phi)))
    if np.isnan(out["alpha_kron"]):
        out["reason"] = "slopes undefined: σ_k constant over the common points"
    elif h is None:
        out["reason"] = "no exact h_k given: α and χ slope not fitted"
    return out
