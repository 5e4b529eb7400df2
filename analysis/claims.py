"""Check the paper's claims against a results directory: PASS, FAIL or NO DATA per claim.

A claim (``configs/paper/claims.yaml``) is one statistic of the ``layer_fits`` table, computed
after filters, compared with an accepted interval:

.. code-block:: yaml

    - id: conv-alpha-median            # unique, used in reports and CI logs
      description: ...                 # what the claim says, in words
      paper: "1.93 (Tiny-ImageNet ...)" # the paper's number(s), as text
      paper_value: 1.93                # the headline number (optional)
      statistic:
        column: alpha                  # a layer_fits column
        reduce: median                 # median | mean | min | max | max_abs | fraction_le
        than: zeta_bound               # fraction_le only: fraction of rows with column <= than
      filters:                         # all optional
        layer_type: [conv]             # keep these layer types
        exclude_layer_type: [conv_stem]
        model: ["timm:resnet*"]        # glob patterns on the runs' model / dataset /
        dataset: [...]                 #   optimizer_label / task
        optimizer: [...]
        task: [lm]
        min_r2: {r2_alpha: 0.8}        # keep rows whose R² column is >= the threshold
      step: latest                     # latest (default) | first | all | an integer step
      accept: {interval: [1.85, 2.15]} # or {min: x}, {max: x}, {target: x, tolerance: t}
      min_n: 5                         # fewer values after the filters -> NO DATA (default 1)
      notes: ...                       # known issues, shown with the result

Outcome: **NO DATA is not a pass.** :func:`exit_status` returns 1 (:data:`EXIT_FAIL`) when any
claim FAILs, else 3 (:data:`EXIT_NO_DATA`) when any claim has NO DATA (unless ``allow_missing``),
else 0; so a sweep that never measured curvature cannot "verify" the paper, and CI can tell
"refuted" (1) from "not measured" (3). 2 is left to the CLI's usage errors.
Accepted intervals are inclusive. Values are computed only from finite numbers: a layer whose fit
is NaN (fewer than 5 positive h_k, docs/science/decisions.md#minimum-points) does not count towards ``n``.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.curvature import attach_run_info, load_layer_fits, select_step
from analysis.dataset import load_table, locate

PASS, FAIL, NO_DATA = "PASS", "FAIL", "NO DATA"
#: Exit statuses of :func:`exit_status` (2 is the CLI's usage-error status, so NO DATA is 3).
EXIT_OK, EXIT_FAIL, EXIT_NO_DATA = 0, 1, 3
REDUCTIONS = ("median", "mean", "min", "max", "max_abs", "fraction_le")
#: Claim filters on run attributes -> the column they match (glob patterns).
RUN_FILTERS = {"model": "model", "dataset": "dataset", "optimizer": "optimizer_label", "task": "task"}
FILTER_KEYS = (*RUN_FILTERS, "layer_type", "exclude_layer_type", "min_r2")
CLAIM_KEYS = (
    "id", "description", "paper", "paper_value", "statistic", "filters", "step", "accept",
    "min_n", "notes",
)  # fmt: skip
#: The claims file shipped with the suite (present in a source checkout).
DEFAULT_CLAIMS = Path(__file__).resolve().parents[1] / "configs" / "paper" / "claims.yaml"


class ClaimsError(ValueError):
    """The claims file is malformed; the message lists every problem found."""


@dataclass(frozen=True)
class Claim:
    """One checkable claim (see the module docstring for the YAML form).

    ``low``/``high`` are the inclusive accepted bounds (±inf when open).
    """

    id: str
    description: str
    column: str
    reduce: str
    low: float
    high: float
    paper: str = ""
    paper_value: float | None = None
    than: str | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    step: str | int = "latest"
    min_n: int = 1
    notes: str | None = None

    def accepted(self) -> str:
        """The accepted range as text, e.g. ``[1.85, 2.15]``, ``≤ 0.02``."""
        if math.isinf(self.low) and math.isinf(self.high):
            return "any"
        if math.isinf(self.low):
            return f"≤ {self.high:g}"
        if math.isinf(self.high):
            return f"≥ {self.low:g}"
        return f"[{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class ClaimResult:
    """Outcome of one claim: ``status`` PASS / FAIL / NO DATA, the statistic's ``value`` over the
    ``n`` finite values behind it (NaN when n = 0; for NO DATA with 0 < n < min_n it is shown but
    not judged), and ``detail`` explaining the outcome."""

    claim: Claim
    status: str
    value: float
    n: int
    detail: str = ""

    @property
    def id(self) -> str:
        return self.claim.id

    @property
    def passed(self) -> bool:
        return self.status == PASS


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_accept(accept: Any, where: str, errors: list[str]) -> tuple[float, float]:
    if not isinstance(accept, dict) or not accept:
        errors.append(f"{where}: accept must be a mapping with interval, min, max or target+tolerance")
        return -math.inf, math.inf
    unknown = set(accept) - {"interval", "min", "max", "target", "tolerance"}
    if unknown:
        errors.append(f"{where}: unknown accept keys {sorted(unknown)}")
    low, high = -math.inf, math.inf
    if "interval" in accept:
        iv = accept["interval"]
        if not (isinstance(iv, list) and len(iv) == 2 and all(_number(v) for v in iv) and iv[0] <= iv[1]):
            errors.append(f"{where}: accept.interval must be [low, high] numbers with low <= high")
        else:
            low, high = float(iv[0]), float(iv[1])
    if "target" in accept or "tolerance" in accept:
        target, tol = accept.get("target"), accept.get("tolerance")
        if not (_number(target) and _number(tol) and tol >= 0):
            errors.append(f"{where}: accept.target and accept.tolerance (>= 0) must both be numbers")
        else:
            low, high = max(low, target - tol), min(high, target + tol)
    for key, is_low in (("min", True), ("max", False)):
        if key in accept:
            if not _number(accept[key]):
                errors.append(f"{where}: accept.{key} must be a number")
            elif is_low:
                low = max(low, float(accept[key]))
            else:
                high = min(high, float(accept[key]))
    return low, high


def _parse_filters(filters: Any, where: str, errors: list[str]) -> dict[str, Any]:
    if filters is None:
        return {}
    if not isinstance(filters, dict):
        errors.append(f"{where}: filters must be a mapping")
        return {}
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        errors.append(f"{where}: unknown filters {sorted(unknown)} (known: {', '.join(FILTER_KEYS)})")
    out: dict[str, Any] = {}
    for key, value in filters.items():
        if key == "min_r2":
            if not (isinstance(value, dict) and all(_number(v) for v in value.values())):
                errors.append(
                    f"{where}: filters.min_r2 must map R² columns to numbers, e.g. {{r2_alpha: 0.8}}"
                )
                continue
            out[key] = {str(k): float(v) for k, v in value.items()}
        elif key in FILTER_KEYS:
            values = [value] if isinstance(value, str) else value
            if not (isinstance(values, list) and values and all(isinstance(v, str) for v in values)):
                errors.append(f"{where}: filters.{key} must be a string or a list of strings")
                continue
            out[key] = list(values)
    return out


def _parse_claim(raw: Any, index: int, errors: list[str]) -> Claim | None:
    where = f"claims[{index}]"
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a mapping")
        return None
    cid = raw.get("id")
    if isinstance(cid, str) and cid:
        where = f"claim {cid!r}"
    else:
        errors.append(f"{where}: id must be a non-empty string")
    unknown = set(raw) - set(CLAIM_KEYS)
    if unknown:
        errors.append(f"{where}: unknown keys {sorted(unknown)}")
    stat = raw.get("statistic")
    column = reduce = than = None
    if not isinstance(stat, dict):
        errors.append(f"{where}: statistic must be a mapping with column and reduce")
    else:
        unknown = set(stat) - {"column", "reduce", "than"}
        if unknown:
            errors.append(f"{where}: unknown statistic keys {sorted(unknown)}")
        column, reduce, than = stat.get("column"), stat.get("reduce"), stat.get("than")
        if not isinstance(column, str):
            errors.append(f"{where}: statistic.column must be a column name")
        if reduce not in REDUCTIONS:
            errors.append(f"{where}: statistic.reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
        if (reduce == "fraction_le") != isinstance(than, str):
            errors.append(
                f"{where}: statistic.than (a column) is required by, and only by, reduce: fraction_le"
            )
    low, high = _parse_accept(raw.get("accept"), where, errors)
    step = raw.get("step", "latest")
    if not (step in ("latest", "first", "all") or (isinstance(step, int) and not isinstance(step, bool))):
        errors.append(f"{where}: step must be latest, first, all or an integer")
    min_n = raw.get("min_n", 1)
    if not (isinstance(min_n, int) and not isinstance(min_n, bool) and min_n >= 1):
        errors.append(f"{where}: min_n must be an integer >= 1")
    paper_value = raw.get("paper_value")
    if paper_value is not None and not _number(paper_value):
        errors.append(f"{where}: paper_value must be a number")
    filters = _parse_filters(raw.get("filters"), where, errors)
    if not isinstance(raw.get("description", ""), str):
        errors.append(f"{where}: description must be text")
    if not (isinstance(cid, str) and isinstance(column, str) and reduce in REDUCTIONS):
        return None  # already reported; parse_claims raises before any claim is used
    return Claim(
        id=str(cid),
        description=str(raw.get("description", "")).strip(),
        column=str(column),
        reduce=str(reduce),
        low=low,
        high=high,
        paper=str(raw.get("paper", "")),
        paper_value=float(paper_value) if _number(paper_value) else None,
        than=than if isinstance(than, str) else None,
        filters=filters,
        step=step,
        min_n=min_n if isinstance(min_n, int) else 1,
        notes=str(raw["notes"]).strip() if raw.get("notes") else None,
    )


def parse_claims(doc: Any) -> list[Claim]:
    """Validate a loaded claims document; raise :class:`ClaimsError` listing every problem."""
    errors: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list):
        raise ClaimsError("claims file must be a mapping with a 'claims' list")
    unknown = set(doc) - {"schema", "source", "claims"}
    if unknown:
        errors.append(f"unknown top-level keys {sorted(unknown)}")
    if doc.get("schema", 1) != 1:
        errors.append(f"unsupported claims schema {doc.get('schema')!r} (this specbench reads 1)")
    claims = [c for i, raw in enumerate(doc["claims"]) if (c := _parse_claim(raw, i, errors)) is not None]
    seen: set[str] = set()
    for raw in doc["claims"]:
        cid = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(cid, str) and cid in seen:
            errors.append(f"claim {cid!r}: duplicate id")
        if isinstance(cid, str):
            seen.add(cid)
    if errors:
        raise ClaimsError("invalid claims file:\n  " + "\n  ".join(errors))
    return claims


def load_claims(path: str | os.PathLike[str] | None = None) -> list[Claim]:
    """Read and validate a claims YAML file (default: :data:`DEFAULT_CLAIMS`)."""
    claims_path = Path(path) if path is not None else DEFAULT_CLAIMS
    if not claims_path.is_file():
        raise FileNotFoundError(f"claims file {claims_path} not found")
    try:
        doc = yaml.safe_load(claims_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ClaimsError(f"claims file {claims_path} is not valid YAML: {exc}") from exc
    except UnicodeDecodeError:
        raise ClaimsError(f"claims file {claims_path} is not UTF-8 text; save it as UTF-8") from None
    return parse_claims(doc)


def _glob_mask(series: pd.Series, patterns: Sequence[str]) -> pd.Series:
    text = series.astype("object").where(series.notna(), "").astype(str)
    return text.map(lambda v: any(fnmatch.fnmatchcase(v, p) for p in patterns))


def _apply_filters(fits: pd.DataFrame, claim: Claim) -> tuple[pd.DataFrame, str | None]:
    """Rows of ``fits`` the claim is about, or a reason why the filters cannot be applied."""
    data = select_step(fits, claim.step)
    f = claim.filters
    for key, column in RUN_FILTERS.items():
        if key in f:
            if column not in data.columns:
                return data.iloc[0:0], f"no {column} column to filter on (filters.{key})"
            data = data[_glob_mask(data[column], f[key])]
    if "layer_type" in f or "exclude_layer_type" in f:
        if "layer_type" not in data.columns:
            return data.iloc[0:0], "layer_fits has no layer_type column"
        types = data["layer_type"].astype("object")
        if "layer_type" in f:
            data = data[types.isin(f["layer_type"])]
            types = data["layer_type"].astype("object")
        if "exclude_layer_type" in f:
            data = data[~types.isin(f["exclude_layer_type"])]
    for column, threshold in f.get("min_r2", {}).items():
        if column not in data.columns:
            return data.iloc[0:0], f"layer_fits has no {column} column (min_r2 filter)"
        data = data[pd.to_numeric(data[column], errors="coerce") >= threshold]
    return data, None


def _statistic(data: pd.DataFrame, claim: Claim) -> tuple[float, int, str | None]:
    """(value, n, problem) of the claim's statistic over the finite values in ``data``."""
    needed = [claim.column] + ([claim.than] if claim.than else [])
    absent = [c for c in needed if c not in data.columns]
    if absent:
        return math.nan, 0, f"layer_fits has no {', '.join(absent)} column"
    values = pd.to_numeric(data[claim.column], errors="coerce").to_numpy(dtype=np.float64)
    if claim.reduce == "fraction_le":
        other = pd.to_numeric(data[claim.than], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(values) & np.isfinite(other)
        n = int(ok.sum())
        return (float(np.mean(values[ok] <= other[ok])) if n else math.nan), n, None
    values = values[np.isfinite(values)]
    n = int(values.size)
    if n == 0:
        return math.nan, 0, None
    reducers = {
        "median": np.median,
        "mean": np.mean,
        "min": np.min,
        "max": np.max,
        "max_abs": lambda v: np.max(np.abs(v)),
    }
    return float(reducers[claim.reduce](values)), n, None


def check_claim(fits: pd.DataFrame, claim: Claim) -> ClaimResult:
    """Evaluate one claim on a ``layer_fits`` table that already carries the run attributes."""
    if fits.empty:
        return ClaimResult(claim, NO_DATA, math.nan, 0, "no layer_fits or curvature in the results")
    data, problem = _apply_filters(fits, claim)
    if problem is None:
        value, n, problem = _statistic(data, claim)
    else:
        value, n = math.nan, 0
    if problem is not None:
        return ClaimResult(claim, NO_DATA, math.nan, 0, problem)
    if n < claim.min_n:
        what = f"{claim.column} ≤ {claim.than}" if claim.than else claim.column
        return ClaimResult(
            claim, NO_DATA, value if n else math.nan, n,
            f"{n} finite {what} value(s) after the filters; the claim needs ≥ {claim.min_n}",
        )  # fmt: skip
    inside = claim.low <= value <= claim.high
    detail = f"{claim.reduce} of {claim.column} over {n} value(s) = {value:.6g}, accepted {claim.accepted()}"
    return ClaimResult(claim, PASS if inside else FAIL, value, n, detail)


def verify_frame(
    fits: pd.DataFrame, claims: Sequence[Claim], runs: pd.DataFrame | None = None
) -> list[ClaimResult]:
    """Evaluate ``claims`` on a ``layer_fits`` DataFrame (``runs`` supplies model/dataset/task)."""
    data = attach_run_info(fits, runs) if not fits.empty else fits
    return [check_claim(data, claim) for claim in claims]


def verify(
    results_path: str | os.PathLike[str], claims_path: str | os.PathLike[str] | None = None
) -> list[ClaimResult]:
    """Check every claim of ``claims_path`` against the results under ``results_path``.

    ``results_path`` is a sweep, a folder of sweeps or a consolidated directory
    (:func:`analysis.dataset.locate`). Reads ``layer_fits`` (fitting ``curvature`` where a trial
    has no fits, see :func:`analysis.curvature.load_layer_fits`) and ``runs``; returns one
    :class:`ClaimResult` per claim, in file order. Use :func:`exit_status` for the outcome.

    Raises:
        ResultsNotFound: no results under ``results_path``.
        ClaimsError / FileNotFoundError: the claims file is invalid or missing.
    """
    claims = load_claims(claims_path)
    res = locate(results_path)
    fits = load_layer_fits(res)
    runs = load_table(res, "runs")
    return verify_frame(fits, claims, runs)


def exit_status(results: Sequence[ClaimResult], allow_missing: bool = False) -> int:
    """0 all claims PASS; 1 some claim FAILs; 3 no FAIL but some NO DATA (0 if ``allow_missing``)."""
    if any(r.status == FAIL for r in results):
        return EXIT_FAIL
    if any(r.status == NO_DATA for r in results) and not allow_missing:
        return EXIT_NO_DATA
    return EXIT_OK


def format_results(results: Sequence[ClaimResult], allow_missing: bool = False) -> str:
    """A terminal report: one line per claim, the reasons, and the overall verdict."""
    id_width = max((len(r.id) for r in results), default=2)
    lines = [f"{'status':8}  {'claim':{id_width}}  {'value':>10}  {'n':>4}  accepted        paper"]
    for r in results:
        value = "—" if math.isnan(r.value) else f"{r.value:.4g}"
        paper = "—" if r.claim.paper_value is None else f"{r.claim.paper_value:g}"
        lines.append(
            f"{r.status:8}  {r.id:{id_width}}  {value:>10}  {r.n:>4}  {r.claim.accepted():14}  {paper}"
        )
    for r in results:
        if r.status != PASS:
            lines.append(f"  {r.status} {r.id}: {r.detail}")
            if r.claim.notes:
                lines.append(f"    note: {r.claim.notes}")
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, NO_DATA)}
    summary = f"{counts[PASS]} PASS, {counts[FAIL]} FAIL, {counts[NO_DATA]} NO DATA"
    verdict = {
        EXIT_OK: "all claims pass" if not counts[NO_DATA] else "no claim failed (missing data allowed)",
        EXIT_FAIL: "some claims FAIL",
        EXIT_NO_DATA: "NOT VERIFIED: some claims have NO DATA (pass --allow-missing to accept)",
    }[exit_status(results, allow_missing)]
    lines.append(f"{summary} — {verdict}")
    return "\n".join(lines)


def verify_published(
    reference_dir: str | os.PathLike[str], claims_path: str | os.PathLike[str] | None = None
) -> list[ClaimResult]:
    """Check the claims against the paper's own published result files (docs/science/fits.md#published-numbers).

    ``reference_dir`` holds the JSON files of :mod:`analysis.paper_data` (e.g.
    ``tests/data/spectral-alignment``); each experiment becomes one trial of a ``layer_fits``
    table, checked with exactly the rules used for a sweep.
    """
    from analysis.paper_data import paper_layer_fits

    return verify_frame(paper_layer_fits(reference_dir), load_claims(claims_path))
